"""Metric label values stay in a fixed set, whatever text the node sends."""

from __future__ import annotations

from types import SimpleNamespace

from app.metrics import writer_state_label


def test_writer_state_label_bounds_node_error_text() -> None:
    waiting = SimpleNamespace(state="waiting for node refused a transaction: nonce too low 42")
    assert writer_state_label(waiting) == "waiting"
    assert writer_state_label(SimpleNamespace(state="running")) == "running"
    assert writer_state_label(SimpleNamespace(state="failing")) == "failing"
    assert writer_state_label(SimpleNamespace(state="anything else")) == "other"
    assert writer_state_label(None) == "none"
