"""Health, readiness, metrics, the low-balance guard, JSON logs and HTTPS.

What the application answers (readiness through outages, the balance guard) is asked of
the application in this process (InProcessApp); what the process does (TLS from uvicorn,
JSON log lines on its stderr) of a real `jamins serve`."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import logging
import os
import re
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from eth_account import Account

from app.chain.anvil import AnvilNode, fund
from app.logs import JsonLinesFormatter, RequestIdFilter, request_id
from app.services.balance import REGISTRATION_GAS
from app.settings import Settings
from tests.cli_runner import run_jamins
from tests.conftest import funded_key, unique_name
from tests.jami_keys import account_pool
from tests.pg import PostgresServer
from tests.server import InProcessApp, ServerProcess, wait_settled_through

GAS_PRICE = 10**9
ONE_REGISTRATION = REGISTRATION_GAS * GAS_PRICE


def metric_lines(text: str) -> dict[str, float]:
    """`name{labels}` -> value, for every sample of a Prometheus text exposition."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


@pytest.fixture
def own_node(anvil_binary: str, tmp_path: Path) -> Iterator[AnvilNode]:
    node = AnvilNode(binary=anvil_binary, state_file=tmp_path / "state.json")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def app_on(node: AnvilNode, data_dir: Path, **settings: Any) -> tuple[InProcessApp, str]:
    """What `jamins serve` on `node` runs, deploying its own registrar with a newly funded
    signer, as an application in this process; and the signer's address."""
    key = funded_key(node)
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "rpc_url": node.url,
        "deploy": True,
        "signer_key": key,
        "rpc_timeout": 2,
        "receipt_poll_seconds": 0.2,
        "confirmations": 0,
        "register_rate_per_minute": 0,
        **settings,
    }
    return InProcessApp(Settings(_env_file=None, **values)), Account.from_key(key).address


# -- on the shared server (SQLite and PostgreSQL) ---------------------------------------


def test_healthz_is_live(http: httpx.Client) -> None:
    answer = http.get("/healthz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_readyz_ready(http: httpx.Client) -> None:
    answer = http.get("/readyz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ready"
    assert body["checks"] == {
        "database": "ok",
        "chain": "ok",
        "indexer": "ok",
        "background": "ok",
        "writer": "ok",
    }
    assert isinstance(body["head_block"], int)
    assert body["indexer_lag"] >= 0


def test_metrics_count_requests_by_route_and_cache_outcome(http: httpx.Client) -> None:
    absent = unique_name("absent")
    assert http.get(f"/name/{absent}").status_code == 404
    assert http.get(f"/name/{absent}").status_code == 404  # the negative cache answers
    answer = http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = metric_lines(answer.text)
    key = 'jamins_http_requests_total{method="GET",route="/name/{name:path}",status="404"}'
    assert samples[key] >= 2
    # Route templates, never raw paths: the names people look up stay out of the metrics.
    assert absent not in answer.text
    assert any(
        line.startswith("jamins_http_request_duration_seconds_bucket{")
        and 'route="/name/{name:path}"' in line
        for line in answer.text.splitlines()
    )
    assert samples['jamins_cache_lookups_total{kind="name",result="miss"}'] >= 1
    assert samples['jamins_cache_lookups_total{kind="name",result="negative_hit"}'] >= 1
    assert samples["jamins_chain_up"] == 1
    assert samples["jamins_chain_head_block"] >= 1
    assert "jamins_registrations_pending" in samples
    assert samples["jamins_indexer_lag_blocks"] >= 0
    assert samples["jamins_signer_balance_wei"] > 0
    assert samples["jamins_signer_registrations_left"] > 0
    assert samples["jamins_registrations_paused"] == 0
    assert any(key.startswith("jamins_tx_writer_state{") for key in samples)


# -- outages ------------------------------------------------------------------------------


def test_readyz_follows_the_chain_node(own_node: AnvilNode, tmp_path: Path) -> None:
    app, _ = app_on(own_node, tmp_path / "server")
    with app, app.client() as http:
        assert http.get("/readyz").status_code == 200

        own_node.stop()
        answer = http.get("/readyz")
        assert answer.status_code == 503
        assert answer.headers["retry-after"]
        body = answer.json()
        assert body["status"] == "not ready"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["chain"].startswith("chain node unreachable")
        assert body["head_block"] is None
        assert http.get("/healthz").status_code == 200  # alive all the same
        assert metric_lines(http.get("/metrics").text)["jamins_chain_up"] == 0

        own_node.start()
        assert http.get("/readyz").json()["status"] == "ready"


def test_readyz_follows_the_database(own_node: AnvilNode, tmp_path: Path) -> None:
    postgres = PostgresServer()
    postgres.start()
    try:
        app, _ = app_on(
            own_node, tmp_path / "server", database_url=postgres.create_database("ready")
        )
        with app, app.client() as http:
            assert http.get("/readyz").status_code == 200
            assert postgres.process is not None
            # Fast shutdown (ends the server's sessions), sent to the postmaster itself:
            # the process we hold is the runuser wrapper.
            postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)
            postgres.process.wait(30)
            answer = http.get("/readyz")
            assert answer.status_code == 503
            checks = answer.json()["checks"]
            assert checks["database"] != "ok"
            assert checks["chain"] == "ok"
    finally:
        postgres.stop()


# -- the balance ------------------------------------------------------------------------


def test_low_balance_warns_then_refuses_registrations_with_503(
    own_node: AnvilNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    app, signer = app_on(
        own_node,
        tmp_path / "server",
        gas_price_wei=GAS_PRICE,
        balance_check_seconds=0.2,
        low_balance_registrations=10,
    )
    with app, app.client() as http:

        def registrations_left() -> float:
            return metric_lines(http.get("/metrics").text)["jamins_signer_registrations_left"]

        def warnings() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "3 more registrations" in r.getMessage()]

        fund(own_node.url, signer, 3 * ONE_REGISTRATION + 1)
        wait_for(lambda: registrations_left() == 3, what="3 registrations left")
        wait_for(lambda: bool(warnings()), what="the warning")
        warning = warnings()[0]
        assert warning.levelname == "WARNING"
        assert warning.name == "app.services.balance"
        assert signer in warning.getMessage()

        (account, other), name = account_pool(2), unique_name("cheap")
        answer = http.post(f"/name/{name}", json=account.registration_body(name))
        assert answer.json() == {"success": True}
        # Mined before the balance drops: else it is sent after the refund below.
        assert wait_settled_through(http, name)["state"] == "confirmed"

        fund(own_node.url, signer, ONE_REGISTRATION - 1)
        wait_for(lambda: registrations_left() == 0, what="0 registrations left")
        late = unique_name("broke")
        answer = http.post(f"/name/{late}", json=other.registration_body(late))
        assert answer.status_code == 503
        assert answer.headers["retry-after"]
        assert answer.json()["success"] is False
        assert "balance" in answer.json()["error"]
        assert metric_lines(http.get("/metrics").text)["jamins_registrations_paused"] == 1
        assert http.get("/readyz").status_code == 200  # lookups still work
        assert http.get(f"/name/{late}").status_code == 404  # nothing was accepted

        fund(own_node.url, signer, 100 * ONE_REGISTRATION)
        wait_for(lambda: registrations_left() == 100, what="funded again")
        answer = http.post(f"/name/{late}", json=other.registration_body(late))
        assert answer.json() == {"success": True}
        assert wait_settled_through(http, late)["state"] == "confirmed"


# -- logs and TLS -----------------------------------------------------------------------


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    token = request_id.set("abc123")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = json.loads(JsonLinesFormatter().format(record))
    assert line["request_id"] == "abc123"
    assert line["message"] == "hello there"
    assert line["level"] == "INFO"
    assert line["logger"] == "app.x"


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class HttpsServerProcess(ServerProcess):
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def test_serve_https_from_uvicorn_logging_json_lines(
    own_node: AnvilNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    # ServerProcess polls /healthz with httpx.get: make it trust our certificate.
    monkeypatch.setattr("tests.server.httpx.get", functools.partial(httpx.get, verify=trust))
    server = HttpsServerProcess(
        data_dir=tmp_path / "server",
        env={
            "JAMINS_RPC_URL": own_node.url,
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(own_node),
            "JAMINS_SSL_CERTFILE": str(cert),
            "JAMINS_SSL_KEYFILE": str(key),
            "JAMINS_LOG_FORMAT": "json",
        },
    )
    server.start()
    try:
        with httpx.Client(base_url=server.url, verify=trust, timeout=30) as https:
            assert https.get("/readyz").json()["status"] == "ready"
            assert https.get(f"/name/{unique_name('tls')}").status_code == 404
        # As a Jami app would: the system's trust store refuses a self-signed certificate.
        with httpx.Client(timeout=10) as system_trust, pytest.raises(httpx.ConnectError):
            system_trust.get(server.url + "/healthz")
    finally:
        server.stop()
    # JAMINS_LOG_FORMAT=json: each line the process logged is one JSON object.
    entries = [json.loads(line) for line in server.log_tail(1_000_000).splitlines() if line]
    serving = next(entry for entry in entries if entry["message"].startswith("serving registrar"))
    assert serving["level"] == "INFO" and serving["logger"] == "app.runtime"


def test_serve_refuses_half_a_tls_setup(tmp_path: Path) -> None:
    done = run_jamins(
        "serve",
        "--data-dir",
        str(tmp_path / "server"),
        env={"JAMINS_SSL_CERTFILE": str(tmp_path / "cert.pem")},
    )
    assert done.returncode == 2
    assert re.search(r"set both JAMINS_SSL_CERTFILE and JAMINS_SSL_KEYFILE", done.stderr)
