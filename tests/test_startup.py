"""Starting against a configured node: what the server refuses, what it remembers, and a
registration queue that survives a crash.

Each way of refusing to start keeps one real `jamins serve` (or command) process as the layer
above: its exit code and the line an operator sees. The other refusals run the same command
in this process (tests.cli_runner); what a started server does is asked of the application
in this process (InProcessApp) unless the process itself is the subject (kill -9, --workers,
the data directory's lock)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from pydantic import SecretStr

from app.chain.anvil import AnvilNode, rpc
from app.db import migrate
from app.main import create_app
from app.provision import ProvisionError, provision
from app.runtime import server_state
from app.settings import Settings
from tests.cli_runner import CommandResult, run_jamins
from tests.conftest import funded_key, unique_name
from tests.jami_keys import account_pool
from tests.server import REPO_ROOT, InProcessApp, ServerProcess, free_port, wait_settled_through


@pytest.fixture(scope="module")
def node(anvil_binary: str) -> Iterator[AnvilNode]:
    """One node for the module: each test deploys a registrar of its own with a key of
    its own, so what one test counts (a sender's transactions) no other test touches."""
    with AnvilNode(binary=anvil_binary) as running:
        yield running


Ran = subprocess.CompletedProcess[str] | CommandResult


def _jamins(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS`, a real process with `env` as its whole environment."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "JAMINS_ENV_FILE": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _serve_args() -> list[str]:
    return ["serve", "--port", str(free_port())]


def _app_settings(data_dir: Path, **values: Any) -> Settings:
    """What ServerProcess runs with, for the application in this process."""
    defaults: dict[str, Any] = {
        "data_dir": data_dir,
        "confirmations": 0,
        "register_rate_per_minute": 0,
        "receipt_poll_seconds": 0.2,
    }
    return Settings(_env_file=None, **{**defaults, **values})


def test_serve_refuses_another_chain_id(node: AnvilNode, tmp_path: Path) -> None:
    done = run_jamins(
        *_serve_args(),
        env={
            "JAMINS_DATA_DIR": str(tmp_path),
            "JAMINS_RPC_URL": node.url,
            "JAMINS_CHAIN_ID": "1337",
            "JAMINS_DEPLOY": "true",
        },
    )
    assert done.returncode == 3
    assert "serves chain id 1551, not the configured 1337" in done.stderr.splitlines()[-1]
    # A logged traceback reaches the captured stderr in process too.
    assert "Traceback" not in done.stderr


def test_serve_refuses_without_registrar_address(node: AnvilNode, tmp_path: Path) -> None:
    done = run_jamins(
        *_serve_args(), env={"JAMINS_DATA_DIR": str(tmp_path), "JAMINS_RPC_URL": node.url}
    )
    assert done.returncode == 3
    last = done.stderr.splitlines()[-1]
    assert "no registrar address: set JAMINS_CONTRACT_ADDRESS" in last
    assert "Traceback" not in done.stderr


def test_serve_with_a_bad_signer_key_says_so_in_one_line(node: AnvilNode, tmp_path: Path) -> None:
    done = run_jamins(
        *_serve_args(),
        env={
            "JAMINS_DATA_DIR": str(tmp_path),
            "JAMINS_RPC_URL": node.url,
            "JAMINS_SIGNER_KEY_FILE": str(tmp_path / "missing.key"),
        },
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert f"cannot read the signer key file {tmp_path / 'missing.key'}" in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        # The layer above: a real `jamins serve` process, its exit code and last line.
        pytest.param("serve", id="serve"),
        pytest.param("deploy", id="deploy-in-process"),
    ],
)
def test_an_unfunded_signer_refuses_at_once_in_one_line(
    node: AnvilNode, tmp_path: Path, command: str
) -> None:
    key = "0x" + secrets.token_hex(32)
    env = {
        "JAMINS_DATA_DIR": str(tmp_path),
        "JAMINS_RPC_URL": node.url,
        "JAMINS_DEPLOY": "true",
        "JAMINS_SIGNER_KEY": key,
    }
    done: Ran = (
        _jamins(*_serve_args(), env=env) if command == "serve" else run_jamins(command, env=env)
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    # Provisioning's progress may be logged before it; the error is the last line.
    last = done.stderr.strip().splitlines()[-1]
    assert "nsufficient funds" in last and Account.from_key(key).address in last, last
    assert key[2:] not in done.stderr


def test_deploy_then_serve_remembers_registrar_and_status_reports(
    node: AnvilNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = funded_key(node)
    env = {"JAMINS_RPC_URL": node.url, "JAMINS_SIGNER_KEY": key, "JAMINS_DATA_DIR": str(tmp_path)}
    # The layer above for `jamins deploy`: a real process prints the address, nothing else.
    deployed = _jamins("deploy", env=env)
    assert deployed.returncode == 0, deployed.stderr
    address = deployed.stdout.strip()
    assert address.startswith("0x") and len(address) == 42
    assert key[2:] not in deployed.stdout + deployed.stderr

    caplog.set_level(logging.INFO)
    account, name = account_pool(1)[0], unique_name("status")
    settings = _app_settings(tmp_path, rpc_url=node.url, signer_key=SecretStr(key))
    with InProcessApp(settings) as app, app.client() as http:
        assert http.get("/healthz").json()["registrar"] == address
        answer = http.post(f"/name/{name}", json=account.registration_body(name))
        assert answer.status_code == 200
        assert wait_settled_through(http, name)["state"] == "confirmed"
    assert f"serving registrar {address}" in caplog.text  # the server's log was read
    assert key[2:] not in caplog.text

    shown = run_jamins("status", name.upper(), env=env)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["name"] == name and status["state"] == "confirmed"
    assert isinstance(status["block"], int) and status["tx"].startswith("0x")
    unknown = run_jamins("status", unique_name("never"), env=env)
    assert unknown.returncode == 1
    assert "never accepted" in unknown.stderr


def test_serve_without_signer_answers_lookups_and_503_for_registrations(
    node: AnvilNode, tmp_path: Path
) -> None:
    deployer = {"JAMINS_RPC_URL": node.url, "JAMINS_SIGNER_KEY": funded_key(node)}
    address = run_jamins("deploy", env={**deployer, "JAMINS_DATA_DIR": str(tmp_path / "d")})
    assert address.returncode == 0, address.stderr
    settings = _app_settings(
        tmp_path / "ro", rpc_url=node.url, contract_address=address.stdout.strip()
    )
    with InProcessApp(settings) as app, app.client() as http:
        account, name = account_pool(1)[0], unique_name("readonly")
        assert http.get(f"/name/{name}").status_code == 404
        answer = http.post(f"/name/{name}", json=account.registration_body(name))
        assert answer.status_code == 503
        assert answer.json()["success"] is False


def test_queue_survives_kill_9_with_transactions_in_flight(node: AnvilNode, tmp_path: Path) -> None:
    key = funded_key(node)
    env = {
        "JAMINS_RPC_URL": node.url,
        "JAMINS_DEPLOY": "true",
        "JAMINS_SIGNER_KEY": key,
        "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
    }
    server = ServerProcess(data_dir=tmp_path, env=env)
    server.start()
    names = [unique_name("crash") for _ in range(3)]
    accounts = account_pool(3)
    rpc(node.url, "evm_setAutomine", [False])
    try:
        for name, account in zip(names, accounts, strict=True):
            body = account.registration_body(name)
            assert httpx.post(f"{server.url}/name/{name}", json=body).status_code == 200
        for name in names:
            server.wait_sent(name)
        server.kill()  # kill -9: nothing is flushed, nothing is said
        # The node loses its pool too, as a node restart would.
        rpc(node.url, "anvil_dropAllTransactions")
    finally:
        rpc(node.url, "evm_setAutomine", [True])
    # Started again on the same data: what it finds there is the application's to resume.
    settings = _app_settings(tmp_path, rpc_url=node.url, deploy=True, signer_key=SecretStr(key))
    with InProcessApp(settings) as app, app.client() as http:
        states = [wait_settled_through(http, name) for name in names]
        assert [state["state"] for state in states] == ["confirmed"] * 3
        lookups = [http.get(f"/name/{name}").status_code for name in names]
        assert lookups == [200] * 3
    # Exactly one deployment and one transaction per name: nothing sent twice.
    sender = Account.from_key(key).address
    assert int(rpc(node.url, "eth_getTransactionCount", [sender, "latest"]), 16) == 1 + 3


# -- an operator's mistakes: one clear line, exit status != 0, no traceback ---------------


def _one_clear_line(done: Ran, *named: str) -> None:
    assert done.returncode not in (0, None), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for word in named:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("env", "named", "as_process"),
    [
        # The layer above: one case as a real process.
        pytest.param({"JAMINS_CHAIN_ID": "abc"}, ["JAMINS_CHAIN_ID", "abc"], True, id="chain-id"),
        pytest.param(
            {"JAMINS_LOG_LEVEL": "verbose"}, ["JAMINS_LOG_LEVEL", "verbose"], False, id="log"
        ),
        pytest.param({"JAMINS_WORKERS": "0"}, ["JAMINS_WORKERS"], False, id="workers"),
        pytest.param(
            {"JAMINS_DATA_DIR": "/sys/kernel"}, ["/sys/kernel"], False, id="read-only-dir"
        ),
        pytest.param(
            {"JAMINS_DATA_DIR": "/etc/hostname/d"}, ["/etc/hostname/d"], False, id="under-file"
        ),
    ],
)
def test_serve_refuses_a_bad_setting_in_one_line(
    tmp_path: Path, env: dict[str, str], named: list[str], as_process: bool
) -> None:
    run = _jamins if as_process else run_jamins
    done: Ran = run(*_serve_args(), env={"JAMINS_DATA_DIR": str(tmp_path), **env})
    _one_clear_line(done, *named)
    assert not (tmp_path / "chain").exists()


def test_serve_on_a_taken_port_refuses_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_jamins("serve", "--port", str(port), env={"JAMINS_DATA_DIR": str(tmp_path)})
    _one_clear_line(done, str(port), "--port")
    # No node was started, nothing was deployed, no database was made.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "as_process"),
    [
        # The layer above: `jamins status` as a real process.
        pytest.param(["status", "alice"], True, id="status"),
        pytest.param(["migrate"], False, id="migrate"),
    ],
)
def test_database_down_says_so_in_one_line(
    tmp_path: Path, command: list[str], as_process: bool
) -> None:
    url = f"postgresql://jamins:secret@127.0.0.1:{free_port()}/jamins"
    run = _jamins if as_process else run_jamins
    done: Ran = run(*command, env={"JAMINS_DATA_DIR": str(tmp_path), "JAMINS_DATABASE_URL": url})
    _one_clear_line(done, "JAMINS_DATABASE_URL")
    assert "secret" not in done.stderr


def test_second_serve_on_the_same_data_dir_refuses(tmp_path: Path) -> None:
    # The embedded default (its own node), as a fresh `python -m app serve` interpreter:
    # the other servers of the suite are forks of one that imported the app (tests/warm.py).
    first = ServerProcess(data_dir=tmp_path, cold=True)
    first.start()
    try:
        # The lock is the kernel's (flock), held by the first process: a second `serve`
        # in this process meets it as another process's would.
        second = run_jamins(*_serve_args(), env={"JAMINS_DATA_DIR": str(tmp_path)})
        _one_clear_line(second, str(tmp_path), "already")
        name = unique_name("lock")
        body = account_pool(1)[0].registration_body(name)
        assert httpx.post(f"{first.url}/name/{name}", json=body).status_code == 200
        assert first.wait_settled(name)["state"] == "confirmed"
        assert httpx.get(f"{first.url}/readyz", timeout=10).status_code == 200
    finally:
        first.stop()


def test_workers_only_read_what_serve_provisioned_once(node: AnvilNode, tmp_path: Path) -> None:
    key = funded_key(node)
    server = ServerProcess(
        data_dir=tmp_path,
        env={
            "JAMINS_RPC_URL": node.url,
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": key,
            "JAMINS_WORKERS": "2",
        },
    )
    server.start()
    try:
        deadline = time.monotonic() + 60
        while server.log_tail(1_000_000).count("serving registrar") < 2:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
        log = server.log_tail(1_000_000)
        address = server.registrar_address()
    finally:
        server.stop()
    # The parent migrated and deployed; each worker only read the record.
    assert log.count("Running upgrade  -> 0001") == 1
    assert log.count("deployed the registrar") == 1
    assert log.count(f"serving registrar {address}") == 2
    assert (
        int(rpc(node.url, "eth_getTransactionCount", [Account.from_key(key).address, "latest"]), 16)
        == 1
    )


# -- the app in process: create_app(settings) alone provisions; a worker's only reads -------


def test_an_app_built_alone_provisions_in_its_lifespan(node: AnvilNode, tmp_path: Path) -> None:
    key = funded_key(node)
    settings = Settings(
        rpc_url=node.url,
        deploy=True,
        signer_key=SecretStr(key),
        data_dir=tmp_path,
        _env_file=None,
    )
    app = create_app(settings)

    async def health() -> dict[str, object]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://jamins") as http:
                body: dict[str, object] = (await http.get("/healthz")).json()
                return body

    first = asyncio.run(health())
    assert first["registrar"] == provision(settings)  # recorded: provisioning finds it
    assert asyncio.run(health()) == first
    sender = Account.from_key(key).address
    assert int(rpc(node.url, "eth_getTransactionCount", [sender, "latest"]), 16) == 1


def test_a_worker_app_without_provisioning_fails_in_one_line(
    node: AnvilNode, tmp_path: Path
) -> None:
    settings = Settings(rpc_url=node.url, data_dir=tmp_path, _env_file=None)
    migrate(settings)
    app = create_app(settings, provisioned=True)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ProvisionError, match="records no registrar"):
        asyncio.run(start())
    startup_error = server_state(app).startup_error
    assert startup_error is not None and "\n" not in startup_error
    assert startup_error.startswith("cannot start: the database records no registrar")
