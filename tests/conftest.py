"""Shared fixtures: a real chain node (anvil, or geth 1.13.15), a real PostgreSQL server, a
real jamins process.

`node` is the chain node a test runs on: anvil unless the test (or its module) is marked
`@pytest.mark.nodes("anvil", "geth")`, which runs it once on each. The geth runs are skipped
with one reason when no geth 1.13.15 is built (`make geth`), and fail instead in CI.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from app.chain.anvil import AnvilNode, find_anvil, fund
from app.settings import Settings
from tests.geth import GethNode, GethNotFound, find_geth
from tests.jami_keys import JamiAccount, account_pool
from tests.pg import PostgresServer
from tests.server import InProcessApp, ServerProcess

# The suite sets every setting it needs itself: an operator's .env (in the repository, where
# the compose steps put it) and the JAMINS_* variables of their shell never reach it, in
# this process or in the jamins processes it starts (they inherit JAMINS_ENV_FILE).
# JAMINS_ANVIL_PATH and JAMINS_GETH_PATH only say where the tools are.
for _key in [key for key in os.environ if key.startswith("JAMINS_")]:
    if _key not in ("JAMINS_ANVIL_PATH", "JAMINS_GETH_PATH"):
        del os.environ[_key]
os.environ["JAMINS_ENV_FILE"] = ""

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


ChainNode = AnvilNode | GethNode
NODE_KINDS = ("anvil", "geth")


# The modules that take longest on one worker, longest first (wall seconds of a full run on
# 4 workers, `make test`). xdist's loadscope hands each worker the next module of the queue
# when it runs dry; with these first, no long module starts last and holds up the end.
LONGEST_MODULES = (
    "test_faults.py",  # 166 s
    "test_geth_reorg.py",  # 125 s
    "test_jamid.py",  # 124 s
    "test_api.py",  # 111 s
    "test_geth.py",  # 100 s
    "test_indexer.py",  # 85 s
    "test_two_servers.py",  # 48 s
    "test_compose.py",  # 47 s
    "test_portability.py",  # 46 s
    "test_startup.py",  # 42 s
    "test_races.py",  # 36 s
    "test_security.py",  # 36 s
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first (the Makefile turns off xdist's reorder by test count); each
    module's tests keep the order pytest gave them."""
    rank = {name: index for index, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give `node` the kinds the closest `nodes` marker names (default: anvil only).

    Every test on this file's `node` is parametrized, anvil ones too: pytest tells session
    fixtures apart by their parameters, so a bare `node` next to node['anvil'] would stop and
    start the session's servers each time the test order crossed from one to the other. A
    module's own `node` fixture (a fake, a node of its own) is left alone unless marked."""
    if "node" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("nodes")
    if marker is None and not _is_shared_node(metafunc):
        return
    kinds = marker.args if marker is not None else ("anvil",)
    unknown = set(kinds) - set(NODE_KINDS)
    if unknown:
        raise ValueError(f"unknown node kinds {sorted(unknown)}")
    metafunc.parametrize("node", kinds, indirect=True, scope="session")


def _is_shared_node(metafunc: pytest.Metafunc) -> bool:
    """True when the test's `node` is this file's session fixture, not a module's own."""
    definitions = metafunc._arg2fixturedefs.get("node", ())
    return bool(definitions) and definitions[-1].func.__code__.co_filename == __file__


@pytest.fixture(scope="session")
def node(request: pytest.FixtureRequest) -> ChainNode:
    """The chain node of this run: the session's anvil or the session's archive geth."""
    kind = getattr(request, "param", "anvil")
    chain_node: ChainNode = request.getfixturevalue(kind)
    return chain_node


_GETH_SKIP = "geth suites not run: "


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line when the geth runs were skipped, so that they are never taken as passed."""
    reasons = {
        str(report.longrepr[2]).removeprefix("Skipped: ")
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and _GETH_SKIP in str(report.longrepr[2])
    }
    count = sum(
        1
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and _GETH_SKIP in str(report.longrepr[2])
    )
    for reason in sorted(reasons):
        terminalreporter.write_line(f"{count} geth test runs skipped: {reason}", yellow=True)


@pytest.fixture(scope="session")
def geth_binary() -> str:
    try:
        return find_geth()
    except GethNotFound as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI=true: the geth suites must run)")
        pytest.skip(f"{_GETH_SKIP}{exc}")


@pytest.fixture(scope="session")
def geth(geth_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GethNode]:
    """One archive geth 1.13.15 sealing a private Clique chain (period 1, Jami forks),
    already past its Constantinople block."""
    with GethNode(tmp_path_factory.mktemp("geth"), binary=geth_binary) as chain_node:
        yield chain_node


def own_chain_node(
    kind: str, request: pytest.FixtureRequest, workdir: Path, **anvil_options: Any
) -> ChainNode:
    """A new (not started) node of a test's own: anvil with `anvil_options`, or a geth
    sealing 1 s blocks in `workdir` (its chain and ports survive stop/start)."""
    if kind == "anvil":
        return AnvilNode(binary=request.getfixturevalue("anvil_binary"), **anvil_options)
    return GethNode(workdir, binary=request.getfixturevalue("geth_binary"))


def funded_key(chain_node: ChainNode) -> str:
    """A new key holding 10^24 wei on `chain_node`."""
    key = "0x" + secrets.token_hex(32)
    address = Account.from_key(key).address
    if isinstance(chain_node, GethNode):
        chain_node.fund(address, 10**24)
    else:
        fund(chain_node.url, address, 10**24)
    return key


@contextlib.contextmanager
def deployed_server(node: AnvilNode, data_dir: Path, **env: str) -> Iterator[ServerProcess]:
    """`jamins serve` on `node`, deploying its own registrar, with these extra settings."""
    process = ServerProcess(
        data_dir=data_dir,
        env={
            "JAMINS_RPC_URL": node.url,
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(node),
            **env,
        },
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, node: ChainNode, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Each API test runs once on an SQLite file and once on PostgreSQL; one database per
    chain node too (a database belongs to one chain)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'jamins.sqlite3'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database(f"jamins_{secrets.token_hex(4)}")


@pytest.fixture(scope="session")
def server(
    node: ChainNode, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """`jamins serve` on the shared node, deploying its own registrar, with this database."""
    process = ServerProcess(
        data_dir=tmp_path_factory.mktemp("server"),
        env={
            "JAMINS_RPC_URL": node.url,
            "JAMINS_CHAIN_ID": str(node.chain_id),
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(node),
            "JAMINS_DATABASE_URL": database_url,
            "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
            "JAMINS_INDEX_POLL_SECONDS": "0.2",
            # Cached answers outlive every test: a changed answer is the indexer's doing
            # (test_api.py's test_direct_changes_reach_cached_lookups), never the TTL's.
            "JAMINS_LOOKUP_CACHE_SECONDS": "3600",
            # Its own registrar on a test chain: lookups answer pending names (the 503
            # answers of a registrar others write are tests/test_service_chain.py's and
            # test_api.py's own servers').
            "JAMINS_REGISTRAR_EXCLUSIVE": "true",
        },
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def in_process_settings(node: ChainNode, data_dir: Path, **settings: Any) -> Settings:
    """What `server` runs with, for an app in this process: the shared node, its own
    registrar and an SQLite file in `data_dir`, unless `settings` say otherwise."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": f"sqlite:///{data_dir / 'jamins.sqlite3'}",
        "rpc_url": node.url,
        "chain_id": node.chain_id,
        "deploy": True,
        "signer_key": funded_key(node),
        "confirmations": 0,
        "register_rate_per_minute": 0,
        "receipt_poll_seconds": 0.2,
        "index_poll_seconds": 0.2,
        "lookup_cache_seconds": 3600,
        "registrar_exclusive": True,
        **settings,
    }
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def app_in_process(
    anvil: AnvilNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessApp]:
    """The application of `server`, in this process (SQLite, the session's anvil): for the
    tables of request cases that check what the routes answer, not how they are served."""
    with InProcessApp(in_process_settings(anvil, tmp_path_factory.mktemp("app"))) as app:
        yield app


@pytest.fixture
def app_http(app_in_process: InProcessApp) -> Iterator[httpx.Client]:
    with app_in_process.client() as client:
        yield client


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
