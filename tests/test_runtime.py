"""The runtime the app's lifespan opens (app/runtime.py), in this process."""

from __future__ import annotations

import gc
from pathlib import Path

from app.chain.anvil import AnvilNode
from tests.conftest import in_process_settings
from tests.server import InProcessApp


def test_started_app_puts_what_start_up_left_alive_out_of_the_collectors_reach(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    """Full collections must not visit the modules and the runtime on every pass: that
    held the loop for 100 ms and more once the answer cache grew (BENCHMARKS.md)."""
    gc.unfreeze()  # what earlier apps of this test process froze
    assert gc.get_freeze_count() == 0
    with InProcessApp(in_process_settings(anvil, tmp_path)) as app:
        frozen = gc.get_freeze_count()
        assert app.app.state.server.runtime is not None
    # Everything alive at start-up: the test process's modules and the app's runtime.
    assert frozen > 100_000, frozen
