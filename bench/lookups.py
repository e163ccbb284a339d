"""Lookups: GET /name hits and misses and GET /addr hits with 100k names in the database,
against the same stack's ceiling (a bare FastAPI route with a constant body of the same
size), at 1, 8, 32 and 128 connections, from wrk on loopback.

Targets: `hit` cycles over all 100k names in mixed case (no name comes twice in a run, so
an answer cache never helps: this is the SQL path), `hit_hot` over 1,000 of them (what an
answer cache serves), `miss` over 200 free names (asked once before, so the negative
cache answers), `addr` over the 100k addresses.

    .venv/bin/python bench/lookups.py                 # SQLite
    .venv/bin/python bench/lookups.py --db postgresql
    .venv/bin/python bench/lookups.py --profile       # + a py-spy profile of the hit path

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
from pathlib import Path
from typing import Any

import _common
import httpx
from _common import Wrk, WrkResult

from app.db import make_sync_engine, migrate
from app.models import NameRecord
from app.names import fold
from app.settings import Settings

CONNECTIONS = [1, 8, 32, 128]
# hit: every request a different name of the 100k (no name twice in a run: what SQL
# answers); hit_hot: 1,000 names asked again and again (what an answer cache serves).
TARGETS = ["ceiling", "hit", "hit_hot", "miss", "addr"]
HOT_NAMES = 1000
MISS_NAMES = 200  # asked again and again, like an availability check at every keystroke
# Long enough that a miss run measures the negative cache, not the chain: the chain read of
# a name's first miss is timed separately (cold_miss), as it is slow and coalesced nowhere.
NEGATIVE_CACHE_SECONDS = 3600
PUBLICKEY_BYTES = 800  # an RSA-4096 PEM + NUL: base64 of it is 1068 characters
SIGNATURE_BYTES = 512  # RSA-4096 signature: 684 characters of base64
GOAL_RATIO = 0.8
GOAL_P99_MS = 20.0


def name_of(index: int) -> str:
    return f"bench{index:06d}"


def load_names(database_url: str, count: int, seed: int) -> list[tuple[str, str]]:
    """Migrate the database and insert `count` records; returns (name, addr) pairs."""
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "lookups",
        "command": _common.command_line(),
        "machine": _common.machine(),
        "database": args.db,
        "names": args.names,
        "load_method": "rows inserted straight into the names table (SQLAlchemy core)",
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
        pairs = load_names(database_url, args.names, args.seed)
        results["load_seconds"] = round(time.monotonic() - started, 1)
        print(f"loaded {len(pairs)} names in {results['load_seconds']} s", flush=True)

        server = _common.start_server(
            stack,
            work / "server",
            _common.jamins_env(
                node.url,
                database_url,
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

        ceiling_port = _common.free_port()
        ceiling_log = open(work / "ceiling.log", "wb")  # noqa: SIM115
        stack.callback(ceiling_log.close)
        ceiling = subprocess.Popen(
            [
                sys.executable,
                str(_common.REPO_ROOT / "bench" / "ceiling_app.py"),
                "--port", str(ceiling_port),
                "--body", str(body_file),
            ],
            cwd=_common.REPO_ROOT,
            env={
                **os.environ,
                "JAMINS_LOG_LEVEL": "warning",
                "JAMINS_DATA_DIR": str(work),
                "JAMINS_WORKERS": "1",
            },
            stdout=ceiling_log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(_stop_process, ceiling)
        ceiling_url = f"http://127.0.0.1:{ceiling_port}"
        _common.wait_http(ceiling_url + "/ceiling")
        ceiling_answer = httpx.get(ceiling_url + "/ceiling", timeout=10)
        results["ceiling_answer_bytes"] = len(ceiling_answer.content)

        wrk = Wrk(work)
        shuffled = pairs[:]
        rng.shuffle(shuffled)
        path_files = {
            "ceiling": wrk.path_file("ceiling", ["/ceiling"]),
            "hit": wrk.path_file("hit", [f"/name/{mixed_case(n, rng)}" for n, _ in shuffled]),
            "hit_hot": wrk.path_file(
                "hit_hot", [f"/name/{mixed_case(n, rng)}" for n, _ in shuffled[-HOT_NAMES:]]
            ),
            "miss": wrk.path_file(
                "miss", [f"/name/{mixed_case(f'free{i:05d}', rng)}" for i in range(MISS_NAMES)]
            ),
            "addr": wrk.path_file("addr", [f"/addr/{addr}" for _, addr in shuffled]),
        }
        results["cold_miss"] = cold_misses(server.url, path_files["miss"])
        print(
            "cold misses (SQL, then the chain), one at a time: "
            f"p50 {results['cold_miss']['p50_ms']:.1f} ms, "
            f"p99 {results['cold_miss']['p99_ms']:.1f} ms",
            flush=True,
        )
        urls = {"ceiling": ceiling_url}
        pids = {"ceiling": ceiling.pid}

        print(f"{'conns':>5} {'target':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'non2xx':>7} {'server cpu':>10} {'wrk cpu':>8}", flush=True)  # fmt: skip
        for connections in args.connections:
            row: dict[str, WrkResult] = {}
            for target in TARGETS:
                url = urls.get(target, server.url)
                pid = pids.get(target, server_pid)
                wrk.run(url, path_files[target], connections=connections, seconds=args.warmup)
                before = cache_counts(server.url)
                result = wrk.run(
                    url,
                    path_files[target],
                    connections=connections,
                    seconds=args.seconds,
                    server_pid=pid,
                )
                after = cache_counts(server.url)
                row[target] = result
                entry = {"connections": connections, "target": target, **result.as_dict()}
                if target != "ceiling":
                    entry["cache"] = {
                        key: int(after.get(key, 0) - before.get(key, 0))
                        for key in after
                        if after.get(key, 0) != before.get(key, 0)
                    }
                results["runs"].append(entry)
                print(
                    f"{connections:>5} {target:>8} {result.rps:>9.0f} {result.p50_ms:>8.2f} "
                    f"{result.p99_ms:>8.2f} {result.non_2xx:>7} {result.server_cpu:>10.0%} "
                    f"{result.wrk_cpu:>8.0%}",
                    flush=True,
                )
            for target in TARGETS[1:]:
                ratio = row[target].rps / row["ceiling"].rps
                results["runs"][-(len(TARGETS) - TARGETS.index(target))]["ratio_to_ceiling"] = (
                    round(ratio, 3)
                )
            print(
                "      "
                + "  ".join(
                    f"{target}/ceiling {row[target].rps / row['ceiling'].rps:.2f}"
                    for target in TARGETS[1:]
                ),
                flush=True,
            )

        # wrk is not the bottleneck: one more thread for wrk must not raise the ceiling.
        check: dict[str, Any] = {}
        for threads in (1, 2):
            result = wrk.run(
                ceiling_url,
                path_files["ceiling"],
                connections=32,
                seconds=args.seconds,
                threads=threads,
                server_pid=ceiling.pid,
            )
            check[f"threads_{threads}"] = result.as_dict()
            print(
                f"wrk check, ceiling at 32 connections, {threads} wrk thread(s): "
                f"{result.rps:.0f} req/s, wrk cpu {result.wrk_cpu:.0%}, "
                f"server cpu {result.server_cpu:.0%}",
                flush=True,
            )
        results["wrk_check"] = check

        if args.profile:
            profile = profile_hits(
                wrk,
                server,
                path_files["hit"],
                args.profile_seconds,
                _common.RESULTS_DIR / f"lookups{suffix(args)}-profile",
            )
            results["profile_hits_32"] = profile
            print("py-spy, hits at 32 connections, self time (% of sampled stacks):")
            for frame, percent in profile["self_percent"][:15]:
                print(f"  {percent:5.1f}%  {frame}")
            print("jamins functions, inclusive:")
            for frame, percent in profile["app_functions_inclusive_percent"][:12]:
                print(f"  {percent:5.1f}%  {frame}")
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
        connections = [run["connections"] for run in runs]
        left.plot(connections, [run["rps"] for run in runs], marker="o", label=target)
        right.plot(connections, [run["p99_ms"] for run in runs], marker="o", label=target)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(CONNECTIONS, [str(c) for c in CONNECTIONS])
        axis.set_xlabel("connections (wrk, loopback)")
        axis.grid(True, alpha=0.3)
        axis.legend()
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="before each run")
    parser.add_argument("--connections", type=int, nargs="+", default=CONNECTIONS)
    parser.add_argument("--profile", action="store_true", help="py-spy the hit path")
    parser.add_argument("--profile-seconds", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    _common.sigterm_as_interrupt()
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        parser.error("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
    results = run(args)
    json_path = _common.write_json(f"lookups{suffix(args)}.json", results)
    png_path = _common.RESULTS_DIR / f"lookups{suffix(args)}.png"
    plot(results, png_path)
    at_32 = {run["target"]: run for run in results["runs"] if run["connections"] == 32}
    for target in ("hit", "hit_hot") if at_32 else ():
        ratio = at_32[target]["ratio_to_ceiling"]
        p99 = at_32[target]["p99_ms"]
        print(
            f"goal at 32 connections: {target}/ceiling {ratio:.2f} (≥ {GOAL_RATIO}: "
            f"{'met' if ratio >= GOAL_RATIO else 'NOT met'}), {target} p99 {p99:.1f} ms "
            f"(≤ {GOAL_P99_MS:.0f} ms: {'met' if p99 <= GOAL_P99_MS else 'NOT met'})"
        )
    print(f"wrote {json_path} and {png_path}")
    print(json.dumps({"answer_bytes": results["answer_bytes"]}))


if __name__ == "__main__":
    main()
