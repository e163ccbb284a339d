"""Start `jamins` processes as forks of an interpreter that has imported the application.

A `python -m app serve` process spends about three CPU seconds importing web3, SQLAlchemy,
FastAPI and the rest before it does anything, and the suite starts about forty servers.
multiprocessing's fork server imports them once per test worker; each server is then a
fork of it: a process of its own (own PID, own signals, own exit code, stopped by PID),
which sets its environment, working directory and output as a subprocess would and runs
the same command line.

What only a fresh interpreter can show (the console script, an import that fails) stays
with the tests that start `python -m app` themselves (tests/test_startup.py), and
`JAMINS_TEST_COLD_START=1` makes every ServerProcess a fresh interpreter again.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# What `jamins serve` imports on its way to the first request, imported once in the fork
# server (not in the test process: its forks inherit nothing of it).
_PRELOAD = ["app.cli", "app.main", "app.provision", "app.serving", "app.workers.leader"]

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(_PRELOAD)


def cold_start() -> bool:
    return os.environ.get("JAMINS_TEST_COLD_START", "") not in ("", "0")


def _run_command(argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> None:
    """In the fork: become `jamins ARGV` run with `env` in `cwd`, its output in `log_path`."""
    import ctypes
    from multiprocessing import forkserver

    # A fork keeps the write end of the pipe whose closing tells the fork server that the
    # test process has gone: closed here, so the fork server ends with the test process.
    alive = forkserver._forkserver._forkserver_alive_fd  # type: ignore[attr-defined]
    if alive is not None:
        os.close(alive)
        forkserver._forkserver._forkserver_alive_fd = None  # type: ignore[attr-defined]
    # The kernel SIGTERMs this process when its parent (the fork server) dies, which it does
    # when the test process does: a run killed outright leaves no server behind.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    # Daemonic in the test process (ended with it), but a server may start worker processes.
    multiprocessing.current_process().daemon = False
    # multiprocessing gave the fork a closed stdin that is not descriptor 0; `--workers N`
    # hands descriptor sys.stdin.fileno() on to its workers, as it would a subprocess's.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own stdin)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [sys.executable, "-m", "app", *argv]

    from app.cli import cli

    try:
        cli(args=argv, prog_name="jamins")
    finally:
        # multiprocessing ends its processes with os._exit: what a process ending normally
        # runs at exit (the access log's last lines) runs here.
        atexit._run_exitfuncs()


class WarmProcess:
    """A started fork, with the part of subprocess.Popen's interface the tests use."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        assert process.pid is not None
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(["jamins"], timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path) -> WarmProcess:
    """`jamins ARGV` as a fork of the fork server, its stdout and stderr appended to
    `log_path`."""
    process = _CONTEXT.Process(
        target=_run_command,
        args=(list(argv), dict(env), str(cwd), str(log_path)),
        name="jamins " + " ".join(argv[:1]),
        # Not joined at the test process's exit (a leaked server would hang it): terminated.
        daemon=True,
    )
    process.start()
    return WarmProcess(process)
