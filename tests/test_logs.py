"""The log (app/logs.py): the access lines AccessLog writes in batches, in process; and on
a real server, the line of an answer from the cache and of one from the routes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator

import httpx

from app.logs import (
    ACCESS_FLUSH_SECONDS,
    ACCESS_LOG,
    AccessLog,
    configure_logging,
    request_id,
)
from tests.conftest import unique_name
from tests.server import ServerProcess

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[(?P<id>[^]]+)\] uvicorn\.access: "
    r"(?P<message>.*)$"
)


class Writes(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def written(log: AccessLog, *, json_lines: bool = False, **line: object) -> str:
    stream = Writes()
    log.configure(stream, json_lines=json_lines)
    arguments: dict[str, object] = {
        "client": ("127.0.0.1", 5123),
        "method": "GET",
        "path": "/name/alice",
        "query": b"",
        "http_version": "1.1",
        "status": 200,
        **line,
    }
    token = request_id.set("abc-1")
    try:
        log.line(**arguments)  # type: ignore[arg-type]
    finally:
        request_id.reset(token)
    log.flush()
    return stream.getvalue()


def test_access_line_says_what_uvicorns_said_in_the_logs_format() -> None:
    text = written(AccessLog(), path="/name/ä b", query=b"x=1", status=404)
    found = TEXT_LINE.match(text.rstrip("\n"))
    assert found, text
    assert found["id"] == "abc-1"
    # uvicorn's words: client - "METHOD quoted-path?query HTTP/version" status
    assert found["message"] == '127.0.0.1:5123 - "GET /name/%C3%A4%20b?x=1 HTTP/1.1" 404'


def test_access_line_as_a_json_line() -> None:
    entry = json.loads(written(AccessLog(), json_lines=True))
    assert entry["level"] == "INFO"
    assert entry["logger"] == "uvicorn.access"
    assert entry["request_id"] == "abc-1"
    assert entry["message"] == '127.0.0.1:5123 - "GET /name/alice HTTP/1.1" 200'


def test_access_line_cuts_a_long_path() -> None:
    text = written(AccessLog(), path="/name/" + "a" * 60_000, status=400)
    assert len(text) < 400
    assert "(60006 chars)" in text


def test_access_lines_wait_for_the_timer_then_come_whole_in_atomic_writes() -> None:
    log = AccessLog()
    stream = Writes()
    log.configure(stream, json_lines=False)

    async def answer_many() -> None:
        for index in range(100):
            log.line(("127.0.0.1", 1), "GET", f"/name/n{index:03d}" + "x" * 60, b"", "1.1", 200)
        assert stream.getvalue() == ""  # in the buffer: no system call per line
        await asyncio.sleep(ACCESS_FLUSH_SECONDS * 3)

    asyncio.run(answer_many())
    lines = stream.getvalue().splitlines()
    assert [line.split('"GET /name/')[1][:4] for line in lines] == [
        f"n{index:03d}" for index in range(100)
    ]
    assert len(stream.writes) > 1
    assert all(len(chunk.encode()) <= 4096 and chunk.endswith("\n") for chunk in stream.writes)


@contextlib.contextmanager
def configured_log(level: str) -> Iterator[Writes]:
    """configure_logging at `level` (access log on) on a stream of the test's; the log's
    configuration put back afterwards."""
    stream = Writes()
    root = logging.getLogger()
    handlers, root_level, stderr = root.handlers[:], root.level, sys.stderr
    sys.stderr = stream
    try:
        configure_logging(level, access_log=True)
        yield stream
    finally:
        ACCESS_LOG.configure(None, json_lines=False)
        sys.stderr = stderr
        root.handlers[:] = handlers
        root.setLevel(root_level)


def test_access_lines_come_before_any_later_log_line() -> None:
    with configured_log("info") as stream:
        ACCESS_LOG.line(("127.0.0.1", 1), "GET", "/name/first", b"", "1.1", 200)
        logging.getLogger("app.tests").warning("second")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "/name/first" in lines[0] and lines[1].endswith("second")


def test_no_access_line_above_info() -> None:
    with configured_log("warning") as stream:
        ACCESS_LOG.line(("127.0.0.1", 1), "GET", "/name/x", b"", "1.1", 200)
        ACCESS_LOG.flush()
    assert stream.getvalue() == ""


def _access_lines(server: ServerProcess, path: str, count: int, timeout: float = 5.0) -> list[str]:
    """The server's access lines for `path`, once `count` are there (they wait in a
    buffer), or what is there after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            line
            for line in server.log_path.read_text(errors="replace").splitlines()
            if "uvicorn.access" in line and f"GET {path} " in line
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_server_writes_an_access_line_with_the_request_id_for_every_answer(
    server: ServerProcess,
) -> None:
    """One answer the routes give (a free name, not yet in the negative cache) and one the
    answer cache gives (the same name again): each has its line, with its request id."""
    path = f"/name/{unique_name('logged')}"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        answers = [
            http.get(path, headers={"X-Request-ID": f"logs-test-{index}"}) for index in range(2)
        ]
    assert [answer.status_code for answer in answers] == [404, 404]
    lines = _access_lines(server, path, 2)
    assert len(lines) == 2, server.log_tail()
    for index, line in enumerate(lines):
        assert f"[logs-test-{index}]" in line
        assert line.endswith(f'"GET {path} HTTP/1.1" 404')
