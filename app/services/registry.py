"""The use cases: look a name or an address up, register a name, report a registration.

Lookups are answered from SQL. A miss reads the chain and stores what it finds (fill on
read), so a server pointed at a chain that already holds names serves them. A name the
chain does not hold is remembered as free for `negative_cache_seconds` (default 5 s, one
Clique block): an availability check asks for the same prefixes again and again while the
user types, and this keeps those misses off the node without hiding a name registered
elsewhere for longer than a block. Names accepted here are in SQL from the moment they are
accepted, so the negative cache never hides them.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import sqlalchemy.exc
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import names, proofs
from app.chain.registrar import ZERO_ADDRESS, ChainRecord, Registrar, servable
from app.db import Claims, LookupReader, NameRow, session_scope
from app.errors import (
    AddressHasName,
    AddressNotRegistered,
    BadRequest,
    ChainUnavailable,
    InvalidAddress,
    InvalidName,
    NameNotRegistered,
    NameTaken,
    ProofRejected,
    RegistrationNotFound,
    RegistrationPending,
    RegistrationsDisabled,
    ServiceUnavailable,
)
from app.models import NameRecord, Registration
from app.services.acceptance import GroupCommit
from app.services.admission import Admission
from app.services.answers import Answers, answer_bytes
from app.services.lookalikes import refuse_lookalike
from app.services.records import (
    Claim,
    RegistrationStatus,
    chain_record,
    new_registration,
    pending_record,
)

logger = logging.getLogger(__name__)


class RegistrationRequest(BaseModel):
    """The body a Jami client POSTs to register a name."""

    model_config = ConfigDict(extra="ignore")

    addr: str = Field(description="Jami ID: 40 hex, optional jami:/ring:/0x prefix.")
    owner: str | None = Field(
        default=None, description="Ethereum owner address (40 hex, optional 0x)."
    )
    publickey: str = Field(description="base64 of the account's public key (PEM or DER).")
    signature: str = Field(description="base64 RSASSA-PKCS1-v1_5 SHA-512 signature over the name.")


@dataclass(frozen=True)
class NameView:
    """A record as lookups return it; addresses are 40 lowercase hex."""

    name: str
    addr: str
    owner: str
    publickey: str | None
    signature: str | None
    folded_name: str
    # The answer cache's stamp taken before the read; None when it must not be kept.
    cache_token: int | None = None

    @property
    def held_without_address(self) -> bool:
        """Owned on chain with a zero address: taken (reserveFor refuses it), yet bound
        to no Jami ID."""
        return self.addr == ZERO_ADDRESS

    def body(self) -> bytes:
        """The `GET /name/{name}` answer, as the answer cache keeps it."""
        # A name held on chain without an address is taken, and bound to no ID: "addr" ""
        # (which a Jami client reads as "not found"; a registration of it answers 409).
        addr = "" if self.held_without_address else "0x" + self.addr
        answer: dict[str, str] = {"name": self.name, "addr": addr}
        if self.publickey is not None:
            answer["publickey"] = self.publickey
        if self.signature is not None:
            answer["signature"] = self.signature
        return answer_bytes(answer)


@dataclass(frozen=True)
class AddrView:
    """A reverse answer: the name whose forward lookup gives the address."""

    name: str
    jami_id: str
    cache_token: int | None


def _view(record: NameRecord | NameRow, cache_token: int | None) -> NameView:
    return NameView(
        name=record.name,
        addr=record.addr,
        owner=record.owner,
        publickey=record.publickey or None,
        signature=record.signature or None,
        folded_name=record.folded_name,
        # A pending record is never kept as final.
        cache_token=None if record.pending else cache_token,
    )


def _chain_candidates(name: str, folded: str) -> list[str]:
    """On-chain keys a lookup of `name` may be stored under, most likely first.

    The chain matches bytes exactly; clients register the ASCII-lowercased form.
    """
    nfc = unicodedata.normalize("NFC", name)
    ascii_lowered = "".join(ch.lower() if ch.isascii() else ch for ch in nfc)
    candidates: list[str] = []
    for candidate in (ascii_lowered, nfc, folded):
        if candidate not in candidates and len(candidate.encode()) <= names.MAX_BYTES:
            candidates.append(candidate)
    return candidates


# Rows pointing at one ID read per reverse lookup: each costs a signature check, and
# anyone can add rows. Pending rows (accepted here) come first so none crowds them out;
# any other proven binding is also the chain's reverse entry, read after these.
REVERSE_CANDIDATES = 4
# What NameService.stored_name_body returns for a name SQL does not hold and the negative
# cache knows free (its 404).
KNOWN_FREE: Literal[False] = False


def _proves_binding(record: NameRecord | NameRow, jami_id: str) -> bool:
    """Whether a SQL row may speak for the ID it points at: accepted here (its proof was
    verified then), or its stored key is that ID's and signs that very name. A record's
    address alone proves nothing: a name's owner may set it to any ID (setAddress with
    primary=false) without the ID's reverse entry, and cannot sign for that ID's key."""
    if record.pending:
        return True
    if not record.publickey or not record.signature:
        return False
    try:
        proofs.verify_registration(
            name=record.name,
            jami_id=jami_id,
            publickey_b64=record.publickey,
            signature_b64=record.signature,
        )
    except (proofs.MalformedProof, proofs.ProofMismatch):
        return False
    return True


class NameService:
    """Lookups and registrations over the SQL cache and the registrar."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        registrar: Registrar | None,
        negative_cache_seconds: float,
        registrations_enabled: bool,
        lookup_cache_seconds: float = 0,
        admission: Admission | None = None,
        owner_address: str | None = None,
        serve_pending: bool = False,
        reader: LookupReader | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        # Lookups' reads of the names table: a point read without an ORM session.
        self._reader = reader
        # Whether lookups answer names whose registration is still pending: safe only
        # when no one but this server writes the registrar (see the README).
        self.serve_pending = serve_pending
        # Who owns the records this server writes on chain: its signer (40 hex). Nothing
        # proves the body's `owner`, and the owner may disown, transfer or re-point a name.
        self.owner_address = (owner_address or "").lower().removeprefix("0x") or None
        self.admission = admission
        self.registrar = registrar
        self.registrations_enabled = registrations_enabled
        # Answer bodies of recent hits, served by app.api.hot_path without a database trip.
        self.answers = Answers(ttl=lookup_cache_seconds, negative_ttl=negative_cache_seconds)
        # One lock per (folded name, Jami ID) being registered: identical copies queue.
        self._registering: dict[tuple[str, str], asyncio.Lock] = {}
        self._registering_users: Counter[tuple[str, str]] = Counter()
        # Writes accepted registrations, several per fsync (app/services/acceptance.py).
        self.acceptances = GroupCommit(sessionmaker)
        # Called after each accepted registration (the writer's wake-up).
        self.on_accepted: list[Callable[[], None]] = []
        # Set by the balance watch (app/metrics.py) while the signer cannot pay for one
        # more registration: registrations then answer 503 with this reason.
        self.registrations_paused: str | None = None
        # Set by the chain watch (app/workers/chain_watch.py) while the chain went backwards or
        # lost the registrar: registrations then answer 503 with this reason.
        self.chain_problem: str | None = None
        # (kind, result) -> count, for /metrics: cache_hit (the answer cache, counted by
        # app.api.hot_path), hit (SQL), negative_hit, miss (chain read).
        self.cache_counts: Counter[tuple[str, str]] = Counter()

    @property
    def reader(self) -> LookupReader:
        if self._reader is None:
            self._reader = LookupReader(self.sessionmaker.kw["bind"])
        return self._reader

    def describe(self) -> dict[str, object]:
        """What /healthz shows: liveness and the registrar this server serves."""
        return {
            "status": "ok",
            "registrar": self.registrar.address.lower() if self.registrar else None,
            "registrations": "enabled" if self.registrations_enabled else "disabled",
        }

    def records_changed(self, folded_names: Iterable[str]) -> None:
        """These names changed (on chain, or settled by the writer): the workers' hook into
        the answer cache's one invalidation entry point."""
        self.answers.changed(folded_names=folded_names)

    # -- lookups ------------------------------------------------------------------------

    async def lookup_name(self, name: str) -> NameView:
        """The record of `name` (any case); NameNotRegistered, InvalidName or a 503
        (RegistrationPending while a registration waits on a registrar others write)."""
        try:
            folded = names.check_lookup_name(name)
        except names.BadName as exc:
            logger.debug("invalid name: %s", exc)
            raise InvalidName() from exc
        stamp = self.answers.stamp()
        record = await self.reader.name(folded)
        if record is not None:
            self.cache_counts["name", "hit"] += 1
            return self._answerable(record, stamp)
        if self.answers.name_missing(folded):
            self.cache_counts["name", "negative_hit"] += 1
            raise NameNotRegistered()
        self.cache_counts["name", "miss"] += 1
        found = await self._find_on_chain(name, folded)
        if found is None:
            self.answers.keep_missing_name(folded, stamp)
            raise NameNotRegistered()
        return self._answerable(await self._fill(found), stamp)

    async def name_body(self, name: str) -> bytes:
        """The `GET /name/{name}` answer body, kept in the answer cache when final."""
        view = await self.lookup_name(name)
        body = view.body()
        self.answers.keep_name(view.folded_name, body, view.cache_token)
        return body

    async def stored_name_body(self, folded: str) -> bytes | Literal[False] | None:
        """The `GET /name/{name}` answer of the name folded as `folded` when SQL holds
        it and it may be answered (kept in the answer cache when final); KNOWN_FREE when SQL
        holds no row and the negative cache knows the name free (the 404); None otherwise,
        for lookup_name to decide (the chain, a pending record)."""
        stamp = self.answers.stamp()
        record = await self.reader.name(folded)
        if record is None:
            if self.answers.name_missing(folded):
                # As lookup_name: SQL has no row and the chain was asked lately.
                self.cache_counts["name", "negative_hit"] += 1
                return KNOWN_FREE
            return None
        try:
            view = self._answerable(record, stamp)
        except RegistrationPending:
            return None  # lookup_name answers it (its 503), with the same rule
        self.cache_counts["name", "hit"] += 1
        body = view.body()
        self.answers.keep_name(folded, body, view.cache_token)
        return body

    async def stored_addr_body(self, jami_id: str) -> bytes | None:
        """The `GET /addr/{addr}` answer of `jami_id` (40 lowercase hex) when SQL alone
        decides it as lookup_addr would, kept when final; None when lookup_addr must
        decide (the chain, the negative cache, a pending record, nothing proven)."""
        if jami_id == ZERO_ADDRESS:
            return None
        stamp = self.answers.stamp()
        for record in await self.reader.pointing_at(jami_id, REVERSE_CANDIDATES):
            if not _proves_binding(record, jami_id):
                continue
            try:
                folded = names.check_lookup_name(record.name)
            except names.BadName:
                continue  # as _forward_gives: a name no lookup gives is no answer
            # One row per fold: a row stored under its name's fold is the row that
            # name's lookup reads, so it is asked for only when stored under another.
            forward = record if record.folded_name == folded else await self.reader.name(folded)
            if forward is None or (forward.pending and not self.serve_pending):
                return None
            if forward.addr != jami_id or forward.name != record.name:
                continue
            self.cache_counts["addr", "hit"] += 1
            body = answer_bytes({"name": record.name})
            self.answers.keep_addr(jami_id, body, None if forward.pending else stamp)
            return body
        return None

    def _answerable(self, record: NameRecord | NameRow, stamp: int) -> NameView:
        if record.pending and not self.serve_pending:
            # Another account may still bind this name first in the same block: a 200
            # now could be contradicted, and clients keep every 200 forever.
            raise RegistrationPending()
        return _view(record, stamp)

    async def lookup_addr(self, addr: str) -> AddrView:
        """The name bound to the Jami ID `addr`, only when looking that name up through
        this server gives `addr` back (the ENS rule: a reverse record alone proves
        nothing, anyone can point one anywhere); AddressNotRegistered, InvalidAddress,
        503."""
        try:
            jami_id = names.normalize_jami_id(addr)
        except names.BadAddress as exc:
            raise InvalidAddress() from exc
        if jami_id == ZERO_ADDRESS:
            raise AddressNotRegistered()  # what a name held without an address has
        stamp = self.answers.stamp()
        candidates = [
            record.name
            for record in await self.reader.pointing_at(jami_id, REVERSE_CANDIDATES)
            if _proves_binding(record, jami_id)
        ]
        for candidate in candidates:
            confirmed = await self._forward_gives(candidate, jami_id, stamp)
            if confirmed is not None:
                self.cache_counts["addr", "hit"] += 1
                return confirmed
        if self.answers.addr_missing(jami_id):
            self.cache_counts["addr", "negative_hit"] += 1
            raise AddressNotRegistered()
        self.cache_counts["addr", "miss"] += 1
        registrar = self._registrar()
        chain_name = (await registrar.view([], jami_id=jami_id)).reverse_name
        if chain_name is not None and chain_name not in candidates:
            confirmed = await self._forward_gives(chain_name, jami_id, stamp)
            if confirmed is not None:
                return confirmed
        self.answers.keep_missing_addr(jami_id, stamp)
        raise AddressNotRegistered()

    async def addr_body(self, addr: str) -> bytes:
        """The `GET /addr/{addr}` answer body, kept in the answer cache when final."""
        found = await self.lookup_addr(addr)
        body = answer_bytes({"name": found.name})
        self.answers.keep_addr(found.jami_id, body, found.cache_token)
        return body

    async def _forward_gives(self, name: str, jami_id: str, stamp: int) -> AddrView | None:
        """The reverse answer `name` when its forward lookup gives `jami_id`, else None."""
        try:
            forward = await self.lookup_name(name)
        except (InvalidName, NameNotRegistered):
            return None
        if forward.addr != jami_id or forward.name != name:
            return None
        return AddrView(name, jami_id, stamp if forward.cache_token is not None else None)

    async def registration_status(self, name: str) -> RegistrationStatus:
        """What became of the latest registration of `name` accepted by this server."""
        try:
            folded = names.check_lookup_name(name)
        except names.BadName as exc:
            raise InvalidName() from exc
        async with session_scope(self.sessionmaker) as session:
            registration = await session.scalar(
                select(Registration)
                .where(Registration.folded_name == folded)
                .order_by(Registration.id.desc())
                .limit(1)
            )
        if registration is None:
            raise RegistrationNotFound()
        return RegistrationStatus.of(registration)

    # -- registration -------------------------------------------------------------------

    async def register(
        self, name: str, request: RegistrationRequest, *, client: str | None = None
    ) -> None:
        """Accept a registration durably (a pending row in SQL) or raise why not.

        `client` is the caller's address, for the per-client rate limit. Identical copies
        (same name, same ID: a retrying client) that arrive together are decided one
        after the other, so every copy sees the first one's row and answers 200."""
        try:
            folded = names.check_registration_name(name)
        except names.BadName as exc:
            logger.info("registration refused, invalid name: %s", exc)
            raise InvalidName() from exc
        try:
            jami_id = names.normalize_jami_id(request.addr)
        except names.BadAddress as exc:
            raise InvalidAddress() from exc
        key = (folded, jami_id)
        lock = self._registering.setdefault(key, asyncio.Lock())
        self._registering_users[key] += 1
        try:
            async with lock:
                await self._register(name, folded, jami_id, request, client)
        finally:
            self._registering_users[key] -= 1
            if not self._registering_users[key]:
                del self._registering_users[key]
                del self._registering[key]

    async def _register(
        self,
        name: str,
        folded: str,
        jami_id: str,
        request: RegistrationRequest,
        client: str | None,
    ) -> None:
        try:
            # Checked for compatibility, never used: see `owner_address`.
            names.normalize_owner(request.owner)
        except names.BadAddress as exc:
            raise BadRequest("invalid owner") from exc
        try:
            proofs.verify_registration(
                name=name,
                jami_id=jami_id,
                publickey_b64=request.publickey,
                signature_b64=request.signature,
            )
        except proofs.MalformedProof as exc:
            raise BadRequest(str(exc)) from exc
        except proofs.ProofMismatch as exc:
            raise ProofRejected(str(exc)) from exc
        if not self.registrations_enabled:
            raise RegistrationsDisabled()
        if self.registrations_paused is not None:
            raise ServiceUnavailable(self.registrations_paused)
        if self.chain_problem is not None:
            raise ServiceUnavailable(f"{self.chain_problem}; try again later")
        if self.owner_address is None:
            raise RegistrationsDisabled()
        owner = self.owner_address

        # Everything SQL holds against this registration, in one read.
        claims = await self.reader.claims(
            folded, jami_id, names.name_skeleton(name), REVERSE_CANDIDATES
        )
        if self._check_sql(folded, jami_id, claims):
            return  # the same binding already exists: idempotent
        if await self._check_chain(name, folded, jami_id):
            return
        refuse_lookalike(name, claims.lookalike)  # README "Name policy"
        if self.admission is not None:
            # Only registrations that would join the queue count: a retry of an accepted
            # one, or a 403/409, costs the chain nothing.
            self.admission.check_queue(claims.pending)
            self.admission.take(client or "unknown")
        token_taken = self.admission is not None

        claim = Claim(
            name=name,
            folded_name=folded,
            addr=jami_id,
            owner=owner,
            publickey=request.publickey,
            signature=request.signature,
        )
        registration = new_registration(claim)
        record = pending_record(claim)
        try:
            # Durable on return, in a transaction shared with the acceptances of the moment.
            await self.acceptances.store([registration, record])
        except sqlalchemy.exc.IntegrityError:
            # Another request claimed the name or the address between our check and
            # our insert: answer as if it had come first.
            claims = await self.reader.claims(
                folded, jami_id, names.name_skeleton(name), REVERSE_CANDIDATES
            )
            if self._check_sql(folded, jami_id, claims):
                if token_taken and self.admission is not None:
                    # A copy accepted by another worker: this one joins no queue.
                    self.admission.give_back(client or "unknown")
                return
            raise NameTaken() from None
        logger.info("accepted %r for %s", name, jami_id)
        self.answers.changed(folded_names=[folded], jami_ids=[jami_id])
        for callback in self.on_accepted:
            callback()

    def _check_sql(self, folded: str, jami_id: str, claims: Claims) -> bool:
        """True when SQL already binds this name to this ID; raises when it conflicts."""
        for addr in (claims.name_addr, claims.claim_addr):  # its names row, its claim
            if addr is not None:
                if addr == jami_id:
                    return True
                raise NameTaken()
        # Only a record that proves the binding says "this ID has a name": anyone can
        # point a name of theirs at any ID (setAddress, not primary) without a reverse
        # entry, and the chain would still accept this registration.
        by_addr = next(
            (record.name for record in claims.pointing if _proves_binding(record, jami_id)),
            claims.addr_claim,
        )
        if by_addr is not None:
            if names.fold(by_addr) == folded:
                return True  # the same binding, committed after our first reads
            raise AddressHasName(name=by_addr, addr=jami_id)
        return False

    async def _check_chain(self, name: str, folded: str, jami_id: str) -> bool:
        """Like _check_sql, against the chain (which SQL may not have seen yet), in one
        batch of reads."""
        candidates = _chain_candidates(name, folded)
        view = await self._registrar().view(candidates, jami_id=jami_id, mostly_free=True)
        found = next((record for record in view.records if record is not None), None)
        # Records no lookup could ask for are not stored (`_fill` refuses them), but they
        # still decide the answer: the chain refuses the registration, so never a 404
        # ("free" to a Jami client) where the chain says taken.
        if found is not None:
            if servable(found.name):
                await self._fill(found)
            if found.addr == jami_id:
                return True
            raise NameTaken()
        if any(owner != "0" * 40 for owner in view.owners):
            raise NameTaken()  # owned with no address: reserveFor would refuse it
        if view.reverse_name is not None:
            record = (await self._registrar().records_at([view.reverse_name]))[0]
            if record is not None and record.addr == jami_id and servable(record.name):
                await self._fill(record)
                if names.fold(record.name) == folded:
                    return True  # bound meanwhile, to this very name
            raise AddressHasName(name=view.reverse_name, addr=jami_id)
        return False

    # -- chain reads --------------------------------------------------------------------

    def _registrar(self) -> Registrar:
        if self.registrar is None:
            raise ChainUnavailable()
        return self.registrar

    async def _find_on_chain(self, name: str, folded: str) -> ChainRecord | None:
        """The chain's record for the lookup of `name`: the first candidate key that holds
        a servable name with the same fold."""
        records = await self._registrar().records_at(_chain_candidates(name, folded))
        return next(
            (
                record
                for record in records
                if record is not None
                and servable(record.name)
                and names.fold(record.name) == folded
            ),
            None,
        )

    async def _fill(self, found: ChainRecord) -> NameRecord:
        """Store a record read from the chain; returns what SQL holds for its name."""
        folded = names.fold(found.name)
        if not servable(found.name):
            raise NameNotRegistered()  # never stored, never served (the indexer reports it)
        try:
            async with session_scope(self.sessionmaker) as session, session.begin():
                existing = await session.scalar(
                    select(NameRecord).where(NameRecord.folded_name == folded)
                )
                if existing is not None:
                    return existing
                record = chain_record(found)
                session.add(record)
                return record
        except sqlalchemy.exc.IntegrityError:
            async with session_scope(self.sessionmaker) as session:
                existing = await session.scalar(
                    select(NameRecord).where(NameRecord.folded_name == folded)
                )
            if existing is None:
                raise
            return existing
