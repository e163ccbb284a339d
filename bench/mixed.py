"""Traffic as it comes: a mixed workload over 100k names, with the access log on and off.

The requests (wrk on loopback, 32 connections by default):
  94%  GET /name/NAME, Zipf-distributed over the 100k names (popular contacts asked often,
       most names rarely; exponent --zipf, 1.1 by default)
   5%  availability checks of free names (what a client asks while its user types a
       name to register): Zipf over a million free names, so most are asked once
   1%  GET /addr/ID over 2,000 proven bindings (bench/lookups.py's cached RSA-2048 keys)
and a trickle of real RSA-4096 registrations POSTed alongside (--registrations-per-minute,
6 by default: under the default per-client limit of 10, as every POST comes from one
address).

The server runs with its defaults (the access log on), then again with JAMINS_ACCESS_LOG
off, each on a fresh process over the same database (--repeats alternates them to spread
the machine's drift). Reported per run: requests/s, p50/p99, the registrations'
acknowledgement times, and how lookups were answered, read from /metrics before and after
(jamins_cache_lookups_total: each label's share; see BENCHMARKS.md for what each means).

    .venv/bin/python bench/mixed.py                  # SQLite
    .venv/bin/python bench/mixed.py --db postgresql
    .venv/bin/python bench/mixed.py --quick          # a smoke run

Writes bench/results/mixed*.json.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import random
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import _common
import httpx
from _common import Wrk
from lookups import (
    NEGATIVE_CACHE_SECONDS,
    PROVEN_NAMES,
    cache_counts,
    load_names,
    mixed_case,
    proven_rows,
)
from registrations import percentile, registration

REQUESTS_IN_FILE = 400_000  # drawn once; wrk cycles through them
FREE_NAMES = 1_000_000
SHARE_FREE = 0.05
SHARE_ADDR = 0.01


class Zipf:
    """Ranks 0..n-1 drawn with probability proportional to 1 / (rank + 1) ** exponent."""

    def __init__(self, n: int, exponent: float) -> None:
        total = 0.0
        self.cumulative: list[float] = []
        for rank in range(n):
            total += 1.0 / (rank + 1) ** exponent
            self.cumulative.append(total)

    def draw(self, rng: random.Random) -> int:
        return bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1])


def request_paths(
    names: list[str], addrs: list[str], count: int, exponent: float, seed: int
) -> tuple[list[str], dict[str, int]]:
    """The workload's GETs, in order, and how many of each kind."""
    rng = random.Random(seed)
    # Popularity is not alphabetical: rank r is a random name.
    by_rank = names[:]
    rng.shuffle(by_rank)
    name_zipf, free_zipf, addr_zipf = (
        Zipf(len(by_rank), exponent),
        Zipf(FREE_NAMES, exponent),
        Zipf(len(addrs), exponent),
    )
    paths: list[str] = []
    kinds = {"name": 0, "free": 0, "addr": 0}
    for _ in range(count):
        draw = rng.random()
        if draw < SHARE_ADDR:
            paths.append(f"/addr/{addrs[addr_zipf.draw(rng)]}")
            kinds["addr"] += 1
        elif draw < SHARE_ADDR + SHARE_FREE:
            paths.append(f"/name/free{free_zipf.draw(rng):07d}")
            kinds["free"] += 1
        else:
            paths.append(f"/name/{mixed_case(by_rank[name_zipf.draw(rng)], rng)}")
            kinds["name"] += 1
    return paths, kinds


class Trickle:
    """POSTs registrations at a steady rate in a thread; each acknowledgement time in ms."""

    def __init__(self, base_url: str, bodies: list[tuple[str, dict[str, str]]], per_minute: float):
        self.base_url = base_url
        self.bodies = bodies
        self.interval = 60.0 / per_minute if per_minute > 0 else None
        self.acks_ms: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickle:
        if self.interval is not None and self.bodies:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)

    def _run(self) -> None:
        assert self.interval is not None
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            for name, body in self.bodies:
                if self._stop.wait(self.interval):
                    return
                started = time.perf_counter()
                status = client.post(f"/name/{name}", json=body).status_code
                self.acks_ms.append((time.perf_counter() - started) * 1000)
                self.statuses.append(status)


def layer_shares(counts: dict[str, int]) -> dict[str, float]:
    """Each jamins_cache_lookups label's share of the lookups counted."""
    total = sum(counts.values())
    return {key: round(value / total, 4) for key, value in sorted(counts.items()) if total}


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "mixed",
        "command": _common.command_line(),
        "machine": _common.machine(),
        "database": args.db,
        "names": args.names,
        "zipf_exponent": args.zipf,
        "connections": args.connections,
        "seconds_per_run": args.seconds,
        "warmup_seconds": args.warmup,
        "registrations_per_minute": args.registrations_per_minute,
        "server_settings": "defaults (log level info), "
        f"JAMINS_NEGATIVE_CACHE_SECONDS={NEGATIVE_CACHE_SECONDS} (a free name asked twice "
        "within a run is answered by the negative cache)",
        "runs": [],
    }
    runs = list(itertools.islice(itertools.cycle([True, False]), 2 * args.repeats))
    per_run = max(1, round(args.registrations_per_minute * args.seconds / 60) + 1)
    reg_names = [f"mixed-{index:04d}" for index in range(per_run * len(runs))]
    if args.registrations_per_minute > 0:
        print(f"making {len(reg_names)} RSA-4096 accounts...", flush=True)
        with ProcessPoolExecutor(max_workers=2) as pool:
            reg_bodies = list(zip(reg_names, pool.map(registration, reg_names), strict=True))
    else:
        reg_bodies = []
    with contextlib.ExitStack() as stack:
        work = _common.workdir(stack, "jamins-bench-mixed-")
        node = _common.start_anvil(stack, block_time=5)
        database_url = _common.start_database(stack, args.db, work)
        proven = proven_rows(args.proven)
        pairs = load_names(database_url, args.names, args.seed, proven)
        paths, kinds = request_paths(
            [name for name, _ in pairs],
            [row["addr"] for row in proven],
            args.requests,
            args.zipf,
            args.seed,
        )
        results["requests_in_file"] = kinds
        wrk = Wrk(work)
        path_file = wrk.path_file("mixed", paths)
        for index, access_log in enumerate(runs):
            server = _common.start_server(
                stack,
                work / f"server-{index}",
                _common.jamins_env(
                    node.url,
                    database_url,
                    JAMINS_LOG_LEVEL="info",
                    JAMINS_ACCESS_LOG="true" if access_log else "false",
                    JAMINS_NEGATIVE_CACHE_SECONDS=str(NEGATIVE_CACHE_SECONDS),
                ),
            )
            assert server.process is not None
            wrk.run(server.url, path_file, connections=args.connections, seconds=args.warmup)
            before = cache_counts(server.url)
            mine = reg_bodies[index * per_run : (index + 1) * per_run]
            with Trickle(server.url, mine, args.registrations_per_minute) as trickle:
                result = wrk.run(
                    server.url,
                    path_file,
                    connections=args.connections,
                    seconds=args.seconds,
                    server_pid=server.process.pid,
                )
            after = cache_counts(server.url)
            log_bytes = server.log_path.stat().st_size
            server.stop()
            counts = {
                key: int(after.get(key, 0) - before.get(key, 0))
                for key in after
                if after.get(key, 0) != before.get(key, 0)
            }
            entry: dict[str, Any] = {
                "access_log": access_log,
                **result.as_dict(),
                "lookups": counts,
                "layer_shares": layer_shares(counts),
                "server_log_bytes": log_bytes,
                "registrations": {
                    "posted": len(trickle.acks_ms),
                    "statuses": {
                        str(status): trickle.statuses.count(status)
                        for status in sorted(set(trickle.statuses))
                    },
                    "ack_p50_ms": round(percentile(trickle.acks_ms, 0.5), 1)
                    if trickle.acks_ms
                    else None,
                    "ack_max_ms": round(max(trickle.acks_ms), 1) if trickle.acks_ms else None,
                },
            }
            results["runs"].append(entry)
            print(
                f"access log {'on ' if access_log else 'off'}: {result.rps:,.0f} req/s, "
                f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                f"server cpu {result.server_cpu:.0%}; "
                + ", ".join(f"{key} {share:.1%}" for key, share in entry["layer_shares"].items())
                + f"; {len(trickle.acks_ms)} registrations",
                flush=True,
            )
    on = [run["rps"] for run in results["runs"] if run["access_log"]]
    off = [run["rps"] for run in results["runs"] if not run["access_log"]]
    if on and off:
        results["access_log_cost"] = round(1 - (sum(on) / len(on)) / (sum(off) / len(off)), 3)
        print(
            f"the access log costs {results['access_log_cost']:.1%} of the throughput "
            "(mean of the runs with it on against those without)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="per measured run")
    parser.add_argument("--warmup", type=float, default=5.0, help="before each run")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (log on, off)")
    parser.add_argument("--registrations-per-minute", type=float, default=6.0)
    parser.add_argument("--requests", type=int, default=REQUESTS_IN_FILE)
    parser.add_argument("--proven", type=int, default=PROVEN_NAMES)
    parser.add_argument("--quick", action="store_true", help="smoke run: small and short")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    if args.quick:
        args.names, args.seconds, args.warmup, args.repeats = 2000, 3.0, 1.0, 1
        args.requests, args.proven, args.registrations_per_minute = 20_000, 100, 30.0
    _common.sigterm_as_interrupt()
    results = run(args)
    suffix = ("" if args.db == "sqlite" else f"-{args.db}") + ("-quick" if args.quick else "")
    json_path = _common.write_json(f"mixed{suffix}.json", results)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
