"""names.json: the registry dump of the original tools (read_names.js / write_names.js).

A JSON array of `{"name", "addr", "owner", "publickey"?, "signature"?}`: addresses as `0x` +
40 lowercase hex, key material verbatim, empty key fields omitted. Export writes one record
per line, sorted by name, so that the same registry always gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy.exc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import names, proofs
from app.chain.registrar import ChainRecord, Registrar
from app.db import session_scope
from app.models import PENDING, NameRecord, Registration
from app.services.records import (
    Claim,
    apply_records,
    new_registration,
    pending_record,
    skipped_chain_names,
)


class NamesFileError(ValueError):
    """The file is not a names.json the original tools would have written."""


@dataclass(frozen=True)
class NameEntry:
    name: str
    addr: str  # 40 lowercase hex
    owner: str  # 40 lowercase hex
    publickey: str
    signature: str

    def to_json(self) -> str:
        record: dict[str, str] = {"name": self.name, "addr": "0x" + self.addr}
        record["owner"] = "0x" + self.owner
        if self.publickey:
            record["publickey"] = self.publickey
        if self.signature:
            record["signature"] = self.signature
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ImportReport:
    queued: int = 0
    loaded: int = 0
    already: int = 0
    conflicts: list[str] = field(default_factory=list)
    queued_names: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # proofs that do not hold
    unproven: int = 0  # records without key material: nothing to verify


@dataclass
class ProofCheck:
    accepted: list[NameEntry]
    refused: list[str]
    unproven: int


def check_proofs(entries: list[NameEntry]) -> ProofCheck:
    """The registration proof of each record, as POST /name checks it: the key hashes to
    addr and the signature is over this name. Records without key material (old
    registrations made with `reserve`) are accepted and counted; half a proof is refused."""
    check = ProofCheck(accepted=[], refused=[], unproven=0)
    for entry in entries:
        if not entry.publickey and not entry.signature:
            check.unproven += 1
            check.accepted.append(entry)
            continue
        if not (entry.publickey and entry.signature):
            check.refused.append(
                f"{entry.name}: refused: a key without a signature, or the reverse"
            )
            continue
        try:
            proofs.verify_registration(
                name=entry.name,
                jami_id=entry.addr,
                publickey_b64=entry.publickey,
                signature_b64=entry.signature,
            )
        except (proofs.MalformedProof, proofs.ProofMismatch) as exc:
            check.refused.append(f"{entry.name}: refused: {exc}")
            continue
        check.accepted.append(entry)
    return check


async def count_exportable(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with session_scope(sessionmaker) as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(NameRecord).where(NameRecord.pending.is_(False))
            )
            or 0
        )


async def iter_entries(
    sessionmaker: async_sessionmaker[AsyncSession], chunk: int = 2_000
) -> AsyncIterator[NameEntry]:
    """Every record on chain as SQL mirrors it (pending registrations left out), by name."""
    after = ""
    while True:
        async with session_scope(sessionmaker) as session:
            rows = list(
                await session.scalars(
                    select(NameRecord)
                    .where(NameRecord.pending.is_(False), NameRecord.name > after)
                    .order_by(NameRecord.name)
                    .limit(chunk)
                )
            )
        if not rows:
            return
        for row in rows:
            yield NameEntry(
                name=row.name,
                addr=row.addr,
                owner=row.owner,
                publickey=row.publickey or "",
                signature=row.signature or "",
            )
        after = rows[-1].name


async def export_names(
    sessionmaker: async_sessionmaker[AsyncSession],
    out: TextIO,
    on_record: Callable[[], None] | None = None,
) -> int:
    """Write names.json to `out`, streaming; returns how many records."""
    count = 0
    out.write("[")
    async for entry in iter_entries(sessionmaker):
        out.write(",\n" if count else "\n")
        out.write(entry.to_json())
        count += 1
        if on_record:
            on_record()
    out.write("\n]\n" if count else "]\n")
    return count


async def skipped_records(sessionmaker: async_sessionmaker[AsyncSession]) -> list[tuple[str, str]]:
    """(name, why) of each chain record the mirror does not serve, so not exported."""
    async with session_scope(sessionmaker) as session:
        return await skipped_chain_names(session)


def _key_field(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if value is None or value in ("", "0", 0):
        return ""
    if not isinstance(value, str):
        raise NamesFileError(f"{where}: {key} is not a string")
    return value


def read_names_file(path: Path) -> list[NameEntry]:
    """Parse and check a names.json; raises NamesFileError naming the bad record."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NamesFileError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, list):
        raise NamesFileError(f"{path}: expected a JSON array of records")
    entries: list[NameEntry] = []
    seen: set[str] = set()
    for index, record in enumerate(data):
        where = f"{path}: record {index}"
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise NamesFileError(f"{where}: not an object with a string name")
        name = record["name"]
        try:
            names.to_bytes32(name)
            jami_id = names.normalize_jami_id(str(record.get("addr", "")))
            owner = names.normalize_owner(record.get("owner") or None)
        except (names.BadName, names.BadAddress) as exc:
            raise NamesFileError(f"{where} ({name!r}): {exc}") from None
        if not name or name in seen:
            raise NamesFileError(f"{where}: empty or repeated name {name!r}")
        seen.add(name)
        entries.append(
            NameEntry(
                name=name,
                addr=jami_id,
                owner=owner,
                publickey=_key_field(record, "publickey", where),
                signature=_key_field(record, "signature", where),
            )
        )
    return entries


async def load_into_cache(
    sessionmaker: async_sessionmaker[AsyncSession], entries: list[NameEntry]
) -> ImportReport:
    """Preload the SQL cache only (the original server's start-up preload): no chain writes.
    A name that folds like another one, cached or earlier in the file, is a conflict."""
    report = ImportReport()
    async with session_scope(sessionmaker) as session, session.begin():
        existing = {
            row.name: row.addr
            for row in await session.scalars(
                select(NameRecord).where(NameRecord.name.in_([e.name for e in entries]))
            )
        }
        fold_holder = {
            folded: name
            for folded, name in await session.execute(
                select(NameRecord.folded_name, NameRecord.name).where(
                    NameRecord.folded_name.in_({names.fold(e.name) for e in entries})
                )
            )
        }
        fresh = []
        for entry in entries:
            if entry.name in existing:
                if existing[entry.name] == entry.addr:
                    report.already += 1
                else:
                    report.conflicts.append(f"{entry.name}: cached for 0x{existing[entry.name]}")
                continue
            folded = names.fold(entry.name)
            holder = fold_holder.setdefault(folded, entry.name)
            if holder != entry.name:
                report.conflicts.append(f"{entry.name}: folds like {holder}, which is taken")
                continue
            fresh.append(
                (
                    entry.name,
                    ChainRecord(
                        entry.name, entry.addr, entry.owner, entry.publickey, entry.signature
                    ),
                    0,
                )
            )
        await apply_records(session, fresh)
        report.loaded = len(fresh)
    return report


async def queue_registrations(
    sessionmaker: async_sessionmaker[AsyncSession],
    registrar: Registrar,
    entries: list[NameEntry],
    batch: int = 250,
) -> ImportReport:
    """Queue each entry for the writer, skipping what the chain or the queue already binds
    to the same ID and reporting what they bind to another. Re-running it resumes."""
    report = ImportReport()
    for start in range(0, len(entries), batch):
        chunk = entries[start : start + batch]
        head = await registrar.client.block_number()
        on_chain = await registrar.records_at([entry.name for entry in chunk], head)
        async with session_scope(sessionmaker) as session:
            claims = {
                row.name: row
                for row in await session.scalars(
                    select(Registration).where(
                        Registration.name.in_([entry.name for entry in chunk]),
                        Registration.claim_name.is_not(None),
                    )
                )
            }
        for entry, record in zip(chunk, on_chain, strict=True):
            if record is not None:
                if record.addr == entry.addr:
                    report.already += 1
                else:
                    report.conflicts.append(f"{entry.name}: on chain for 0x{record.addr}")
                continue
            claim = claims.get(entry.name)
            if claim is not None:
                if claim.addr == entry.addr:
                    report.already += 1
                    if claim.state == PENDING:
                        report.queued_names.append(entry.name)
                else:
                    report.conflicts.append(f"{entry.name}: queued for 0x{claim.addr}")
                continue
            if await _queue_one(sessionmaker, entry):
                report.queued += 1
                report.queued_names.append(entry.name)
            else:
                report.conflicts.append(f"{entry.name}: its name or address is claimed here")
    return report


async def _queue_one(sessionmaker: async_sessionmaker[AsyncSession], entry: NameEntry) -> bool:
    folded = names.fold(entry.name)
    try:
        async with session_scope(sessionmaker) as session, session.begin():
            claim = Claim(
                name=entry.name,
                folded_name=folded,
                addr=entry.addr,
                owner=entry.owner,
                publickey=entry.publickey,
                signature=entry.signature,
            )
            session.add(new_registration(claim))
            if await session.get(NameRecord, entry.name) is None:
                session.add(pending_record(claim))
    except sqlalchemy.exc.IntegrityError:
        return False
    return True


async def settled_states(
    sessionmaker: async_sessionmaker[AsyncSession], queued: list[str]
) -> dict[str, tuple[str, str | None]]:
    """(state, reason) of the latest registration of each queued name."""
    states: dict[str, tuple[str, str | None]] = {}
    async with session_scope(sessionmaker) as session:
        for start in range(0, len(queued), 500):
            rows = await session.execute(
                select(Registration.name, Registration.state, Registration.reason)
                .where(Registration.name.in_(queued[start : start + 500]))
                .order_by(Registration.id)
            )
            for name, state, reason in rows:
                states[name] = (state, reason)
    return states
