"""Metric label values stay in a fixed set, whatever text the node sends."""

from __future__ import annotations

from app.metrics import writer_state_label


def test_writer_state_label_bounds_node_error_text() -> None:
    assert writer_state_label("waiting for node refused a transaction: nonce too low 42") == (
        "waiting"
    )
    assert writer_state_label("running") == "running"
    assert writer_state_label("failing") == "failing"
    assert writer_state_label("anything else") == "other"
    assert writer_state_label(None) == "none"
