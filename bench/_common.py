"""What the benchmarks share: the machine, the processes they start, wrk, CPU accounting.

Every benchmark starts its own anvil node, database and jamins server on 127.0.0.1 and
stops them in `finally` (SIGTERM is turned into KeyboardInterrupt so that a `kill` cleans
up as Ctrl-C does).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from app.chain.anvil import AnvilNode, find_anvil  # noqa: E402
from tests.server import ServerProcess, free_port  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The jamins signer: anvil's first default dev account (a public test key, funded by anvil).
SIGNER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
# "Another party" writing names directly (DirectWriter); funded with fund_other().
OTHER_KEY = "0x" + "be" * 32


def fund_other(node_url: str) -> None:
    """Give OTHER_KEY's account ether on the benchmark's anvil node."""
    from eth_account import Account

    from app.chain.anvil import fund

    fund(node_url, Account.from_key(OTHER_KEY).address, 10**24)


def sigterm_as_interrupt() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every `finally` stops what it started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def machine() -> dict[str, Any]:
    """The machine a figure was measured on, for BENCHMARKS.md."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem_kib = int(match.group(1)) if match else 0
    wrk = shutil.which("wrk")
    wrk_version = None
    if wrk:
        probe = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        wrk_version = (probe.stdout + probe.stderr).split("[")[0].strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    # Set when the benchmarks run on an exported tree (git archive) of that commit.
    if os.environ.get("BENCH_APP_COMMIT"):
        return os.environ["BENCH_APP_COMMIT"]
    probe = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "app"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    return probe.stdout.strip() + ("+app-changes" if dirty.stdout.strip() else "")


def command_line() -> str:
    """The command that produced a result file, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO_ROOT)
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


def write_json(name: str, document: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


# -- processes -----------------------------------------------------------------------------


def can_plot() -> bool:
    """Whether matplotlib is installed (`make bench` installs it; a smoke run may lack it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no figure (pip install -e '.[bench]')", flush=True)
        return False
    return True


def save_figure(figure: Any, path: Path, title: str) -> None:
    """Title, lay out, write and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def start_anvil(
    stack: contextlib.ExitStack, *, prune_history: bool = False, **options: Any
) -> AnvilNode:
    """An anvil node (Jami chain id, fork rules and 4.7M gas limit unless told otherwise).

    AnvilNode keeps only recent block states in memory (--prune-history): a default anvil
    writes every older state to ~/.foundry/anvil/tmp, the whole state each time (a
    10k-name chain wrote 29 GB there in 8 minutes). `prune_history` keeps even fewer."""
    if prune_history:
        options.setdefault("keep_states", 64)
    node = AnvilNode(binary=find_anvil(), **options)
    stack.callback(node.stop)
    node.start()
    return node


def start_database(stack: contextlib.ExitStack, kind: str, workdir: Path) -> str:
    """A fresh empty database: an SQLite file in `workdir`, or a throwaway PostgreSQL."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'jamins.sqlite3'}"
    if kind == "postgresql":
        from tests.pg import PostgresServer

        server = PostgresServer()
        stack.callback(server.stop)
        server.start()
        return server.create_database("jamins_bench")
    raise ValueError(f"unknown database {kind!r}")


def jamins_env(rpc_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """The JAMINS_* environment of a benchmarked server (or `jamins index`)."""
    env = {
        "JAMINS_RPC_URL": rpc_url,
        "JAMINS_DATABASE_URL": database_url,
        "JAMINS_DEPLOY": "true",
        "JAMINS_SIGNER_KEY": SIGNER_KEY,
        "JAMINS_CONFIRMATIONS": "0",
        "JAMINS_LOG_LEVEL": "warning",
        "JAMINS_WORKERS": "1",
    }
    env.update(extra)
    return env


def start_server(stack: contextlib.ExitStack, data_dir: Path, env: dict[str, str]) -> ServerProcess:
    """`python -m app serve` on a free loopback port (tests/server.py's ServerProcess).

    A fresh interpreter, as an operator runs it: not the tests' fork of a warm one, whose
    heap (and garbage collector's work) differs, and which would import the benchmark's
    script again in the fork."""
    server = ServerProcess(data_dir=data_dir, env=env, cold=True)
    stack.callback(server.stop)
    server.start(timeout=120)
    return server


def workdir(stack: contextlib.ExitStack, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path


# -- CPU and memory of a process tree ------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a server that forks workers is measured whole)."""
    tree = [pid]
    index = 0
    while index < len(tree):
        tree += _children(tree[index])
        index += 1
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` and its live descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident memory (VmRSS) of `pid` and its descendants, in KiB."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{member}/status").read_text())
            total += int(match.group(1)) if match else 0
    return total


# -- wrk -----------------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- Cycles over the request paths in the file named by $BENCH_PATHS, each thread from its
-- own offset, and prints the figures as one JSON line when done.
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local index = 0
local thread_count = 0

setup = function(thread)
  thread:set("offset", thread_count * 7919)
  thread_count = thread_count + 1
end

init = function(args)
  index = (offset or 0) % #paths
end

request = function()
  index = index + 1
  if index > #paths then index = 1 end
  return wrk.format("GET", paths[index])
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, '
    .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "status_errors": %d, '
    .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, errors.status, errors.connect, errors.read, errors.write, errors.timeout))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    non_2xx: int
    socket_errors: int
    wrk_cpu: float  # share of one core used by wrk over the run
    server_cpu: float  # share of one core used by the server's process tree

    def as_dict(self) -> dict[str, Any]:
        return {key: round(value, 3) if isinstance(value, float) else value
                for key, value in self.__dict__.items()}  # fmt: skip


class Wrk:
    """Runs wrk against one base URL with a path file; a second process on loopback."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("wrk")
        if binary is None:
            raise RuntimeError("wrk is not installed: apt-get install wrk")
        self.binary = binary
        self.directory = directory
        self.script = directory / "cycle.lua"
        self.script.write_text(WRK_SCRIPT)

    def path_file(self, label: str, paths: list[str]) -> Path:
        path = self.directory / f"{label}.paths"
        path.write_text("\n".join(paths) + "\n")
        return path

    def command(
        self, base_url: str, *, connections: int, seconds: float, threads: int = 1
    ) -> list[str]:
        return [
            self.binary,
            "-t", str(min(threads, connections)),
            "-c", str(connections),
            "-d", f"{max(1, round(seconds))}s",
            "--timeout", "10s",
            "--latency",
            "-s", str(self.script),
            base_url,
        ]  # fmt: skip

    def env(self, paths: Path) -> dict[str, str]:
        return {**os.environ, "BENCH_PATHS": str(paths)}

    def run(
        self,
        base_url: str,
        paths: Path,
        *,
        connections: int,
        seconds: float,
        threads: int = 1,
        server_pid: int | None = None,
    ) -> WrkResult:
        command = self.command(base_url, connections=connections, seconds=seconds, threads=threads)
        output = self.directory / "wrk.out"
        server_before = cpu_seconds(server_pid) if server_pid else 0.0
        started = time.monotonic()
        with open(output, "wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=self.env(paths)
            )
            try:
                # wait4 gives wrk's own CPU use (its rusage) without racing its exit.
                _, status, usage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
            except BaseException:
                process.kill()
                process.wait()
                raise
        elapsed = time.monotonic() - started
        server_cpu = (cpu_seconds(server_pid) - server_before) / elapsed if server_pid else 0.0
        text = output.read_text(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"wrk failed ({process.returncode}):\n{text[-2000:]}")
        return parse_wrk(
            text,
            wrk_cpu=(usage.ru_utime + usage.ru_stime) / elapsed,
            server_cpu=server_cpu,
        )


def parse_wrk(text: str, *, wrk_cpu: float = 0.0, server_cpu: float = 0.0) -> WrkResult:
    """The figures the Lua `done` hook printed."""
    if "BENCH " not in text:
        raise RuntimeError(f"no figures in wrk's output:\n{text[-2000:]}")
    figures = json.loads(text.split("BENCH ", 1)[1].splitlines()[0])
    duration = figures["duration_us"] / 1e6
    return WrkResult(
        requests=figures["requests"],
        seconds=duration,
        rps=figures["requests"] / duration,
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        mean_ms=figures["mean_us"] / 1000,
        non_2xx=figures["status_errors"],
        socket_errors=sum(
            figures[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        wrk_cpu=wrk_cpu,
        server_cpu=server_cpu,
    )


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Return once `url` answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s")
        time.sleep(0.1)


__all__ = [
    "OTHER_KEY",
    "REPO_ROOT",
    "RESULTS_DIR",
    "SIGNER_KEY",
    "ServerProcess",
    "Wrk",
    "WrkResult",
    "can_plot",
    "command_line",
    "cpu_seconds",
    "free_port",
    "fund_other",
    "jamins_env",
    "machine",
    "parse_wrk",
    "process_tree",
    "rss_kib",
    "sigterm_as_interrupt",
    "start_anvil",
    "start_database",
    "start_server",
    "wait_http",
    "workdir",
    "write_json",
]
