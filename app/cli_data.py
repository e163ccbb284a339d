"""`jamins index`, `jamins export`, `jamins import`: the registry's data, with progress bars."""

from __future__ import annotations

import asyncio
import sys
from contextlib import nullcontext, suppress
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.db import make_async_engine, make_sessionmaker, migrate
from app.provision import OPERATOR_ERRORS, ProvisionError, indexer_start_block
from app.runtime import Runtime, open_runtime
from app.services import portability
from app.settings import Settings
from app.workers.indexer import IndexerProgress

stderr = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    )


def _fail(message: str, code: int = 1) -> typer.Exit:
    # One line, whatever the terminal's width, and a path's brackets are not markup.
    stderr.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def require_data_dir(settings: Settings, *, database: bool = False) -> None:
    """Refuse a data dir (or SQLite file, with `database`) that does not exist: a typo in
    --data-dir must not create an empty database and report an empty registry."""
    sqlite = settings.sqlite_path()
    if sqlite is None:
        return  # PostgreSQL: no data dir is involved
    folder = settings.data_dir if settings.database_url is None else sqlite.parent
    if not folder.is_dir():
        raise _fail(
            f"no data dir at {folder}: check --data-dir / JAMINS_DATA_DIR "
            "(`jamins serve` or `jamins migrate` makes one)",
            2,
        )
    if database and not sqlite.is_file():
        raise _fail(f"no database at {sqlite}: check --data-dir / JAMINS_DATABASE_URL", 2)


def run_index(settings: Settings) -> None:
    require_data_dir(settings)
    try:
        reached, loaded = asyncio.run(_index(settings))
    except OPERATOR_ERRORS as exc:
        raise _fail(str(exc)) from None
    stderr.print(f"indexed to block {reached}: {loaded} records loaded")


def run_export(settings: Settings, file: Path | None) -> None:
    require_data_dir(settings, database=True)
    count, skipped = asyncio.run(_export(settings, file))
    # Chain records the mirror does not serve are reported one by one, never dropped silently.
    for name, why in skipped:
        stderr.print(f"skipped chain record {name!r}: {why}", markup=False)
    stderr.print(
        f"exported {count} records"
        + (f" to {file}" if file else "")
        + (f"; {len(skipped)} chain records skipped" if skipped else "")
    )


def run_import(settings: Settings, file: Path, cache_only: bool, verify: bool = True) -> None:
    require_data_dir(settings)
    try:
        entries = portability.read_names_file(file)
    except portability.NamesFileError as exc:
        raise _fail(str(exc), 2) from None
    checked = (
        portability.check_proofs(entries)
        if verify
        else portability.ProofCheck(accepted=entries, refused=[], unproven=0)
    )
    try:
        report, failed = asyncio.run(_import(settings, checked.accepted, cache_only))
    except OPERATOR_ERRORS as exc:
        raise _fail(str(exc)) from None
    report.refused, report.unproven = checked.refused, checked.unproven
    # Every record is counted once: registered, loaded, already there, or reported below.
    summary = (
        f"{report.queued} registered, {report.loaded} loaded into the cache, "
        f"{report.already} already there, {len(report.conflicts)} conflicts, "
        f"{len(report.refused)} refused, {len(failed)} failed"
    )
    if report.unproven:
        summary += f" ({report.unproven} without key material: nothing to verify)"
    stderr.print(summary, markup=False, highlight=False, soft_wrap=True)
    for line in report.conflicts + report.refused + failed:
        stderr.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if report.conflicts or report.refused or failed:
        raise typer.Exit(1)


async def _index(settings: Settings) -> tuple[int, int]:
    async with open_runtime(settings, provision=True, command=True) as runtime:
        if not runtime.is_leader:
            raise ProvisionError("another jamins server is the leader and indexes this database")
        start = await indexer_start_block(settings, runtime.sessionmaker)
        with _progress() as progress:
            task = progress.add_task("indexing blocks", total=None)

            def show(state: IndexerProgress) -> None:
                progress.update(
                    task,
                    completed=state.indexed_block - start + 1,
                    total=state.head_block - start + 1,
                    description=f"indexing blocks ({state.names_loaded} records)",
                )

            indexer = runtime.make_indexer(start, on_progress=show)
            reached = await indexer.catch_up()
        return reached, indexer.names_loaded


async def _export(settings: Settings, file: Path | None) -> tuple[int, list[tuple[str, str]]]:
    migrate(settings)
    engine = make_async_engine(settings)
    sessionmaker = make_sessionmaker(engine)
    try:
        total = await portability.count_exportable(sessionmaker)
        handle = open(file, "w", encoding="utf-8") if file else nullcontext(sys.stdout)  # noqa: SIM115
        with _progress() as progress, handle as out:
            task = progress.add_task("exporting", total=total)
            count = await portability.export_names(
                sessionmaker, out, on_record=lambda: progress.advance(task)
            )
        return count, await portability.skipped_records(sessionmaker)
    finally:
        await engine.dispose()


async def _import(
    settings: Settings, entries: list[portability.NameEntry], cache_only: bool
) -> tuple[portability.ImportReport, list[str]]:
    if cache_only:
        migrate(settings)
        engine = make_async_engine(settings)
        try:
            return await portability.load_into_cache(make_sessionmaker(engine), entries), []
        finally:
            await engine.dispose()
    async with open_runtime(settings, provision=True, command=True) as runtime:
        report = await portability.queue_registrations(
            runtime.sessionmaker, runtime.registrar, entries
        )
        failed = await _drain(runtime, report.queued_names)
    return report, failed


async def _drain(runtime: Runtime, queued: list[str]) -> list[str]:
    """Wait until every queued registration is settled: by our own writer when we hold
    the leader lock, else by the running server's. Returns the failures."""
    writer_task = None
    writer = runtime.make_writer() if runtime.is_leader and queued else None
    if writer is not None:
        writer_task = asyncio.create_task(writer.run())
    states: dict[str, tuple[str, str | None]] = {}
    try:
        with _progress() as progress:
            task = progress.add_task("registering", total=len(queued))
            while True:
                states = await portability.settled_states(runtime.sessionmaker, queued)
                settled = [name for name, (state, _) in states.items() if state != "pending"]
                progress.update(task, completed=len(settled))
                if len(settled) == len(queued):
                    break
                await asyncio.sleep(0.5)
    finally:
        if writer_task is not None:
            writer_task.cancel()
            with suppress(asyncio.CancelledError):
                await writer_task
    return [
        f"{name}: {reason}" for name, (state, reason) in sorted(states.items()) if state == "failed"
    ]
