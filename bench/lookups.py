"""Lookups: every kind of GET /name and GET /addr with 100k names in the database, against
the stack's ceiling measured in the same run, at 1, 8, 32 and 128 connections, from wrk on
loopback.

The ceiling is a raw ASGI app on the same uvicorn options answering the same bytes
(bench/ceiling_app.py --kind raw); a bare FastAPI route is a second reference (`fastapi`).
Every ratio is to the raw ceiling. The server runs with its defaults (access log on).

Targets:
  one_name   one name asked again and again (the answer cache)
  hot_200    200 names cycled (an answer cache that holds them all)
  hit_hot    1,000 names cycled (the answer cache)
  miss       200 free names, asked once before (the negative cache)
  hit        every request a different name of the 100k (the SQL path)
  addr       addresses with a proven binding (the SQL path, proof checks included); see below
  miss_cold  every request a free name never asked (SQL, then the chain)
  addr_cold  every request an address no name has, never asked (SQL, then the chain)
The rotating targets (hit, addr, the cold ones) start each run where the last one stopped,
so no name comes twice in the whole benchmark unless it wraps (noted in the results).

A reverse lookup answers from SQL only for a row that proves its binding (its stored key is
the address's and signs the name), so `addr` needs real key material: 2,000 RSA-2048
accounts (made once, kept in ~/.cache/jamins-bench/; RSA-4096 would take an hour to make),
asked over and over against a second server on the same database with the answer cache
off (JAMINS_LOOKUP_CACHE_SECONDS=0), started after the first one has stopped.

    .venv/bin/python bench/lookups.py                 # SQLite
    .venv/bin/python bench/lookups.py --db postgresql
    .venv/bin/python bench/lookups.py --profile       # + a py-spy profile of the hit path
    .venv/bin/python bench/lookups.py --quick         # a smoke run: small, short, 32 conns

The names are inserted straight into the `names` table with SQLAlchemy core (they are not
on chain: a lookup benchmark needs rows, not events). Writes bench/results/lookups*.json
and .png.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _common
import httpx
from _common import Wrk

from app.db import make_sync_engine, migrate
from app.models import NameRecord
from app.names import fold
from app.settings import Settings
from tests.jami_keys import make_account

CONNECTIONS = [1, 8, 32, 128]
CEILINGS = ["ceiling", "fastapi"]
TARGETS = [*CEILINGS, "one_name", "hot_200", "hit_hot", "miss", "hit", "addr", "miss_cold",
           "addr_cold"]  # fmt: skip
# Targets whose requests must not repeat: each run starts where the previous one stopped.
ROTATING = ["hit", "addr", "miss_cold", "addr_cold"]
HOT_NAMES = 1000
CYCLED_NAMES = 200
COLD_REQUESTS = 100_000  # free names / addresses made for each cold target
ANSWER_CACHE_TARGETS = ["one_name", "hot_200", "hit_hot"]
PROVEN_NAMES = 2000  # names with real key material, for the reverse lookups of `addr`
MISS_NAMES = 200  # asked again and again, like an availability check at every keystroke
# Long enough that a miss run measures the negative cache, not the chain: the chain read of
# a name's first miss is timed separately (cold_miss), as it is slow and coalesced nowhere.
NEGATIVE_CACHE_SECONDS = 3600
PUBLICKEY_BYTES = 800  # an RSA-4096 PEM + NUL: base64 of it is 1068 characters
SIGNATURE_BYTES = 512  # RSA-4096 signature: 684 characters of base64
# Issue 13's goals at 32 connections, as (target, least ratio to the raw ceiling, most p99).
GOALS: dict[str, dict[str, tuple[float, float | None]]] = {
    "sqlite": {
        "hit_hot": (0.9, None),
        "miss": (0.9, None),
        "hit": (0.5, 20.0),
        "addr": (0.5, 20.0),
    },
    "postgresql": {
        "hit_hot": (0.9, None),
        "miss": (0.9, None),
        "hit": (0.25, None),
        "addr": (0.25, None),
    },
}
GOAL_P99_MS = 20.0


def name_of(index: int) -> str:
    return f"bench{index:06d}"


def proven_row(index: int) -> dict[str, str]:
    """A name record with a fresh RSA-2048 account's key and signature (a proven binding)."""
    name = f"proven{index:05d}"
    account = make_account(2048)
    return {
        "name": name,
        "addr": account.jami_id,
        "publickey": account.publickey_b64,
        "signature": account.sign(name),
    }


def proven_rows(count: int) -> list[dict[str, str]]:
    """`count` proven records, made once (about a minute for 2,000) and kept on disk."""
    cache = Path.home() / ".cache" / "jamins-bench" / f"proven-rsa2048-{count}.json"
    if cache.exists():
        rows: list[dict[str, str]] = json.loads(cache.read_text())
        return rows
    print(f"making {count} RSA-2048 accounts for the reverse lookups (once)...", flush=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        rows = list(pool.map(proven_row, range(count), chunksize=20))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows))
    return rows


def load_names(
    database_url: str, count: int, seed: int, proven: list[dict[str, str]]
) -> list[tuple[str, str]]:
    """Migrate the database and insert `count` records with random key material and the
    `proven` ones; returns the (name, addr) pairs of the first."""
    settings = Settings(database_url=database_url)
    migrate(settings)
    engine = make_sync_engine(settings)
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    table = NameRecord.__table__
    try:
        with engine.begin() as connection:
            for start in range(0, count, 5000):
                rows = []
                for index in range(start, min(count, start + 5000)):
                    name = name_of(index)
                    addr = rng.randbytes(20).hex()
                    pairs.append((name, addr))
                    rows.append(
                        {
                            "name": name,
                            "folded_name": fold(name),
                            "addr": addr,
                            "owner": rng.randbytes(20).hex(),
                            "publickey": base64.b64encode(os.urandom(PUBLICKEY_BYTES)).decode(),
                            "signature": base64.b64encode(os.urandom(SIGNATURE_BYTES)).decode(),
                            "pending": False,
                            "block_number": 1 + index // 100,
                        }
                    )
                connection.execute(table.insert(), rows)
            connection.execute(
                table.insert(),
                [
                    {
                        **row,
                        "folded_name": fold(row["name"]),
                        "owner": "0" * 40,
                        "pending": False,
                        "block_number": 1,
                    }
                    for row in proven
                ],
            )
    finally:
        engine.dispose()
    return pairs


def mixed_case(name: str, rng: random.Random) -> str:
    return "".join(ch.upper() if rng.random() < 0.5 else ch for ch in name)


def cache_counts(base_url: str) -> dict[str, float]:
    """jamins_cache_lookups from /metrics: how lookups were answered (SQL, known free, chain)."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for kind, result, value in re.findall(
        r'^jamins_cache_lookups_total\{kind="(\w+)",result="(\w+)"\} (\S+)$', text, re.M
    ):
        counts[f"{kind}_{result}"] = float(value)
    return counts


def prime(base_url: str, paths: Path) -> None:
    """Ask each path once, one at a time."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for path in paths.read_text().split():
            client.get(path)


def cold_misses(base_url: str, paths: Path) -> dict[str, Any]:
    """Ask each miss name once, one at a time: SQL, then the chain (fills the negative cache)."""
    timings = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for path in paths.read_text().split():
            started = time.perf_counter()
            status = client.get(path).status_code
            timings.append((time.perf_counter() - started) * 1000)
            if status != 404:
                raise RuntimeError(f"{path}: {status}, not 404")
    timings.sort()
    return {
        "requests": len(timings),
        "p50_ms": round(timings[len(timings) // 2], 2),
        "p99_ms": round(timings[int(len(timings) * 0.99)], 2),
        "mean_ms": round(sum(timings) / len(timings), 2),
    }


def profile_hits(
    wrk: Wrk, server: _common.ServerProcess, paths: Path, seconds: float, out: Path
) -> dict[str, Any]:
    """py-spy the server while wrk asks for hits at 32 connections; returns the top frames.

    The collapsed stacks stay in `out`.txt (flamegraph.pl or speedscope read them)."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    assert server.process is not None
    raw = out.with_suffix(".txt")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)
    spy_log = out.parent / "py-spy.log"
    with spy_log.open("wb") as spy_out:
        spy = subprocess.Popen(
            [
                str(py_spy), "record", "--pid", str(server.process.pid), "--rate", "200",
                "--duration", str(round(seconds)), "--format", "raw", "--output", str(raw),
                "--nonblocking",
            ],
            stdout=spy_out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            time.sleep(1.0)
            wrk.run(server.url, paths, connections=32, seconds=seconds - 2)
            spy.wait(timeout=seconds + 30)
        finally:
            if spy.poll() is None:
                spy.terminate()
                spy.wait()
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile: {spy_log.read_text()[-1000:]}")
    spy_log.unlink()
    return summarize_profile(raw)


def summarize_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """Inclusive and self shares of the sampled frames in py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [
            re.sub(r" \(.*/(site-packages|lib/python3\.\d+)/", " (", frame)
            for frame in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count

    def share(table: dict[str, int]) -> list[list[Any]]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [[frame, round(100 * count / total, 1)] for frame, count in ranked]

    # The service's own functions, whatever line of them was sampled.
    by_function: dict[str, int] = {}
    for frame, count in inclusive.items():
        if " (app/" in frame:
            function = re.sub(r":\d+\)$", ")", frame)
            by_function[function] = max(by_function.get(function, 0), count)
    return {
        "samples": total,
        "self_percent": share(own),
        "inclusive_percent": share(inclusive),
        "app_functions_inclusive_percent": share(by_function),
    }


class Rotation:
    """Request paths that must not repeat: each run gets the ones after the previous run's."""

    def __init__(self, wrk: Wrk, label: str, paths: list[str]) -> None:
        self.wrk = wrk
        self.label = label
        self.paths = paths
        self.cursor = 0
        self.wrapped = False

    def next_file(self) -> Path:
        start = self.cursor % len(self.paths)
        return self.wrk.path_file(self.label, self.paths[start:] + self.paths[:start])

    def used(self, requests: int) -> None:
        self.cursor += requests
        if self.cursor > len(self.paths):
            self.wrapped = True


def start_ceiling(
    stack: contextlib.ExitStack, work: Path, kind: str, body_file: Path
) -> tuple[str, subprocess.Popen[bytes], dict[str, Any]]:
    """bench/ceiling_app.py of `kind` on a free port; (url, process, uvicorn options)."""
    port = _common.free_port()
    log = open(work / f"ceiling-{kind}.log", "wb")  # noqa: SIM115
    stack.callback(log.close)
    options_file = work / f"ceiling-{kind}-options.json"
    process = subprocess.Popen(
        [
            sys.executable,
            str(_common.REPO_ROOT / "bench" / "ceiling_app.py"),
            "--kind", kind,
            "--port", str(port),
            "--body", str(body_file),
            "--options-out", str(options_file),
        ],
        cwd=_common.REPO_ROOT,
        env={
            **os.environ,
            "JAMINS_LOG_LEVEL": "warning",
            "JAMINS_DATA_DIR": str(work / f"ceiling-{kind}"),
            "JAMINS_WORKERS": "1",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    stack.callback(_stop_process, process)
    url = f"http://127.0.0.1:{port}"
    _common.wait_http(url + "/ceiling")
    return url, process, json.loads(options_file.read_text())


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "lookups",
        "command": _common.command_line(),
        "machine": _common.machine(),
        "database": args.db,
        "names": args.names,
        "load_method": "rows inserted straight into the names table (SQLAlchemy core)",
        "server_settings": "defaults (access log on, log level info), "
        f"JAMINS_NEGATIVE_CACHE_SECONDS={NEGATIVE_CACHE_SECONDS}",
        "seconds_per_run": args.seconds,
        "warmup_seconds": args.warmup,
        "runs": [],
    }
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        work = _common.workdir(stack, "jamins-bench-lookups-")
        node = _common.start_anvil(stack)
        database_url = _common.start_database(stack, args.db, work)
        started = time.monotonic()
        proven = proven_rows(args.proven)
        pairs = load_names(database_url, args.names, args.seed, proven)
        results["load_seconds"] = round(time.monotonic() - started, 1)
        print(f"loaded {len(pairs)} names in {results['load_seconds']} s", flush=True)

        server = _common.start_server(
            stack,
            work / "server",
            _common.jamins_env(
                node.url,
                database_url,
                # The defaults, access log included: what an operator runs.
                JAMINS_LOG_LEVEL="info",
                JAMINS_NEGATIVE_CACHE_SECONDS=str(NEGATIVE_CACHE_SECONDS),
            ),
        )
        assert server.process is not None
        server_pid = server.process.pid

        sample = pairs[len(pairs) // 2]
        answer = httpx.get(f"{server.url}/name/{mixed_case(sample[0], rng)}", timeout=10)
        answer.raise_for_status()
        body_file = work / "answer.json"
        body_file.write_bytes(answer.content)
        results["answer_bytes"] = len(answer.content)

        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        for kind, target in (("raw", "ceiling"), ("fastapi", "fastapi")):
            url, process, options = start_ceiling(stack, work, kind, body_file)
            urls[target], pids[target] = url, process.pid
            results[f"{target}_uvicorn_options"] = options
            results[f"{target}_answer_bytes"] = len(httpx.get(url + "/ceiling", timeout=10).content)

        wrk = Wrk(work)
        shuffled = pairs[:]
        rng.shuffle(shuffled)
        path_files = {
            "ceiling": wrk.path_file("ceiling", ["/ceiling"]),
            "fastapi": wrk.path_file("fastapi", ["/ceiling"]),
            "one_name": wrk.path_file("one_name", [f"/name/{shuffled[0][0]}"]),
            "hot_200": wrk.path_file(
                "hot_200", [f"/name/{name}" for name, _ in shuffled[1 : 1 + CYCLED_NAMES]]
            ),
            "hit_hot": wrk.path_file(
                "hit_hot", [f"/name/{mixed_case(n, rng)}" for n, _ in shuffled[-HOT_NAMES:]]
            ),
            "miss": wrk.path_file(
                "miss", [f"/name/{mixed_case(f'free{i:05d}', rng)}" for i in range(MISS_NAMES)]
            ),
        }
        cold_count = min(COLD_REQUESTS, max(1000, args.names))
        rotations = {
            "hit": Rotation(wrk, "hit", [f"/name/{mixed_case(n, rng)}" for n, _ in shuffled]),
            "addr": Rotation(wrk, "addr", [f"/addr/{row['addr']}" for row in proven]),
            "miss_cold": Rotation(
                wrk, "miss_cold", [f"/name/cold{index:07d}" for index in range(cold_count)]
            ),
            "addr_cold": Rotation(
                wrk, "addr_cold", [f"/addr/{rng.randbytes(20).hex()}" for _ in range(cold_count)]
            ),
        }
        results["cold_miss"] = cold_misses(server.url, path_files["miss"])
        print(
            "cold misses (SQL, then the chain), one at a time: "
            f"p50 {results['cold_miss']['p50_ms']:.1f} ms, "
            f"p99 {results['cold_miss']['p99_ms']:.1f} ms",
            flush=True,
        )

        print(f"{'conns':>5} {'target':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'non2xx':>7} {'server cpu':>10} {'wrk cpu':>8}", flush=True)  # fmt: skip
        chosen = [target for target in TARGETS if target in args.targets or target in CEILINGS]
        rows: dict[int, dict[str, dict[str, Any]]] = {n: {} for n in args.connections}

        def measure(target: str, connections: int, url: str, pid: int) -> None:
            rotation = rotations.get(target)
            if target in ANSWER_CACHE_TARGETS:
                # Every name of the set asked once first: the answer cache's entries of the
                # last run have expired (10 s), and a short warm-up at SQL speed would not
                # reach them all, leaving first reads in the measure.
                prime(url, path_files[target])
            # A cold target warms nothing up: its warm-up would fill the caches it measures
            # the absence of (the server is warm from the targets before).
            if not target.endswith("_cold"):
                warm = wrk.run(
                    url,
                    rotation.next_file() if rotation else path_files[target],
                    connections=connections,
                    seconds=args.warmup,
                )
                if rotation is not None:
                    rotation.used(warm.requests)
            counted = target not in CEILINGS
            before = cache_counts(url) if counted else {}
            result = wrk.run(
                url,
                rotation.next_file() if rotation else path_files[target],
                connections=connections,
                seconds=args.seconds,
                server_pid=pid,
            )
            after = cache_counts(url) if counted else {}
            if rotation is not None:
                rotation.used(result.requests)
            entry: dict[str, Any] = {"connections": connections, "target": target}
            entry.update(result.as_dict())
            if counted:
                entry["cache"] = {
                    key: int(after.get(key, 0) - before.get(key, 0))
                    for key in after
                    if after.get(key, 0) != before.get(key, 0)
                }
            if rotation is not None and rotation.wrapped and target != "addr":
                entry["repeated_requests"] = True
            rows[connections][target] = entry
            print(
                f"{connections:>5} {target:>9} {result.rps:>9.0f} {result.p50_ms:>8.2f} "
                f"{result.p99_ms:>8.2f} {result.non_2xx:>7} {result.server_cpu:>10.0%} "
                f"{result.wrk_cpu:>8.0%}",
                flush=True,
            )

        for connections in args.connections:
            for target in chosen:
                if target != "addr":
                    measure(target, connections, urls.get(target, server.url),
                            pids.get(target, server_pid))  # fmt: skip

        # wrk is not the bottleneck: one more thread for wrk must not raise the ceiling.
        check: dict[str, Any] = {}
        for threads in (1, 2):
            result = wrk.run(
                urls["ceiling"],
                path_files["ceiling"],
                connections=32,
                seconds=args.seconds,
                threads=threads,
                server_pid=pids["ceiling"],
            )
            check[f"threads_{threads}"] = result.as_dict()
            print(
                f"wrk check, raw ceiling at 32 connections, {threads} wrk thread(s): "
                f"{result.rps:.0f} req/s, wrk cpu {result.wrk_cpu:.0%}, "
                f"server cpu {result.server_cpu:.0%}",
                flush=True,
            )
        results["wrk_check"] = check

        if args.profile:
            for target in args.profile_targets:
                rotation = rotations.get(target)
                profile = profile_hits(
                    wrk,
                    server,
                    rotation.next_file() if rotation else path_files[target],
                    args.profile_seconds,
                    _common.RESULTS_DIR / f"lookups{suffix(args)}-profile-{target}",
                )
                results[f"profile_{target}_32"] = profile
                print(f"py-spy, {target} at 32 connections, self time (% of sampled stacks):")
                for frame, percent in profile["self_percent"][:15]:
                    print(f"  {percent:5.1f}%  {frame}")
                print("jamins functions, inclusive:")
                for frame, percent in profile["app_functions_inclusive_percent"][:12]:
                    print(f"  {percent:5.1f}%  {frame}")
        if "addr" in chosen:
            server.stop()
            uncached = _common.start_server(
                stack,
                work / "server-no-answer-cache",
                _common.jamins_env(
                    node.url,
                    database_url,
                    JAMINS_LOG_LEVEL="info",
                    JAMINS_NEGATIVE_CACHE_SECONDS=str(NEGATIVE_CACHE_SECONDS),
                    JAMINS_LOOKUP_CACHE_SECONDS="0",
                ),
            )
            assert uncached.process is not None
            for connections in args.connections:
                measure("addr", connections, uncached.url, uncached.process.pid)
        for connections, row in rows.items():
            for entry in row.values():
                entry["ratio_to_ceiling"] = round(entry["rps"] / row["ceiling"]["rps"], 3)
                entry["ratio_to_fastapi"] = round(entry["rps"] / row["fastapi"]["rps"], 3)
            results["runs"] += [row[target] for target in chosen if target in row]
            print(
                f"{connections:>5} ratio to the raw ceiling: "
                + "  ".join(
                    f"{target} {row[target]['ratio_to_ceiling']:.2f}"
                    for target in chosen[1:]
                    if target in row
                ),
                flush=True,
            )
        results["rotations"] = {
            label: {"paths": len(rotation.paths), "used": rotation.cursor}
            for label, rotation in rotations.items()
        }
    return results


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def suffix(args: argparse.Namespace) -> str:
    return "" if args.db == "sqlite" else f"-{args.db}"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for target in TARGETS:
        runs = [run for run in results["runs"] if run["target"] == target]
        if not runs:
            continue
        connections = [run["connections"] for run in runs]
        left.plot(connections, [run["rps"] for run in runs], marker="o", label=target)
        right.plot(connections, [run["p99_ms"] for run in runs], marker="o", label=target)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        connections = sorted({run["connections"] for run in results["runs"]})
        axis.set_xticks(connections, [str(c) for c in connections])
        axis.set_xlabel("connections (wrk, loopback)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    left.set_ylabel("requests / s")
    left.set_ylim(bottom=0)
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    right.axhline(GOAL_P99_MS, color="grey", linestyle="--", linewidth=1)
    machine = results["machine"]
    _common.save_figure(
        figure,
        path,
        f"jamins lookups, {results['names']:,} names on {results['database']}, one worker "
        f"({machine['nproc']} x {machine['cpu_model']}, {machine['date']})",
    )


def goal_lines(results: dict[str, Any]) -> list[str]:
    """Issue 13's goals at 32 connections, met or not."""
    at_32 = {run["target"]: run for run in results["runs"] if run["connections"] == 32}
    lines = []
    for target, (ratio_goal, p99_goal) in GOALS[results["database"]].items():
        run = at_32.get(target)
        if run is None:
            continue
        ratio = run["ratio_to_ceiling"]
        line = (
            f"{target}: {ratio:.2f}x the raw ceiling (goal >= {ratio_goal}: "
            f"{'met' if ratio >= ratio_goal else 'NOT met'})"
        )
        if p99_goal is not None:
            p99 = run["p99_ms"]
            line += (
                f", p99 {p99:.1f} ms (goal <= {p99_goal:.0f} ms: "
                f"{'met' if p99 <= p99_goal else 'NOT met'})"
            )
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="before each run")
    parser.add_argument("--connections", type=int, nargs="+", default=CONNECTIONS)
    parser.add_argument(
        "--targets", nargs="+", default=TARGETS, choices=TARGETS, help="the ceilings always run"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2,000 names, 1 s runs, 32 connections"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the SQL paths")
    parser.add_argument(
        "--profile-targets", nargs="+", default=["hit", "hit_hot"], choices=TARGETS[2:]
    )
    parser.add_argument("--profile-seconds", type=float, default=12.0)
    parser.add_argument(
        "--proven", type=int, default=PROVEN_NAMES, help="names with key material (addr)"
    )
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    if args.quick:
        args.names, args.seconds, args.warmup, args.connections = 2000, 1.0, 1.0, [32]
        args.proven = 100
    _common.sigterm_as_interrupt()
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        parser.error("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
    results = run(args)
    name = f"lookups{suffix(args)}{'-quick' if args.quick else ''}"
    json_path = _common.write_json(f"{name}.json", results)
    png_path = _common.RESULTS_DIR / f"{name}.png"
    written = [json_path]
    if _common.can_plot():
        plot(results, png_path)
        written.append(png_path)
    for line in goal_lines(results):
        print("goal at 32 connections, " + line)
    print("wrote " + " and ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
