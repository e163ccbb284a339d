"""A real server against hostile clients: long paths, idle and half-sent connections,
malformed HTTP and bodies. Memory, connections and log lines stay bounded while lookups
keep answering. (Odd methods and HEAD are test_routes.py's, in process.)"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.chain.anvil import AnvilNode
from app.middlewares import RequestBoundsMiddleware
from tests.conftest import deployed_server, unique_name
from tests.server import ServerProcess

HEADER_TIMEOUT = 1.5
MAX_CONNECTIONS = 200


@pytest.fixture(scope="module")
def hostile_server(
    anvil: AnvilNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with deployed_server(
        anvil,
        tmp_path_factory.mktemp("hostile"),
        JAMINS_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        JAMINS_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    ) as server:
        yield server


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.readlink().name.startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def server_pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def exchange(server: ServerProcess, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes
    or stays silent for a second."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(request)  # may be refused before we finish sending
        sock.settimeout(1.0)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        except ConnectionResetError:
            # Refused while we were still sending: the server's close resets the
            # connection, which may discard its 400 before we read it.
            pass
        return b"".join(chunks)


def lookup_answers(server: ServerProcess) -> None:
    """A lookup answers, within a bound no healthy server comes near (the client times out
    otherwise)."""
    answer = httpx.get(f"{server.url}/name/{unique_name('free')}", timeout=5)
    assert answer.status_code == 404


# -- memory and log lines ------------------------------------------------------------------


def test_distinct_long_paths_keep_memory_and_log_lines_bounded(
    hostile_server: ServerProcess,
) -> None:
    pid = server_pid(hostile_server)
    lookup_answers(hostile_server)
    before = rss_kib(pid)
    log_before = hostile_server.log_path.stat().st_size
    statuses = set()
    for index in range(1000):
        path = f"/name/{index:06d}" + "a" * 60_000
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        reply = exchange(hostile_server, request.encode())
        statuses.add(reply.split(b"\r\n", 1)[0])
    lookup_answers(hostile_server)
    grown = rss_kib(pid) - before
    logged = hostile_server.log_path.stat().st_size - log_before
    print(f"RSS {before} KiB -> +{grown} KiB; {logged} bytes of log for 1000 requests")
    assert statuses <= {b"HTTP/1.1 400 Bad Request", b""}
    assert b"HTTP/1.1 400 Bad Request" in statuses
    assert grown < 10 * 1024, f"RSS grew by {grown} KiB"
    assert logged < 1000 * 400, f"{logged} bytes of log"


def test_request_bounds_refuse_long_path_before_the_app() -> None:
    reached = []

    async def app(scope: object, receive: object, send: object) -> None:
        reached.append(scope)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=RequestBoundsMiddleware(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/name/" + "a" * 5000, json={})

    answer = asyncio.run(go())
    assert answer.status_code == 400
    assert answer.json() == {"success": False, "error": "request path too long"}
    assert reached == []


# -- connections -------------------------------------------------------------------------


def test_idle_and_partial_connections_are_closed_while_lookups_answer(
    hostile_server: ServerProcess,
) -> None:
    pid = server_pid(hostile_server)
    baseline = open_sockets(pid)
    before = rss_kib(pid)
    selector = selectors.DefaultSelector()
    sockets = []
    for index in range(150):
        sock = socket.create_connection(("127.0.0.1", hostile_server.port))
        if index % 3 == 1:
            sock.sendall(b"GET /name/par")  # half a request line
        elif index % 3 == 2:
            sock.sendall(b"GET /name/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # half the headers
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sockets.append(sock)
    try:
        opened = time.monotonic()
        # Held open by the server (at least the 100 with half a request), until their
        # header timeout: looked at before the lookups, which a loaded machine may slow
        # past that timeout.
        while open_sockets(pid) < baseline + 100:
            assert time.monotonic() - opened < HEADER_TIMEOUT, open_sockets(pid)
            time.sleep(0.05)
        lookup_answers(hostile_server)
        closed: set[socket.socket] = set()
        while len(closed) < len(sockets) and time.monotonic() - opened < HEADER_TIMEOUT + 5:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj  # type: ignore[assignment]
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed.add(sock)
                    selector.unregister(sock)
        waited = time.monotonic() - opened
        still_open = len(sockets) - len(closed)
        print(f"{still_open} of {len(sockets)} open after {waited:.1f} s")
        assert still_open == 0
        assert waited >= HEADER_TIMEOUT - 0.1
        lookup_answers(hostile_server)
        # The server's side of them is gone too.
        assert open_sockets(pid) <= baseline + 5
        print(
            f"server sockets {baseline} before, {open_sockets(pid)} after; "
            f"RSS {before} -> {rss_kib(pid)} KiB"
        )
    finally:
        for sock in sockets:
            sock.close()


def test_connection_limit_makes_room_for_lookups(hostile_server: ServerProcess) -> None:
    pid = server_pid(hostile_server)
    baseline = open_sockets(pid)
    sockets = [
        socket.create_connection(("127.0.0.1", hostile_server.port))
        for _ in range(MAX_CONNECTIONS * 2)
    ]
    try:
        time.sleep(0.3)
        assert open_sockets(pid) <= baseline + MAX_CONNECTIONS + 2
        for _ in range(5):
            lookup_answers(hostile_server)
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40, b"400", id="tls-hello"
        ),
        pytest.param(b"GARBAGE\r\n\r\n", b"400", id="no-http"),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
            b"400",
            id="huge-header",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400", id="bad-header"
        ),
        pytest.param(
            b'POST /name/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{"a":',
            b"400",
            id="bad-json",
        ),
        pytest.param(
            b"POST /name/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{}",
            b"400",
            id="body-too-large",
        ),
        pytest.param(
            b"POST /name/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"400",
            id="bad-chunk",
        ),
    ],
)
def test_malformed_requests_get_400_and_lookups_go_on(
    hostile_server: ServerProcess, request_bytes: bytes, status: bytes
) -> None:
    reply = exchange(hostile_server, request_bytes)
    assert reply.split(b" ", 2)[1] == status, reply[:200]
    lookup_answers(hostile_server)
