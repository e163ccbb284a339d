"""Backfill: `jamins index` from a node holding 10k names into an empty database.

    .venv/bin/python bench/backfill.py                          # SQLite, then PostgreSQL
    .venv/bin/python bench/backfill.py --db sqlite

The node (anvil, the Jami chain's 4.7M gas limit) is filled by another account writing
the registrar directly in big JSON-RPC batches (tests/chain_tools.py DirectWriter); half the
records carry RSA-4096-sized key material (a 1,068-character public key and a 684-character
signature, as real clients send), half none. Then `jamins index` runs as the operator runs
it, a fresh process on an empty database, and is timed to its exit; the number of rows is
sampled meanwhile. Writes bench/results/backfill.json and .png.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common
import sqlalchemy.exc
from sqlalchemy import func, select

from app.db import make_sync_engine
from app.models import NameRecord
from app.settings import Settings
from tests.chain_tools import DirectRecord, DirectWriter, rpc, rpc_batch

GOAL_NAMES_PER_SECOND = 1000.0
PUBLICKEY_BYTES = 800  # base64: 1,068 characters, an RSA-4096 PEM public key + NUL
SIGNATURE_BYTES = 512  # base64: 684 characters


class Writer(DirectWriter):
    """DirectWriter for a node with automine off: a whole batch goes into the pool, then
    blocks are mined 25 at a time (each as full as the gas limit allows) until it is in.
    Automine makes a block per arriving transaction and gets slower as the chain grows.
    Under a burst anvil has been seen to drop a transaction and keep the later ones queued
    for ever (pending 0, queued > 0): then the rest of the batch is sent again."""

    def _wait_mined(
        self, tx_hash: str, raws: list[str], first_nonce: int, timeout: float = 300
    ) -> None:
        deadline = time.monotonic() + timeout
        while rpc(self.url, "eth_getTransactionReceipt", [tx_hash]) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tx_hash} not mined after {timeout} s")
            pool = rpc(self.url, "txpool_status", [])
            if int(pool["pending"], 16) == 0:
                mined = int(rpc(self.url, "eth_getTransactionCount", [self.address, "latest"]), 16)
                rpc_batch(
                    self.url,
                    [("eth_sendRawTransaction", [raw]) for raw in raws[mined - first_nonce :]],
                    check=False,  # the queued ones answer "already known"
                )
            rpc_batch(self.url, [("evm_mine", [])] * 25)


def records(count: int, seed: int) -> list[DirectRecord]:
    rng = random.Random(seed)
    made = []
    for index in range(count):
        keyed = index % 2 == 0
        made.append(
            DirectRecord(
                name=f"fill{index:05d}",
                jami_id=rng.randbytes(20).hex(),
                publickey=base64.b64encode(os.urandom(PUBLICKEY_BYTES)).decode() if keyed else "",
                signature=base64.b64encode(os.urandom(SIGNATURE_BYTES)).decode() if keyed else "",
            )
        )
    return made


def count_rows(database_url: str) -> int:
    engine = make_sync_engine(Settings(database_url=database_url))
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(NameRecord)) or 0)
    except sqlalchemy.exc.SQLAlchemyError:  # no schema yet while `jamins index` starts
        return 0
    finally:
        engine.dispose()


def index_once(
    node_url: str, contract: str, database_url: str, log: Path, timeout: float
) -> dict[str, Any]:
    """Run `jamins index` on an empty database; time it, and sample its row count."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JAMINS_")}
    env.update(
        {
            "JAMINS_RPC_URL": node_url,
            "JAMINS_DATABASE_URL": database_url,
            "JAMINS_CONTRACT_ADDRESS": contract,
            "JAMINS_INDEX_FROM_BLOCK": "0",
        }
    )
    samples: list[tuple[float, int]] = []
    with open(log, "wb") as sink:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "index"],
            cwd=_common.REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            while process.poll() is None:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"jamins index still running after {timeout} s")
                samples.append((round(time.monotonic() - started, 2), count_rows(database_url)))
                time.sleep(0.5)
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(15)
        elapsed = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"jamins index failed:\n{log.read_text()[-2000:]}")
    loaded = count_rows(database_url)
    samples.append((round(elapsed, 2), loaded))
    return {
        "seconds": round(elapsed, 2),
        "names": loaded,
        "names_per_second": round(loaded / elapsed, 1),
        "samples": samples,
        "output_tail": log.read_text(errors="replace")[-300:].strip(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "backfill",
        "command": _common.command_line(),
        "machine": _common.machine(),
        "names": args.names,
        "with_key_material": (args.names + 1) // 2,
        "runs": {},
    }
    with contextlib.ExitStack() as stack:
        work = _common.workdir(stack, "jamins-bench-backfill-")
        node = _common.start_anvil(stack, prune_history=True)
        _common.fund_other(node.url)
        rpc(node.url, "evm_setAutomine", [False])
        writer = Writer(node.url, _common.OTHER_KEY)
        contract = writer.deploy()
        made = records(args.names, args.seed)
        started = time.monotonic()
        for start in range(0, len(made), args.batch):
            writer.reserve_for(made[start : start + args.batch], batch=args.batch)
            print(f"  {start + args.batch:>6} names on chain", end="\r", flush=True)
        print()
        head = int(rpc(node.url, "eth_blockNumber", []), 16)
        results["chain_load_seconds"] = round(time.monotonic() - started, 1)
        results["blocks"] = head
        print(
            f"{len(made)} names written on chain in {results['chain_load_seconds']} s "
            f"({head} blocks)",
            flush=True,
        )
        for kind in args.db:
            with contextlib.ExitStack() as db_stack:
                database_url = _common.start_database(db_stack, kind, work)
                figures = index_once(
                    node.url, contract, database_url, work / f"index-{kind}.log", args.timeout
                )
            results["runs"][kind] = figures
            goal = "met" if figures["names_per_second"] >= GOAL_NAMES_PER_SECOND else "NOT met"
            print(
                f"{kind:>10}: {figures['names']} names in {figures['seconds']:.1f} s = "
                f"{figures['names_per_second']:.0f} names/s (goal ≥ "
                f"{GOAL_NAMES_PER_SECOND:.0f}/s: {goal})",
                flush=True,
            )
            if figures["names"] != args.names:
                raise RuntimeError(f"indexed {figures['names']} names, not {args.names}")
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    kinds = list(results["runs"])
    rates = [results["runs"][kind]["names_per_second"] for kind in kinds]
    left.bar(kinds, rates, color="tab:blue")
    for index, rate in enumerate(rates):
        left.text(index, rate, f"{rate:,.0f}/s", ha="center", va="bottom")
    left.axhline(GOAL_NAMES_PER_SECOND, color="grey", linestyle="--", linewidth=1)
    left.set_ylabel("names / s (jamins index, wall clock)")
    for kind in kinds:
        samples = results["runs"][kind]["samples"]
        right.plot([s[0] for s in samples], [s[1] for s in samples], label=kind)
    right.set_xlabel("seconds since `jamins index` started")
    right.set_ylabel("rows in names")
    right.grid(True, alpha=0.3)
    right.legend()
    machine = results["machine"]
    _common.save_figure(
        figure,
        path,
        f"jamins index: {results['names']:,} names over {results['blocks']} blocks, half with "
        f"RSA-4096 key material ({machine['nproc']} x {machine['cpu_model']}, {machine['date']})",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--db", choices=["sqlite", "postgresql"], nargs="+", default=["sqlite", "postgresql"]
    )
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=200, help="transactions per JSON-RPC batch")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for one index")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    _common.sigterm_as_interrupt()
    results = run(args)
    json_path = _common.write_json("backfill.json", results)
    png_path = _common.RESULTS_DIR / "backfill.png"
    plot(results, png_path)
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
