"""Memory: the server's resident memory (VmRSS) over minutes of mixed load, every 5 s.

    .venv/bin/python bench/memory.py                # 10 minutes, SQLite
    .venv/bin/python bench/memory.py --minutes 2 --db postgresql

The load, from wrk on loopback at 8 connections: 60% name lookups that hit (100k names in
the database, inserted straight into the names table), 15% reverse lookups that hit, 10%
misses cycling over 500 names (the negative cache answers them), 15% misses on names never
asked before (each one read from the chain once and remembered as free: this grows the
negative cache towards its bound); and one real RSA-4096 registration every `minutes * 6`
seconds (10 in all). Writes bench/results/memory*.json and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _common
import httpx
from lookups import load_names, mixed_case
from registrations import registration

SAMPLE_SECONDS = 5.0
CONNECTIONS = 8


def lookups_done(base_url: str) -> int:
    """Lookups answered so far, from /metrics (jamins_cache_lookups_total)."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return int(
        sum(
            float(value)
            for value in re.findall(r"^jamins_cache_lookups_total\{.*\} (\S+)$", text, re.M)
        )
    )


def mixed_paths(pairs: list[tuple[str, str]], count: int, rng: random.Random) -> list[str]:
    paths = []
    fresh = 0
    for _ in range(count):
        draw = rng.random()
        if draw < 0.60:
            paths.append(f"/name/{mixed_case(rng.choice(pairs)[0], rng)}")
        elif draw < 0.75:
            paths.append(f"/addr/{rng.choice(pairs)[1]}")
        elif draw < 0.85:
            paths.append(f"/name/typing{rng.randrange(500):03d}")
        else:
            paths.append(f"/name/never{fresh:07d}")
            fresh += 1
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    seconds = args.minutes * 60
    names = [f"bench-mem-{index:02d}" for index in range(args.registrations)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        bodies = dict(zip(names, pool.map(registration, names), strict=True))
    results: dict[str, Any] = {
        "benchmark": "memory",
        "command": _common.command_line(),
        "machine": _common.machine(),
        "database": args.db,
        "minutes": args.minutes,
        "names": args.names,
        "connections": CONNECTIONS,
        "mix": {"name_hit": 0.60, "addr_hit": 0.15, "repeated_miss": 0.10, "fresh_miss": 0.15},
        "samples": [],
    }
    with contextlib.ExitStack() as stack:
        work = _common.workdir(stack, "jamins-bench-memory-")
        node = _common.start_anvil(stack)
        database_url = _common.start_database(stack, args.db, work)
        pairs = load_names(database_url, args.names, args.seed)
        server = _common.start_server(
            stack,
            work / "server",
            _common.jamins_env(node.url, database_url, JAMINS_REGISTER_RATE_PER_MINUTE="0"),
        )
        assert server.process is not None
        pid = server.process.pid
        wrk = _common.Wrk(work)
        # Enough paths that the fresh misses are never repeated within the run.
        paths = wrk.path_file("mixed", mixed_paths(pairs, args.paths, rng))
        output = work / "wrk-memory.out"
        sink = open(output, "wb")  # noqa: SIM115
        stack.callback(sink.close)
        started = time.monotonic()
        load = subprocess.Popen(
            wrk.command(server.url, connections=CONNECTIONS, seconds=seconds),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=wrk.env(paths),
        )
        stack.callback(_stop, load)
        pending = list(bodies.items())
        every = seconds / max(1, len(pending))
        next_registration = every / 2
        accepted: list[dict[str, Any]] = []
        print(f"{'t (s)':>6} {'RSS MiB':>8} {'lookups':>9}", flush=True)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while load.poll() is None and time.monotonic() - started < seconds + 30:
                elapsed = time.monotonic() - started
                if pending and elapsed >= next_registration:
                    name, body = pending.pop(0)
                    answer = client.post(f"/name/{name}", json=body)
                    accepted.append({"name": name, "status": answer.status_code, "t": elapsed})
                    next_registration += every
                sample = {
                    "t": round(elapsed, 1),
                    "rss_mib": round(_common.rss_kib(pid) / 1024, 1),
                    "lookups": lookups_done(server.url),
                }
                results["samples"].append(sample)
                print(f"{sample['t']:>6.0f} {sample['rss_mib']:>8.1f} {sample['lookups']:>9}")
                time.sleep(SAMPLE_SECONDS - (time.monotonic() - started) % SAMPLE_SECONDS)
            load.wait(timeout=60)
            results["registrations"] = accepted
            results["registrations_settled"] = {
                entry["name"]: client.get(f"/registrations/{entry['name']}").json().get("state")
                for entry in accepted
            }
            results["cache_metrics"] = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in client.get("/metrics").text.splitlines()
                if line.startswith("jamins_cache_lookups_total")
            }
        sink.flush()
        results["wrk"] = _common.parse_wrk(output.read_text(errors="replace")).as_dict()
        results["final_rss_mib"] = round(_common.rss_kib(pid) / 1024, 1)
    summarize(results)
    return results


def summarize(results: dict[str, Any]) -> None:
    """RSS after the first minute (warm) against the end, and the slope over the second half."""
    samples = results["samples"]
    warm = [s for s in samples if s["t"] >= 60] or samples
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2] or samples
    results["rss_start_mib"] = samples[0]["rss_mib"]
    results["rss_warm_mib"] = warm[0]["rss_mib"]
    results["rss_end_mib"] = samples[-1]["rss_mib"]
    results["rss_max_mib"] = max(s["rss_mib"] for s in samples)
    if len(half) >= 2:
        times = [s["t"] / 60 for s in half]
        values = [s["rss_mib"] for s in half]
        mean_t = sum(times) / len(times)
        mean_v = sum(values) / len(values)
        denominator = sum((t - mean_t) ** 2 for t in times) or 1.0
        slope = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True))
        results["rss_slope_second_half_mib_per_min"] = round(slope / denominator, 2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    figure, left = plt.subplots(figsize=(10, 4.5))
    minutes = [s["t"] / 60 for s in samples]
    left.plot(minutes, [s["rss_mib"] for s in samples], color="tab:blue", label="server VmRSS")
    left.set_xlabel("minutes of mixed load")
    left.set_ylabel("resident memory (MiB)", color="tab:blue")
    left.set_ylim(0, max(s["rss_mib"] for s in samples) * 1.2)
    for entry in results.get("registrations", []):
        left.axvline(entry["t"] / 60, color="tab:green", alpha=0.3, linewidth=1)
    right = left.twinx()
    right.plot(minutes, [s["lookups"] for s in samples], color="tab:orange", alpha=0.7)
    right.set_ylabel("lookups answered (cumulative)", color="tab:orange")
    left.grid(True, alpha=0.3)
    machine = results["machine"]
    _common.save_figure(
        figure,
        path,
        f"jamins memory under mixed load, {results['names']:,} names on {results['database']}, "
        f"{results['connections']} "
        f"connections; green: registrations ({machine['nproc']} x {machine['cpu_model']}, "
        f"{machine['date']})",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--registrations", type=int, default=10)
    parser.add_argument("--paths", type=int, default=2_000_000, help="mixed paths cycled")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    _common.sigterm_as_interrupt()
    results = run(args)
    suffix = "" if args.db == "sqlite" else f"-{args.db}"
    if args.names != 100_000:
        suffix += f"-{args.names // 1000}k"
    json_path = _common.write_json(f"memory{suffix}.json", results)
    png_path = _common.RESULTS_DIR / f"memory{suffix}.png"
    plot(results, png_path)
    print(
        f"RSS: {results['rss_start_mib']} MiB at start, {results['rss_warm_mib']} MiB after a "
        f"minute, {results['rss_end_mib']} MiB at the end (max {results['rss_max_mib']}); "
        f"slope over the second half {results.get('rss_slope_second_half_mib_per_min')} MiB/min"
    )
    print(f"wrk: {results['wrk']['requests']} requests, {results['wrk']['rps']:.0f}/s")
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
