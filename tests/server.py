"""Run `jamins serve` as a real process on loopback, for tests that speak HTTP to it; or
the same application in this process, for tests of what the routes answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx

from app.main import create_app
from app.settings import Settings
from tests import warm

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """preexec_fn: the kernel SIGTERMs the child when the test process dies
    (PR_SET_PDEATHSIG), so a run killed outright leaves no server or node behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a container's init may not reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether `pid` ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.05)
    return False


class ServerProcess:
    """One `jamins serve` process with the given JAMINS_* environment: a fork of an
    interpreter that has imported the application (tests/warm.py), or with `cold=True` a
    fresh `python -m app serve`."""

    def __init__(
        self, *, data_dir: Path, env: dict[str, str] | None = None, cold: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.env = env or {}
        self.cold = cold
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | warm.WarmProcess | None = None
        self._log: BinaryIO | None = None
        self.log_path = data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("JAMINS_")}
        env.update(self.env)
        # An operator's .env in the repository (the compose steps put one there) is theirs.
        env.setdefault("JAMINS_ENV_FILE", "")
        env.setdefault("JAMINS_LOG_LEVEL", "info")
        # The tests' nodes mine a block per transaction and no other: waiting for blocks
        # on top of a registration would wait for ever. Tests of depth set it themselves.
        env.setdefault("JAMINS_CONFIRMATIONS", "0")
        # Every test client is 127.0.0.1: the per-client registration limit would throttle
        # the suite. tests/test_security.py tests it with a limit of its own.
        env.setdefault("JAMINS_REGISTER_RATE_PER_MINUTE", "0")
        argv = ["serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.cold or warm.cold_start():
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reaped)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", *argv],
                cwd=REPO_ROOT,
                env=env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        else:
            self.process = warm.start(argv, env=env, cwd=REPO_ROOT, log_path=self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reaped()
                raise RuntimeError(f"server exited at start:\n{self.log_tail()}")
            try:  # verify=False: see registration()
                if httpx.get(self.url + "/healthz", timeout=1, verify=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as an operator's service manager would; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self._reaped()
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self._reaped()

    def _reaped(self) -> None:
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def registration(self, name: str) -> dict[str, object]:
        # verify=False on these polls of a loopback server: else each httpx.get first
        # builds an SSL context from certifi's bundle, about 27 ms of CPU for a plain-HTTP
        # request, many times a second while a test waits.
        answer = httpx.get(f"{self.url}/registrations/{name}", timeout=10, verify=False)
        body: dict[str, object] = answer.json()
        return body

    def wait_settled(self, name: str, timeout: float = 30.0) -> dict[str, object]:
        """Poll /registrations/NAME until the registration is no longer pending."""
        return self._wait(name, lambda body: body.get("state") not in (None, "pending"), timeout)

    def wait_sent(self, name: str, timeout: float = 30.0) -> dict[str, object]:
        """Poll /registrations/NAME until its transaction has been sent."""
        return self._wait(name, lambda body: bool(body.get("tx")), timeout)

    def _wait(
        self, name: str, done: Callable[[dict[str, object]], bool], timeout: float
    ) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.registration(name)
            if done(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: {body} after {timeout} s")
            time.sleep(0.05)

    def wait_writer_running(self, timeout: float = 30.0) -> None:
        """Poll /metrics until the writer has done its first step. That step reconciles SQL
        with the chain: before it, a registration confirmed in blocks the node lost still
        shows as confirmed."""
        deadline = time.monotonic() + timeout
        running = 'jamins_tx_writer_state{state="running"} 1.0'
        while True:
            text = httpx.get(f"{self.url}/metrics", timeout=10, verify=False).text
            if running in text.splitlines():
                return
            if time.monotonic() > deadline:
                states = [line for line in text.splitlines() if "tx_writer_state{" in line]
                raise AssertionError(f"writer not running after {timeout} s: {states}")
            time.sleep(0.05)

    def registrar_address(self) -> str:
        return str(httpx.get(f"{self.url}/healthz", timeout=10, verify=False).json()["registrar"])


class InProcessApp:
    """`create_app(settings)` with its lifespan (engine, chain client, workers) running on
    an event loop in a thread of this process: no subprocess, no socket, so a table of
    request cases costs what the application does with them, not a server's start-up.

    `client()` is a plain `httpx.Client` whose requests are handed to the app over ASGI on
    that loop. What the HTTP server itself does (uvicorn's parsing, app.serving's
    connection bounds) is not in the way: those stay with ServerProcess."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="in-process-app", daemon=True
        )
        self._lifespan: contextlib.AbstractAsyncContextManager[Any] | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `coroutine` on the app's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        lifespan = self.app.router.lifespan_context(self.app)
        self.run(lifespan.__aenter__())
        self._lifespan = lifespan

    def stop(self) -> None:
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            self.run(lifespan.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> InProcessApp:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self, timeout: float = 30.0, *, stack_only: bool = False) -> httpx.Client:
        """A client of the app; `stack_only`: of the app without its hot path (what the
        FastAPI routes and middlewares answer, to compare with the hot path's answers)."""
        app = self.app.stack if stack_only else self.app
        return httpx.Client(
            transport=_LoopTransport(self, app), base_url="http://127.0.0.1", timeout=timeout
        )


class _LoopTransport(httpx.BaseTransport):
    """A synchronous transport that runs httpx's ASGI transport on the app's own loop (the
    lifespan's engine and workers live there: another loop may not touch them)."""

    def __init__(self, app: InProcessApp, asgi: Any) -> None:
        self._app = app
        self._asgi = httpx.ASGITransport(app=asgi, client=("127.0.0.1", 40000))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def exchange() -> tuple[int, httpx.Headers, bytes]:
            answer = await self._asgi.handle_async_request(request)
            return answer.status_code, answer.headers, await answer.aread()

        status, headers, content = self._app.run(exchange())
        return httpx.Response(status, headers=headers, content=content, request=request)


def wait_settled_through(http: httpx.Client, name: str, timeout: float = 30.0) -> dict[str, object]:
    """Poll /registrations/NAME through `http` (an InProcessApp's client or a server's)
    until the registration is no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, object] = http.get(f"/registrations/{name}").json()
        if body.get("state") not in (None, "pending"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: {body} after {timeout} s")
        time.sleep(0.05)
