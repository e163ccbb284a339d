"""The real Jami daemon (Debian's `jamid`, 13.x) against `jamins serve` on its embedded
default: registration, lookups by name and address, availability and invalid names, taken
names, a server restart, and the account's own name at its start-up.

Each daemon has its own HOME (the daemon caches every name answer on disk forever), so a
test that needs an answer from the server rather than from a cache uses a fresh daemon.
What the statuses mean is in `tests/jamid.py`."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import funded_key, unique_name
from tests.geth import GethNode
from tests.jamid import (
    JamiAccountRef,
    JamiDaemon,
    LookupState,
    RegistrationState,
    ensure_jamid_installed,
    processes_under,
)
from tests.server import ServerProcess, free_port

pytestmark = pytest.mark.slow


class Daemons:
    """Starts daemons under one directory, each with a fresh HOME; stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[JamiDaemon] = []

    def start(self, label: str) -> JamiDaemon:
        daemon = JamiDaemon(self.root / f"{label}-{len(self.started)}")
        self.started.append(daemon)
        daemon.start()
        return daemon

    def stop_all(self) -> None:
        for daemon in self.started:
            daemon.stop()


@dataclass(frozen=True)
class Registered:
    """The name that the first daemon's account registered through the daemon."""

    daemon: JamiDaemon
    account: JamiAccountRef
    name: str
    state: RegistrationState


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jamid")


@pytest.fixture(scope="module")
def ns_server(workdir: Path) -> Iterator[ServerProcess]:
    """`jamins serve` on its embedded default: no JAMINS_* variable at all."""
    server = ServerProcess(data_dir=workdir / "server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def daemons(workdir: Path) -> Iterator[Daemons]:
    ensure_jamid_installed()
    started = Daemons(workdir / "daemons")
    try:
        yield started
    finally:
        started.stop_all()
    assert processes_under(started.root) == []


@pytest.fixture(scope="module")
def registered(daemons: Daemons, ns_server: ServerProcess) -> Registered:
    daemon = daemons.start("registrant")
    account = daemon.add_account(nameserver=ns_server.url, alias="registrant")
    name = unique_name("jamid")
    state = daemon.register_name(account.account_id, name)
    return Registered(daemon=daemon, account=account, name=name, state=state)


def logged_answers(server: ServerProcess, method: str, path: str) -> list[int]:
    """The statuses of every `method path` request in the server's access log, in order."""
    pattern = re.compile(rf'"{method} {re.escape(path)} HTTP/1\.1" (\d{{3}})')
    return [int(status) for status in pattern.findall(server.log_tail(10_000_000))]


def next_answer(server: ServerProcess, method: str, path: str, after: int) -> int:
    """The status of the request after the first `after` ones (the log may lag a little)."""
    deadline = time.monotonic() + 5
    while len(answers := logged_answers(server, method, path)) <= after:
        assert time.monotonic() < deadline, f"no new {method} {path} in the server's log"
        time.sleep(0.05)
    return answers[after]


def fresh_account(daemons: Daemons, server: ServerProcess, label: str) -> tuple[JamiDaemon, str]:
    """A new daemon (empty name cache) with one account on our server: (daemon, account id)."""
    daemon = daemons.start(label)
    return daemon, daemon.add_account(nameserver=server.url, alias=label).account_id


def test_register_name_through_the_daemon(registered: Registered, ns_server: ServerProcess) -> None:
    assert registered.state is RegistrationState.SUCCESS
    assert ns_server.wait_settled(registered.name)["state"] == "confirmed"
    details = registered.daemon.volatile_account_details(registered.account.account_id)
    assert details["Account.registeredName"] == registered.name


def test_lookups_from_a_fresh_daemon_find_the_name(
    registered: Registered, daemons: Daemons, ns_server: ServerProcess
) -> None:
    daemon, account_id = fresh_account(daemons, ns_server, "lookups")
    jami_id = registered.account.jami_id

    # Mixed case first, so that it is the one answered by the server, not by the cache.
    # This daemon lowercases the name before sending it, and reports the name as typed.
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(registered.name))
    found = daemon.lookup_name(account_id, mixed)
    assert (found.state, found.address, found.name) == (LookupState.FOUND, jami_id, mixed)

    found = daemon.lookup_name(account_id, registered.name)
    assert (found.state, found.address, found.name) == (
        LookupState.FOUND,
        jami_id,
        registered.name,
    )

    found = daemon.lookup_address(account_id, jami_id)
    assert (found.state, found.address, found.name) == (
        LookupState.FOUND,
        jami_id,
        registered.name,
    )
    daemon.stop()


def test_register_and_look_up_through_the_daemon_on_a_server_on_geth(
    daemons: Daemons, geth: GethNode, tmp_path: Path
) -> None:
    """The same daemon flow, with the name server on geth 1.13.15 (Clique, 1 s blocks):
    the daemon registers, the chain confirms, a fresh daemon finds it both ways."""
    server = ServerProcess(
        data_dir=tmp_path / "server",
        env={
            "JAMINS_RPC_URL": geth.url,
            "JAMINS_CHAIN_ID": str(geth.chain_id),
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(geth),
            "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
        },
    )
    server.start()
    try:
        registrant = daemons.start("geth-registrant")
        account = registrant.add_account(nameserver=server.url, alias="geth-registrant")
        account_id, jami_id = account.account_id, account.jami_id
        name = unique_name("gethd")
        assert registrant.register_name(account_id, name) is RegistrationState.SUCCESS
        settled = server.wait_settled(name, timeout=60)
        assert settled["state"] == "confirmed"
        assert int(str(settled["block"])) <= geth.block_number()
        reader, reader_id = fresh_account(daemons, server, "geth-reader")
        found = reader.lookup_name(reader_id, name)
        assert (found.state, found.address) == (LookupState.FOUND, jami_id)
        found = reader.lookup_address(reader_id, jami_id)
        assert (found.state, found.name) == (LookupState.FOUND, name)
        registrant.stop()
        reader.stop()
    finally:
        server.stop()


def test_lookup_address_of_an_unnamed_account_is_not_found(
    daemons: Daemons, ns_server: ServerProcess
) -> None:
    daemon, account_id = fresh_account(daemons, ns_server, "unnamed")
    jami_id = daemon.account_details(account_id)["Account.username"]
    assert daemon.lookup_address(account_id, jami_id).state is LookupState.NOT_FOUND
    daemon.stop()


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        pytest.param(None, LookupState.NOT_FOUND, id="free-name"),
        pytest.param("ab", LookupState.INVALID_NAME, id="too-short"),
        pytest.param("a b", LookupState.INVALID_NAME, id="space"),
        pytest.param("a" * 33, LookupState.INVALID_NAME, id="too-long"),
        # This daemon only accepts [a-zA-Z0-9-_]: a name our server accepts is refused
        # before any request (newer daemons send it).
        pytest.param("élodie", LookupState.INVALID_NAME, id="unicode"),
    ],
)
def test_availability_check(
    typed: str | None,
    expected: LookupState,
    lookup_daemon: tuple[JamiDaemon, str],
) -> None:
    daemon, account_id = lookup_daemon
    assert daemon.lookup_name(account_id, typed or unique_name("Free")).state is expected


@pytest.fixture(scope="module")
def lookup_daemon(daemons: Daemons, ns_server: ServerProcess) -> tuple[JamiDaemon, str]:
    return fresh_account(daemons, ns_server, "availability")


def test_name_taken_by_another_account(
    registered: Registered, daemons: Daemons, ns_server: ServerProcess
) -> None:
    # A fresh daemon has not cached the name: the refusal is the server's 409.
    daemon, account_id = fresh_account(daemons, ns_server, "squatter")
    path = f"/name/{registered.name}"
    seen = len(logged_answers(ns_server, "POST", path))
    assert daemon.register_name(account_id, registered.name) is RegistrationState.ALREADY_TAKEN
    assert next_answer(ns_server, "POST", path, after=seen) == 409
    assert daemon.volatile_account_details(account_id).get("Account.registeredName", "") == ""
    daemon.stop()


def test_second_name_for_a_named_account(registered: Registered, ns_server: ServerProcess) -> None:
    # The server answers 403 (this address already has a name); the daemon says "taken"
    # and keeps the name it has.
    second = unique_name("second")
    daemon, account = registered.daemon, registered.account
    assert daemon.register_name(account.account_id, second) is RegistrationState.ALREADY_TAKEN
    assert next_answer(ns_server, "POST", f"/name/{second}", after=0) == 403
    assert ns_server.registration(second).get("state") is None
    details = daemon.volatile_account_details(account.account_id)
    assert details["Account.registeredName"] == registered.name


def test_registration_of_an_invalid_name(
    lookup_daemon: tuple[JamiDaemon, str],
) -> None:
    daemon, account_id = lookup_daemon
    assert daemon.register_name(account_id, "a b") is RegistrationState.INVALID_NAME


def test_account_finds_its_own_name_at_start_up(registered: Registered) -> None:
    # At start-up an account asks /addr/<its id> for its name. With the name cache and the
    # name remembered in its configuration gone, only the server can give it back.
    daemon, account = registered.daemon, registered.account
    daemon.stop()
    shutil.rmtree(daemon.home / ".cache" / "namecache", ignore_errors=True)
    config = daemon.home / ".local/share/jami" / account.account_id / "config.yml"
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(x for x in lines if not x.startswith("Account.registeredName:")))
    daemon.start()
    deadline = time.monotonic() + 20
    while daemon.volatile_account_details(account.account_id).get("Account.registeredName") != (
        registered.name
    ):
        assert time.monotonic() < deadline, daemon.volatile_account_details(account.account_id)
        time.sleep(0.1)


def test_lookups_after_a_server_restart(
    registered: Registered, daemons: Daemons, ns_server: ServerProcess
) -> None:
    assert ns_server.wait_settled(registered.name)["state"] == "confirmed"
    ns_server.restart()
    daemon, account_id = fresh_account(daemons, ns_server, "after-restart")
    found = daemon.lookup_name(account_id, registered.name)
    assert (found.state, found.address) == (LookupState.FOUND, registered.account.jami_id)
    found = daemon.lookup_address(account_id, registered.account.jami_id)
    assert (found.state, found.name) == (LookupState.FOUND, registered.name)
    daemon.stop()


def test_name_found_right_after_an_availability_check(
    registered: Registered, lookup_daemon: tuple[JamiDaemon, str], ns_server: ServerProcess
) -> None:
    # A user checks that a name is free, someone registers it, the user looks it up again:
    # the server's memory of free names must not hide the registration.
    looker, looker_id = lookup_daemon
    name = unique_name("soon")
    assert looker.lookup_name(looker_id, name).state is LookupState.NOT_FOUND
    owner = registered.daemon.add_account(nameserver=ns_server.url, alias="soon")
    assert registered.daemon.register_name(owner.account_id, name) is RegistrationState.SUCCESS
    found = looker.lookup_name(looker_id, name)
    assert (found.state, found.address) == (LookupState.FOUND, owner.jami_id)


class StubNameServer:
    """An HTTP name server that answers what the test tells it, per method and path (404
    otherwise): to see how this daemon reads each answer (PROTOCOL.md §1.1)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        routes, requests = self.routes, self.requests

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                requests.append((self.command, self.path))
                status, body = routes.get((self.command, self.path), (404, b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_port}"

    def answer(self, method: str, path: str, status: int, body: bytes) -> None:
        self.routes[(method, path)] = (status, body)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubNameServer]:
    server = StubNameServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def stub_daemon(daemons: Daemons, stub: StubNameServer) -> tuple[JamiDaemon, str]:
    daemon = daemons.start("stub")
    return daemon, daemon.add_account(nameserver=stub.url, alias="stub").account_id


STUB_ID = "ab" * 20
FOUND_BODY = json.dumps({"name": "stub", "addr": "0x" + STUB_ID}).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(200, FOUND_BODY, LookupState.FOUND, id="200"),
        pytest.param(200, b'{"addr": "' + STUB_ID.encode() + b'"}', LookupState.FOUND, id="no-0x"),
        pytest.param(201, FOUND_BODY, LookupState.FOUND, id="201"),
        pytest.param(200, b'{"name": "stub"}', LookupState.NOT_FOUND, id="200-no-addr"),
        pytest.param(200, b'{"addr": ""}', LookupState.NOT_FOUND, id="200-empty-addr"),
        pytest.param(200, b"found", LookupState.ERROR, id="200-not-json"),
        pytest.param(400, b"{}", LookupState.NOT_FOUND, id="400"),  # newer daemons: INVALID
        pytest.param(401, b"{}", LookupState.NOT_FOUND, id="401"),
        pytest.param(404, b"{}", LookupState.NOT_FOUND, id="404"),
        pytest.param(405, b"{}", LookupState.NOT_FOUND, id="405"),
        pytest.param(409, b"{}", LookupState.NOT_FOUND, id="409"),
        pytest.param(422, b"{}", LookupState.NOT_FOUND, id="422"),
        pytest.param(429, b"{}", LookupState.NOT_FOUND, id="429"),
        pytest.param(500, b"{}", LookupState.ERROR, id="500"),
        pytest.param(503, b"{}", LookupState.ERROR, id="503"),
        pytest.param(307, b"{}", LookupState.ERROR, id="307"),
    ],
)
def test_daemon_reading_of_name_lookup_answers(
    status: int,
    body: bytes,
    expected: LookupState,
    stub: StubNameServer,
    stub_daemon: tuple[JamiDaemon, str],
) -> None:
    daemon, account_id = stub_daemon
    name = unique_name("stub")
    stub.answer("GET", f"/name/{name}", status, body)
    found = daemon.lookup_name(account_id, name)
    assert found.state is expected
    # The daemon reports the name as asked, never the server's `name`; `addr` without 0x.
    assert (found.name, found.address) == (name, STUB_ID if expected is LookupState.FOUND else "")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(200, b'{"name": "stub"}', LookupState.FOUND, id="200"),
        pytest.param(200, b"{}", LookupState.NOT_FOUND, id="200-no-name"),
        pytest.param(200, b'{"name": ""}', LookupState.NOT_FOUND, id="200-empty-name"),
        pytest.param(200, b"stub", LookupState.ERROR, id="200-not-json"),
        pytest.param(201, b'{"name": "stub"}', LookupState.ERROR, id="201"),
        pytest.param(400, b"{}", LookupState.NOT_FOUND, id="400"),
        pytest.param(404, b"{}", LookupState.NOT_FOUND, id="404"),
        pytest.param(429, b"{}", LookupState.NOT_FOUND, id="429"),
        pytest.param(503, b"{}", LookupState.ERROR, id="503"),
    ],
)
def test_daemon_reading_of_address_lookup_answers(
    status: int,
    body: bytes,
    expected: LookupState,
    stub: StubNameServer,
    stub_daemon: tuple[JamiDaemon, str],
) -> None:
    daemon, account_id = stub_daemon
    address = secrets.token_hex(20)
    stub.answer("GET", f"/addr/{address}", status, body)
    found = daemon.lookup_address(account_id, address)
    assert found.state is expected
    assert (found.address, found.name) == (
        address,
        "stub" if expected is LookupState.FOUND else "",
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(200, b'{"success": true}', RegistrationState.SUCCESS, id="200"),
        pytest.param(201, b'{"success": true}', RegistrationState.SUCCESS, id="201"),
        pytest.param(200, b'{"success": false}', RegistrationState.NETWORK_ERROR, id="200-false"),
        pytest.param(200, b"{}", RegistrationState.NETWORK_ERROR, id="200-no-success"),
        pytest.param(200, b"ok", RegistrationState.NETWORK_ERROR, id="200-not-json"),
        pytest.param(400, b"{}", RegistrationState.NETWORK_ERROR, id="400"),
        pytest.param(401, b"{}", RegistrationState.NETWORK_ERROR, id="401"),
        pytest.param(403, b"{}", RegistrationState.ALREADY_TAKEN, id="403"),
        pytest.param(404, b"{}", RegistrationState.ALREADY_TAKEN, id="404"),
        pytest.param(409, b"{}", RegistrationState.ALREADY_TAKEN, id="409"),
        pytest.param(429, b"{}", RegistrationState.ALREADY_TAKEN, id="429"),
        pytest.param(500, b"{}", RegistrationState.NETWORK_ERROR, id="500"),
        pytest.param(503, b"{}", RegistrationState.NETWORK_ERROR, id="503"),
    ],
)
def test_daemon_reading_of_registration_answers(
    status: int,
    body: bytes,
    expected: RegistrationState,
    stub: StubNameServer,
    stub_daemon: tuple[JamiDaemon, str],
) -> None:
    daemon, account_id = stub_daemon
    name = unique_name("reg")
    stub.answer("POST", f"/name/{name}", status, body)
    assert daemon.register_name(account_id, name) is expected


def test_daemon_reading_of_an_unreachable_server(stub_daemon: tuple[JamiDaemon, str]) -> None:
    daemon, _ = stub_daemon
    closed = f"http://127.0.0.1:{free_port()}"
    # An empty account id makes the daemon use the name server given in the call.
    found = daemon.lookup_name("", unique_name("gone"), nameserver=closed)
    assert found.state is LookupState.ERROR
    found = daemon.lookup_address("", secrets.token_hex(20), nameserver=closed)
    assert found.state is LookupState.ERROR
    account = daemon.add_account(nameserver=closed, alias="gone")
    state = daemon.register_name(account.account_id, unique_name("gone"))
    assert state is RegistrationState.NETWORK_ERROR


@pytest.mark.parametrize("typed", ["ab", "a b", "a" * 33, "élodie", "a/b"])
def test_invalid_names_never_reach_the_server(
    typed: str, stub: StubNameServer, stub_daemon: tuple[JamiDaemon, str]
) -> None:
    daemon, account_id = stub_daemon
    before = len(stub.requests)
    assert daemon.lookup_name(account_id, typed).state is LookupState.INVALID_NAME
    assert daemon.register_name(account_id, typed) is RegistrationState.INVALID_NAME
    assert stub.requests[before:] == []


def test_wrong_password_never_reaches_the_server(
    stub: StubNameServer, stub_daemon: tuple[JamiDaemon, str]
) -> None:
    daemon, account_id = stub_daemon
    name = unique_name("pw")
    stub.answer("POST", f"/name/{name}", 200, b'{"success": true}')
    state = daemon.register_name(account_id, name, password="not-the-password")
    assert state is RegistrationState.WRONG_PASSWORD
    assert ("POST", f"/name/{name}") not in stub.requests


def test_a_string_success_breaks_the_daemon(daemons: Daemons, stub: StubNameServer) -> None:
    # Why `success` must be a JSON boolean: "true" throws in the daemon's HTTP thread
    # ("Value is not convertible to bool"), and it never answers anything again.
    daemon = daemons.start("string-success")
    account_id = daemon.add_account(nameserver=stub.url).account_id
    name = unique_name("str")
    stub.answer("POST", f"/name/{name}", 200, b'{"success": "true"}')
    with pytest.raises(TimeoutError):
        daemon.register_name(account_id, name, timeout=3)
    with pytest.raises(TimeoutError):
        daemon.lookup_name(account_id, unique_name("after"), timeout=2)
    assert "not convertible to bool" in daemon.log_path.read_text(errors="replace")
    daemon.stop(grace=2)


def test_a_silent_server_times_out_instead_of_hanging(daemons: Daemons) -> None:
    # Accepts connections and never answers: the daemon would wait forever, the harness not.
    accepted: list[socket.socket] = []

    def accept_all(listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        threading.Thread(target=accept_all, args=(listener,), daemon=True).start()
        daemon = daemons.start("silent")
        port = listener.getsockname()[1]
        account_id = daemon.add_account(nameserver=f"http://127.0.0.1:{port}").account_id
        # The harness's own 2 s bound fires (a hang would never raise).
        with pytest.raises(TimeoutError):
            daemon.lookup_name(account_id, unique_name("silent"), timeout=2)
        listener.shutdown(socket.SHUT_RDWR)
    for connection in accepted:
        connection.close()
    daemon.stop()


def test_stop_kills_a_daemon_that_ignores_sigterm(daemons: Daemons) -> None:
    daemon = daemons.start("stubborn")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)  # SIGTERM stays pending, only SIGKILL works
    daemon.stop(grace=1)  # returns only once SIGKILL has reaped it
    assert processes_under(daemon.root) == []


def test_no_process_left_behind(daemons: Daemons, ns_server: ServerProcess, workdir: Path) -> None:
    daemons.stop_all()
    ns_server.stop()
    assert processes_under(workdir) == []
