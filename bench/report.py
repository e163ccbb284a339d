"""Print the figures of bench/results/*.json as the Markdown tables of BENCHMARKS.md.

.venv/bin/python bench/report.py [lookups.json ...]
"""

from __future__ import annotations

import json
import sys
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
    lines = [
        machine_line(document),
        "",
        f"{document['names']:,} names on {document['database']}, answer "
        f"{document['answer_bytes']} bytes (ceiling {document['ceiling_answer_bytes']}); "
        f"{document['warmup_seconds']:g} s warm-up + {document['seconds_per_run']:g} s per run; "
        f"cold miss (SQL then chain, one at a time): p50 {document['cold_miss']['p50_ms']} ms, "
        f"p99 {document['cold_miss']['p99_ms']} ms.",
        "",
        "| conns | route | req/s | p50 ms | p99 ms | ratio to ceiling | server CPU | wrk CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in document["runs"]:
        ratio = run.get("ratio_to_ceiling")
        lines.append(
            f"| {run['connections']} | {run['target']} | {run['rps']:,.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {run['server_cpu']:.0%} | "
            f"{run['wrk_cpu']:.0%} |"
        )
    check = document.get("wrk_check", {})
    if check:
        one, two = check["threads_1"], check["threads_2"]
        lines += [
            "",
            f"wrk check (ceiling, 32 connections): 1 thread {one['rps']:,.0f} req/s with wrk at "
            f"{one['wrk_cpu']:.0%} of a core; 2 threads {two['rps']:,.0f} req/s "
            f"(wrk {two['wrk_cpu']:.0%}).",
        ]
    return "\n".join(lines)


def registrations(document: dict[str, Any]) -> str:
    lines = [
        machine_line(document),
        "",
        f"{document['registrations']} registrations ({document['body_bytes']}-byte bodies), "
        f"acknowledged: p50 {document['ack_ms']['p50']:.0f} ms, p99 {document['ack_ms']['p99']:.0f}"
        f" ms (all within {document['all_acknowledged_seconds']:.2f} s); drained in "
        f"{document['drain_seconds']:.1f} s, {len(document['failed'])} failed.",
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


RENDER = {
    "lookups": lookups,
    "registrations": registrations,
    "backfill": backfill,
    "memory": memory,
}


def main() -> None:
    files = [Path(arg) for arg in sys.argv[1:]] or sorted(RESULTS.glob("*.json"))
    for path in files:
        if not path.exists():
            path = RESULTS / path
        document = json.loads(path.read_text())
        print(f"### {path.name}\n")
        print(RENDER[document["benchmark"]](document))
        print()


if __name__ == "__main__":
    main()
