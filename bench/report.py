"""Print the figures of bench/results/*.json as the Markdown tables of BENCHMARKS.md.

.venv/bin/python bench/report.py [lookups.json ...]   # one section per file
.venv/bin/python bench/report.py --goals              # issue 13's goal table, every file
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine_line(document: dict[str, Any]) -> str:
    machine = document["machine"]
    return (
        f"`{document['command']}` — {machine['date']}, {machine['nproc']} x "
        f"{machine['cpu_model']}, {machine['ram_gib']} GiB, Python {machine['python']}, "
        f"app at {machine['git_commit']}"
    )


def lookups(document: dict[str, Any]) -> str:
    ceiling_bytes = document.get("ceiling_answer_bytes")
    lines = [
        machine_line(document),
        "",
        f"{document['names']:,} names on {document['database']}, answer "
        f"{document['answer_bytes']} bytes (raw ceiling {ceiling_bytes}, FastAPI reference "
        f"{document.get('fastapi_answer_bytes', '-')}); server: "
        f"{document.get('server_settings', 'see the JSON')}; "
        f"{document['warmup_seconds']:g} s warm-up + {document['seconds_per_run']:g} s per run; "
        f"cold miss (SQL then chain, one at a time): p50 {document['cold_miss']['p50_ms']} ms, "
        f"p99 {document['cold_miss']['p99_ms']} ms.",
        "",
        "| conns | route | req/s | p50 ms | p99 ms | ratio to raw ceiling | ratio to FastAPI "
        "| server CPU | wrk CPU | answered by (/metrics) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in document["runs"]:
        ratio = run.get("ratio_to_ceiling")
        to_fastapi = run.get("ratio_to_fastapi")
        answered = ", ".join(f"{key} {count:,}" for key, count in run.get("cache", {}).items())
        if run.get("repeated_requests"):
            answered += " (paths wrapped: some repeated)"
        lines.append(
            f"| {run['connections']} | {run['target']} | {run['rps']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | "
            f"{'' if to_fastapi is None else f'{to_fastapi:.2f}'} | {run['server_cpu']:.0%} | "
            f"{run['wrk_cpu']:.0%} | {answered} |"
        )
    check = document.get("wrk_check", {})
    if check:
        one, two = check["threads_1"], check["threads_2"]
        lines += [
            "",
            f"wrk check (raw ceiling, 32 connections): 1 thread {one['rps']:,.0f} req/s with wrk "
            f"at {one['wrk_cpu']:.0%} of a core; 2 threads {two['rps']:,.0f} req/s "
            f"(wrk {two['wrk_cpu']:.0%}).",
        ]
    return "\n".join(lines)


def _first_burst(document: dict[str, Any]) -> str:
    first = document.get("first_burst_ack_ms")
    if first is None:  # measured before the script sent a first burst
        return ""
    return (
        f" The first burst after the start: p50 {first['p50']:.0f} ms, p99 {first['p99']:.0f} ms."
    )


def registrations(document: dict[str, Any]) -> str:
    if "blocks" not in document:  # --ack-only
        return "\n".join(
            [
                machine_line(document),
                "",
                f"{document['registrations']} registrations ({document['body_bytes']}-byte "
                f"bodies) on {document['database']}, acknowledged: p50 "
                f"{document['ack_ms']['p50']:.0f} ms, p99 {document['ack_ms']['p99']:.0f} ms "
                f"(all within {document['all_acknowledged_seconds']:.2f} s)."
                + _first_burst(document),
            ]
        )
    lines = [
        machine_line(document),
        "",
        f"{document['registrations']} registrations ({document['body_bytes']}-byte bodies), "
        f"acknowledged: p50 {document['ack_ms']['p50']:.0f} ms, p99 {document['ack_ms']['p99']:.0f}"
        f" ms (all within {document['all_acknowledged_seconds']:.2f} s); drained in "
        f"{document['drain_seconds']:.1f} s, {len(document['failed'])} failed."
        + _first_burst(document),
        "",
        "| block | registrations | gas used | gas used / limit |",
        "|---:|---:|---:|---:|",
    ]
    for block in document["blocks"]:
        lines.append(
            f"| {block['number']} | {block['transactions']} | {block['gas_used']:,} | "
            f"{block['gas_share']:.1%} |"
        )
    return "\n".join(lines)


def backfill(document: dict[str, Any]) -> str:
    lines = [
        machine_line(document),
        "",
        f"{document['names']:,} names ({document['with_key_material']:,} with RSA-4096 key "
        f"material) over {document['blocks']} blocks, written in "
        f"{document['chain_load_seconds']} s.",
        "",
        "| database | names | seconds (`jamins index`, whole process) | names / s |",
        "|---|---:|---:|---:|",
    ]
    for kind, run in document["runs"].items():
        lines.append(
            f"| {kind} | {run['names']:,} | {run['seconds']:.1f} | {run['names_per_second']:,.0f} |"
        )
    return "\n".join(lines)


def memory(document: dict[str, Any]) -> str:
    wrk = document["wrk"]
    return "\n".join(
        [
            machine_line(document),
            "",
            f"{document['minutes']:g} minutes, {wrk['requests']:,} requests "
            f"({wrk['rps']:,.0f}/s, p99 {wrk['p99_ms']:.0f} ms), "
            f"{len(document.get('registrations', []))} registrations. VmRSS: "
            f"{document['rss_start_mib']} MiB at the start, {document['rss_warm_mib']} MiB after "
            f"the first minute, {document['rss_end_mib']} MiB at the end (max "
            f"{document['rss_max_mib']}); slope over the second half "
            f"{document.get('rss_slope_second_half_mib_per_min')} MiB/min.",
        ]
    )


def mixed(document: dict[str, Any]) -> str:
    kinds = document.get("requests_in_file", {})
    lines = [
        machine_line(document),
        "",
        f"{document['names']:,} names on {document['database']}, Zipf exponent "
        f"{document['zipf_exponent']:g}, {document['connections']} connections, "
        f"{document['warmup_seconds']:g} s warm-up + {document['seconds_per_run']:g} s per run; "
        f"requests: {kinds.get('name', 0):,} name lookups, {kinds.get('free', 0):,} "
        f"availability checks, {kinds.get('addr', 0):,} /addr (cycled); "
        f"{document['registrations_per_minute']:g} registrations a minute.",
        "",
        "| access log | req/s | p50 ms | p99 ms | server CPU | answered by (/metrics) "
        "| registrations (acknowledged p50 / max) | server log |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for run in document["runs"]:
        shares = ", ".join(f"{key} {share:.1%}" for key, share in run["layer_shares"].items())
        registered = run["registrations"]
        acks = (
            f"{registered['posted']}: {registered['ack_p50_ms']} / {registered['ack_max_ms']} ms"
            if registered["posted"]
            else "none"
        )
        lines.append(
            f"| {'on' if run['access_log'] else 'off'} | {run['rps']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['server_cpu']:.0%} | {shares} | "
            f"{acks} | {run['server_log_bytes'] / 1e6:.1f} MB |"
        )
    if "access_log_cost" in document:
        lines += [
            "",
            f"The access log costs **{document['access_log_cost']:.1%}** of the throughput "
            "(mean of the runs with it on against the runs with it off).",
        ]
    return "\n".join(lines)


# (file stem, target, least ratio to the raw ceiling, most p99 ms) of issue 13, at 32
# connections; None where the issue sets no such goal.
LOOKUP_GOALS = [
    ("lookups", "hit_hot", 0.9, None),
    ("lookups", "miss", 0.9, None),
    ("lookups", "hit", 0.5, 20.0),
    ("lookups", "addr", 0.5, 20.0),
    ("lookups", "miss_cold", None, None),
    ("lookups", "addr_cold", None, None),
    ("lookups", "one_name", None, None),
    ("lookups", "hot_200", None, None),
    ("lookups-postgresql", "hit_hot", 0.9, None),
    ("lookups-postgresql", "miss", 0.9, None),
    ("lookups-postgresql", "hit", 0.25, None),
    ("lookups-postgresql", "addr", 0.25, None),
    ("lookups-postgresql", "miss_cold", None, None),
    ("lookups-postgresql", "addr_cold", None, None),
]
ACK_GOAL_P99_MS = 50.0


def goals(results: Path) -> str:
    """Issue 13's goals against the result files present, one row each."""
    lines = [
        "| figure (32 connections) | database | req/s | ratio to raw ceiling | p99 ms | goal "
        "| met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for stem, target, least_ratio, most_p99 in LOOKUP_GOALS:
        path = results / f"{stem}.json"
        if not path.exists():
            continue
        document = json.loads(path.read_text())
        run = next(
            (r for r in document["runs"] if r["target"] == target and r["connections"] == 32),
            None,
        )
        if run is None:
            continue
        wanted = []
        met = True
        if least_ratio is not None:
            wanted.append(f"ratio ≥ {least_ratio}")
            met = met and run["ratio_to_ceiling"] >= least_ratio
        if most_p99 is not None:
            wanted.append(f"p99 ≤ {most_p99:.0f} ms")
            met = met and run["p99_ms"] <= most_p99
        lines.append(
            f"| {target} | {document['database']} | {run['rps']:,.0f} | "
            f"{run['ratio_to_ceiling']:.2f} | {run['p99_ms']:.1f} | {', '.join(wanted) or '-'} "
            f"| {('yes' if met else '**no**') if wanted else '-'} |"
        )
    for stem in ("registrations", "registrations-postgresql", "registrations-ack-only",
                 "registrations-postgresql-ack-only"):  # fmt: skip
        path = results / f"{stem}.json"
        if not path.exists():
            continue
        document = json.loads(path.read_text())
        p99 = document["ack_ms"]["p99"]
        lines.append(
            f"| burst of {document['registrations']} registrations, acknowledgement | "
            f"{document['database']} | | | {p99:.1f} | p99 ≤ {ACK_GOAL_P99_MS:.0f} ms | "
            f"{'yes' if p99 <= ACK_GOAL_P99_MS else '**no**'} |"
        )
    for stem in ("mixed", "mixed-postgresql"):
        path = results / f"{stem}.json"
        if path.exists() and "access_log_cost" in (document := json.loads(path.read_text())):
            lines.append(
                f"| access log cost, mixed workload | {document['database']} | | | | "
                f"{document['access_log_cost']:.1%} of req/s | - |"
            )
    return "\n".join(lines)


RENDER = {
    "lookups": lookups,
    "registrations": registrations,
    "backfill": backfill,
    "memory": memory,
    "mixed": mixed,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="*", type=Path, help="default: bench/results/*.json")
    parser.add_argument("--goals", action="store_true", help="issue 13's goals, met or not")
    args = parser.parse_args()
    if args.goals:
        print(goals(RESULTS))
        return
    files = args.files or sorted(RESULTS.glob("*.json"))
    for path in files:
        if not path.exists():
            path = RESULTS / path
        document = json.loads(path.read_text())
        print(f"### {path.name}\n")
        print(RENDER[document["benchmark"]](document))
        print()


if __name__ == "__main__":
    main()
