"""Shared fixtures: a real anvil node, a real PostgreSQL server, a real jamins process."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from app.chain.anvil import AnvilNode, find_anvil, fund
from app.settings import Settings
from tests.jami_keys import JamiAccount, account_pool
from tests.pg import PostgresServer
from tests.server import ServerProcess

# The suite sets every setting it needs itself: an operator's .env (in the repository, where
# the compose steps put it) and the JAMINS_* variables of their shell never reach it, in
# this process or in the jamins processes it starts (they inherit JAMINS_ENV_FILE).
# JAMINS_ANVIL_PATH only says where the tool is.
for _key in [key for key in os.environ if key.startswith("JAMINS_")]:
    if _key != "JAMINS_ANVIL_PATH":
        del os.environ[_key]
os.environ["JAMINS_ENV_FILE"] = ""
Settings.model_config["env_file"] = None

BACKENDS = ["sqlite", "postgresql"]
_name_counter = itertools.count()


def unique_name(prefix: str = "n") -> str:
    """A valid name no other test uses (names are global on the shared chain)."""
    return f"{prefix}{next(_name_counter)}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def anvil_binary() -> str:
    return find_anvil(os.environ.get("JAMINS_ANVIL_PATH"))


@pytest.fixture(scope="session")
def anvil(anvil_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilNode]:
    """One automining node with the Jami chain's id, forks and gas limit."""
    log = tmp_path_factory.mktemp("anvil") / "anvil.log"
    with AnvilNode(binary=anvil_binary, log_file=log) as node:
        yield node


def funded_key(anvil: AnvilNode) -> str:
    key = "0x" + secrets.token_hex(32)
    fund(anvil.url, Account.from_key(key).address, 10**24)
    return key


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each API test runs once on an SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'jamins.sqlite3'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database(f"jamins_{secrets.token_hex(4)}")


@pytest.fixture(scope="session")
def server(
    anvil: AnvilNode, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """`jamins serve` on the shared node, deploying its own registrar, with this database."""
    process = ServerProcess(
        data_dir=tmp_path_factory.mktemp("server"),
        env={
            "JAMINS_RPC_URL": anvil.url,
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(anvil),
            "JAMINS_DATABASE_URL": database_url,
            "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
        },
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


class AccountSupply:
    """Hands out RSA-4096 Jami accounts (made once per run, then reused per registrar)."""

    def __init__(self) -> None:
        self._indexes = itertools.count()

    def __call__(self) -> JamiAccount:
        return account_pool(next(self._indexes) + 1)[-1]


@pytest.fixture(scope="session")
def new_account(server: ServerProcess) -> AccountSupply:
    """Fresh accounts for this server: each server has its own registrar, so an account
    used on one is still unnamed on the other."""
    return AccountSupply()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
