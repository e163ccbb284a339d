"""Run a `jamins` command in this process, isolated as the suite's subprocesses were.

A `python -m app ...` subprocess spends two to three CPU seconds importing web3, SQLAlchemy
and FastAPI before it does anything; this process has imported them already. Tests whose
subject is what a command does (its exit code, its lines, what it writes) run it here;
each command keeps at least one real-process test as the layer above (the console script,
the interpreter's exit code, the one line an operator sees).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn
from unittest import mock

import uvicorn
from typer.testing import CliRunner

from app.cli import cli
from app.logs import ACCESS_LOG

# The only JAMINS_* variables of this process a command still sees: where the tools are
# (the subprocesses found anvil on their PATH or through these).
_KEPT = ("JAMINS_ANVIL_PATH", "JAMINS_GETH_PATH")


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: as subprocess.CompletedProcess has it."""

    returncode: int
    stdout: str
    stderr: str


class ServedInProcess(AssertionError):
    """`jamins serve` got past every start-up check in this process: a test that expected
    a refusal got none (a server is never started in the test process)."""


def _no_server(*args: object, **kwargs: object) -> NoReturn:
    raise ServedInProcess("jamins serve passed its start-up checks and would serve")


@contextlib.contextmanager
def _command_environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ as a subprocess given `env` would see it (no JAMINS_* of this process,
    no .env), restored afterwards whatever the command set (`serve` sets some)."""
    saved = dict(os.environ)
    for key in [key for key in os.environ if key.startswith("JAMINS_") and key not in _KEPT]:
        del os.environ[key]
    os.environ["JAMINS_ENV_FILE"] = ""
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Commands configure logging for a process of their own (a handler on the stream
    that is stderr during the call): put pytest's handlers and the levels back, and the
    access log off (as it is in the tests' own process)."""
    root = logging.getLogger()
    web3 = logging.getLogger("web3")
    handlers, level, web3_level = root.handlers[:], root.level, web3.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        web3.setLevel(web3_level)
        ACCESS_LOG.configure(None, json_lines=False)


def run_jamins(*args: str, env: Mapping[str, str] | None = None, stdin: str = "") -> CommandResult:
    """`jamins ARGS` with `env` as its only JAMINS_* settings and `stdin` as its input.

    An exception the command does not turn into an exit code (what would be a traceback
    on the operator's terminal) is raised here, so the test fails on it."""
    runner = CliRunner()
    with (
        _command_environment(env or {}),
        _logging_restored(),
        mock.patch.object(uvicorn, "run", _no_server),
    ):
        result = runner.invoke(cli, list(args), input=stdin, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CommandResult(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)
