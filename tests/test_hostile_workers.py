"""`jamins serve --workers N`: every worker keeps its own admission buckets, so each takes
a share of the per-client limit and one client never gets N times the configured rate."""

from __future__ import annotations

import pytest

from app.errors import RegistrationsThrottled
from app.main import admission_for
from app.settings import Settings


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_workers_together_admit_one_clients_burst_once(workers: int) -> None:
    settings = Settings(
        rpc_url="http://127.0.0.1:1",
        workers=workers,
        register_rate_per_minute=0.001,  # no refill during the test
        register_burst=4,
    )
    processes = [admission_for(settings) for _ in range(workers)]
    accepted = 0
    for attempt in range(40):  # a client's connections land on every worker in turn
        try:
            processes[attempt % workers].take("203.0.113.9")
        except RegistrationsThrottled:
            continue
        accepted += 1
    assert accepted == 4


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_together_refill_at_the_configured_rate(workers: int) -> None:
    settings = Settings(rpc_url="http://127.0.0.1:1", workers=workers, register_rate_per_minute=12)
    per_minute = sum(admission_for(settings).rate_per_second * 60 for _ in range(workers))
    assert per_minute == pytest.approx(12)
