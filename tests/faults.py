"""Helpers for the fault, race and abuse tests (not a test module): reading the registrar
directly, finding the embedded node of a server, and bounded load from threads."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from eth_utils.crypto import keccak

from app.chain.anvil import rpc
from app.names import to_bytes32
from tests.jami_keys import JamiAccount, make_account

_ADDR = keccak(text="addr(bytes32)")[:4]


def chain_addr(url: str, contract: str, name: str) -> str:
    """The Jami ID the registrar at `contract` binds to `name` (40 hex, zeros when none)."""
    data = "0x" + (_ADDR + to_bytes32(name)).hex()
    result: str = rpc(url, "eth_call", [{"to": contract, "data": data}, "latest"])
    return result[-40:]


def nonce_count(url: str, address: str) -> int:
    return int(rpc(url, "eth_getTransactionCount", [address, "latest"]), 16)


@functools.cache
def _quick_account(index: int) -> JamiAccount:
    return make_account(2048)


def quick_account(index: int) -> JamiAccount:
    """The account number `index` of quick_accounts (thread-safe)."""
    return _quick_account(index)


def quick_accounts(n: int, offset: int = 0) -> list[JamiAccount]:
    """RSA-2048 accounts (the smallest size the server admits, 13 times faster to make than
    RSA-4096), cached per process; no fixture hands these out, so they are unnamed on
    the shared servers until a test of ours names them. Disjoint ranges per test."""
    return [_quick_account(index) for index in range(offset, offset + n)]


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def embedded_node_pid(server_pid: int, data_dir: Path) -> int:
    """The anvil process a server on the embedded default started."""
    for child in children_of(server_pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if str(data_dir).encode() in cmdline and b"anvil" in cmdline:
            return child
    raise AssertionError(f"no anvil child of {server_pid} for {data_dir}")


def embedded_node_url(node_pid: int) -> str:
    args = Path(f"/proc/{node_pid}/cmdline").read_bytes().split(b"\0")
    port = args[args.index(b"--port") + 1].decode()
    return f"http://127.0.0.1:{port}"


def sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


@dataclass
class LoadResult:
    """Statuses seen per (phase, kind); a request that straddled a phase change is dropped."""

    counts: Counter[tuple[str, str, int | str]] = field(default_factory=Counter)

    def statuses(self, phase: str, kind: str) -> Counter[int | str]:
        return Counter(
            {status: n for (p, k, status), n in self.counts.items() if p == phase and k == kind}
        )


class Load:
    """Threads that each call `request(client, i) -> (kind, status)` until stopped, at most
    `max_requests` times each, recording the statuses under the current phase."""

    def __init__(
        self,
        base_url: str,
        request: Callable[[httpx.Client, int], tuple[str, int | str]],
        *,
        threads: int = 2,
        max_requests: int = 2_000,
        pause: float = 0.02,
    ) -> None:
        self.base_url = base_url
        self.request = request
        self.phase = "before"
        self.result = LoadResult()
        self.max_requests = max_requests
        self.pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True)
            for index in range(threads)
        ]

    def _run(self, thread_index: int) -> None:
        # A generous client timeout: the server must answer on its own (request timeout).
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            for i in range(self.max_requests):
                if self._stop.is_set():
                    return
                phase = self.phase
                try:
                    kind, status = self.request(client, thread_index * self.max_requests + i)
                except httpx.TimeoutException:
                    kind, status = "timeout", "timeout"
                if self.phase == phase:
                    with self._lock:
                        self.result.counts[phase, kind, status] += 1
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive(), "a load thread hung"

    def run_phase(self, phase: str, seconds: float) -> None:
        self.phase = phase
        time.sleep(seconds)
