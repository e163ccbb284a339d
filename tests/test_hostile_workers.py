"""`jamins serve --workers N`: every worker keeps its own admission buckets, so each takes
a share of the per-client limit and one client never gets N times the configured rate."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from app.chain.anvil import AnvilNode
from app.errors import RegistrationsThrottled
from app.runtime import admission_for
from app.settings import Settings
from tests.conftest import funded_key
from tests.pg import PostgresServer
from tests.server import ServerProcess
from tests.test_ops import metric_lines


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


def test_metrics_count_every_workers_requests(
    anvil: AnvilNode, postgres: PostgresServer, tmp_path: Path
) -> None:
    server = ServerProcess(
        data_dir=tmp_path,
        env={
            "JAMINS_RPC_URL": anvil.url,
            "JAMINS_SIGNER_KEY": funded_key(anvil),
            "JAMINS_DEPLOY": "true",
            "JAMINS_DATABASE_URL": postgres.create_database(f"m_{secrets.token_hex(4)}"),
            "JAMINS_WORKERS": "2",
            "JAMINS_ACCESS_LOG": "false",
        },
    )
    server.start()
    try:
        for _ in range(40):  # new connections: both workers answer some of them
            assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        # Whichever worker answers the scrape, it counts all 40 (and ServerProcess's
        # own start-up probes went to /healthz, not /readyz).
        counts = [
            metric_lines(httpx.get(f"{server.url}/metrics", timeout=10).text).get(READYZ)
            for _ in range(6)
        ]
    finally:
        server.stop()
    assert counts == [40] * 6


READYZ = 'jamins_http_requests_total{method="GET",route="/readyz",status="200"}'
