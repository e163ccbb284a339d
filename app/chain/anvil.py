"""A local anvil node: finding the binary, running it, and anvil-only JSON-RPC helpers.

Used by the server's embedded default mode and by the tests. Talks plain HTTP JSON-RPC so
that it works before (and without) a web3 client.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[2]
_LOG_TAIL_BYTES = 4000
_PR_SET_PDEATHSIG = 1
# The node is always local: never route its requests through an http_proxy from the env.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AnvilNotFound(RuntimeError):
    """No anvil binary could be located."""


class AnvilStartError(RuntimeError):
    """anvil was spawned but did not come up (or exited)."""


class AnvilRPCError(RuntimeError):
    """anvil answered a JSON-RPC request with an error."""


def find_anvil(explicit: str | None = None) -> str:
    """Return the path of an anvil binary.

    Looks at `explicit` (must exist), then `anvil` on PATH, then the npm-installed binary
    (`node_modules/@foundry-rs/anvil-<os>-*/bin/anvil`) under the working directory, its
    parents, and the repository this module lives in.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise AnvilNotFound(f"anvil binary {explicit!r} does not exist or is not executable")
        return str(path)

    on_path = shutil.which("anvil")
    if on_path is not None:
        return on_path

    os_name = "darwin" if sys.platform == "darwin" else "linux"
    cwd = Path.cwd().resolve()
    for root in [cwd, *cwd.parents, _REPO_ROOT]:
        scope = root / "node_modules" / "@foundry-rs"
        for candidate in sorted(scope.glob(f"anvil-{os_name}-*/bin/anvil")):
            if os.access(candidate, os.X_OK):
                return str(candidate)

    raise AnvilNotFound(
        "anvil not found: run `npm ci` in the jamins repository (it installs "
        "@foundry-rs/anvil into node_modules) or set JAMINS_ANVIL_PATH to an anvil binary"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn that makes the kernel SIGTERM the child when its parent goes away."""

    def preexec() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 10.0) -> Any:
    """Send one JSON-RPC request and return its `result`; raises AnvilRPCError on an error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with _OPENER.open(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise AnvilRPCError(f"{method}: {reply['error']}")
    return reply.get("result")


def fund(url: str, address: str, wei: int) -> None:
    """Set the balance of `address` to `wei` on the anvil node at `url` (anvil_setBalance)."""
    rpc(url, "anvil_setBalance", [address, hex(wei)])


class AnvilNode:
    """One anvil process listening on 127.0.0.1.

    With `state_file`, anvil loads the chain from it at start and dumps it there when
    stopped with SIGTERM (and every `state_interval` seconds); `kill()` skips the dump.
    The dump keeps accounts, code, storage, blocks, receipts and logs (so the block number
    carries on), but reads *at* an older block fail after a restart unless
    `preserve_historical_states` is set.

    Unless historical states are preserved, anvil keeps only the last `keep_states` block
    states, in memory: otherwise it spills every older state to ~/.foundry/anvil/tmp, which
    grows by the size of the whole state at each block (tens of GB seen in a benchmark) and
    is left behind when the process is killed.
    """

    def __init__(
        self,
        *,
        binary: str,
        state_file: Path | None = None,
        chain_id: int = 1551,
        block_time: float | None = None,
        gas_limit: int = 4_700_000,
        hardfork: str = "constantinople",
        host: str = "127.0.0.1",
        port: int | None = None,
        state_interval: int | None = None,
        log_file: Path | None = None,
        accounts: int = 10,
        preserve_historical_states: bool = False,
        keep_states: int = 256,
    ) -> None:
        if host != "127.0.0.1":
            # The node holds funded dev keys and unauthenticated admin methods.
            raise ValueError("anvil must only listen on 127.0.0.1")
        self.binary = binary
        self.state_file = state_file
        self.chain_id = chain_id
        self.block_time = block_time
        self.gas_limit = gas_limit
        self.hardfork = hardfork
        self.host = host
        self.port = port
        self.state_interval = state_interval
        self.log_file = log_file
        self.accounts = accounts
        self.preserve_historical_states = preserve_historical_states
        self.keep_states = keep_states
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr_path: Path | None = None
        self._open_files: list[IO[bytes]] = []

    @property
    def pid(self) -> int | None:
        """The process id while anvil runs (None before start and after stop/kill)."""
        return self._process.pid if self._process is not None else None

    def _command(self, port: int) -> list[str]:
        command = [
            self.binary,
            "--host", self.host,
            "--port", str(port),
            "--chain-id", str(self.chain_id),
            "--hardfork", self.hardfork,
            "--gas-limit", str(self.gas_limit),
            "--accounts", str(self.accounts),
        ]  # fmt: skip
        if self.block_time is not None:
            command += ["--block-time", str(self.block_time)]
        if self.state_file is not None:
            command += ["--state", str(self.state_file)]
            if self.state_interval is not None:
                command += ["--state-interval", str(self.state_interval)]
            if self.preserve_historical_states:
                command.append("--preserve-historical-states")
        if not (self.state_file is not None and self.preserve_historical_states):
            command += ["--prune-history", str(self.keep_states)]
        return command

    def start(self, timeout: float = 30.0) -> None:
        """Spawn anvil and return once it answers eth_chainId; raises AnvilStartError."""
        if self._process is not None:
            raise AnvilStartError("anvil is already running")
        # A port picked by us can be taken by someone else before anvil binds it: retry.
        attempts = 3 if self.port is None else 1
        for attempt in range(1, attempts + 1):
            port = self.port if self.port is not None else _free_port(self.host)
            try:
                self._spawn_and_wait(port, timeout)
            except AnvilStartError:
                in_use = "Address already in use" in self._log_tail()
                self._reap(signal.SIGKILL, timeout=5.0)
                if attempt == attempts or not in_use:
                    raise
                continue
            except BaseException:
                self._reap(signal.SIGKILL, timeout=5.0)
                raise
            self.port = port
            return

    def _spawn_and_wait(self, port: int, timeout: float) -> None:
        stdout: IO[bytes] | int
        if self.log_file is not None:
            log = self.log_file.open("ab")
            self._open_files.append(log)
            stdout, stderr = log, log
        else:
            # Keep stderr (errors only, small) so a failed start can say why.
            stdout = subprocess.DEVNULL
            fd, name = tempfile.mkstemp(prefix="anvil-", suffix=".err")
            self._stderr_path = Path(name)
            stderr = os.fdopen(fd, "wb")
            self._open_files.append(stderr)

        # PDEATHSIG fires when the spawning *thread* exits: start anvil from a long-lived thread.
        preexec = _die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None
        self.url = f"http://{self.host}:{port}"
        self._process = subprocess.Popen(
            self._command(port),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=False,
            preexec_fn=preexec,
        )
        logger.info("started anvil pid %s on %s", self._process.pid, self.url)

        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise AnvilStartError(f"anvil exited with code {code}:\n{self._log_tail()}")
            try:
                answered = int(rpc(self.url, "eth_chainId", timeout=1.0), 16)
            except (OSError, ValueError, AnvilRPCError):
                answered = None
            if answered is not None:
                if answered != self.chain_id:
                    raise AnvilStartError(f"anvil answers chain id {answered}, not {self.chain_id}")
                return
            if time.monotonic() > deadline:
                raise AnvilStartError(
                    f"anvil did not answer on {self.url} within {timeout}s:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self) -> str:
        path = self.log_file if self.log_file is not None else self._stderr_path
        if path is None or not path.exists():
            return "(no log)"
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - _LOG_TAIL_BYTES))
            return log.read().decode("utf-8", "replace")

    def _reap(self, sig: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    logger.warning("anvil pid %s ignored %s, killing it", process.pid, sig.name)
                    process.kill()
                    process.wait()
            logger.info("anvil pid %s exited with code %s", process.pid, process.returncode)
            self._process = None
        for handle in self._open_files:
            handle.close()
        self._open_files.clear()
        if self._stderr_path is not None:
            self._stderr_path.unlink(missing_ok=True)
            self._stderr_path = None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM anvil (it dumps --state on the way out), SIGKILL after `timeout`; idempotent."""
        self._reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL anvil at once: no state dump, like a crash."""
        self._reap(signal.SIGKILL, timeout=10.0)

    def __enter__(self) -> AnvilNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
