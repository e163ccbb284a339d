"""The single transaction writer: accepted registrations → reserveFor transactions.

It assigns nonces itself and keeps several transactions in flight, so that every block
carries as many registrations as fit. Each signed transaction is written to SQL before it
is sent, so a restart re-broadcasts the very same bytes instead of losing or doubling a
registration. Success is decided from what every node keeps, archive or not: the
receipt's logs (a mined `reserveFor` that found the name taken emits nothing and does not
revert) and, to say why one failed, the current state. Never from the state at the
receipt's block: a pruned or restarted node no longer has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from eth_typing import HexStr
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from web3.exceptions import ContractLogicError

from app.chain.client import ChainClient, ChainRejected, FeeCapExceeded
from app.chain.registrar import ZERO_ADDRESS, Registrar
from app.chain.signer import SignedTx, Signer
from app.db import session_scope
from app.errors import ServiceUnavailable
from app.models import CONFIRMED, FAILED, PENDING, NameRecord, Registration, utcnow
from app.workers.reconcile import reconcile_confirmed

logger = logging.getLogger(__name__)

GAS_MARGIN = 1.2
MAX_SEND_ATTEMPTS = 5
# Registrations come in bursts, and each acceptance wakes the writer. A step (SQL reads, a
# signature, the node's round trips per transaction) runs on the loop that acknowledges
# them: after a wake-up the writer waits until the wake-ups stop for QUIET_SECONDS (at most
# QUIET_MAX_SECONDS), so a burst is acknowledged first and sent in one step. A block takes
# seconds: the wait delays no confirmation by a block.
QUIET_SECONDS = 0.02
QUIET_MAX_SECONDS = 0.2


class WriterPaused(Exception):
    """The node refused a transaction: the writer resynchronises and waits, as for an
    outage. Internal to the writer's loop; never an HTTP answer."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class Mined:
    """What a registration's receipt says."""

    block: int
    reverted: bool
    bound: bool  # its logs show the name bound to the address


@dataclass(frozen=True)
class GasPolicy:
    chain_id: int
    gas_price_wei: int | None  # None: ask the node


async def current_gas_price(client: ChainClient, policy: GasPolicy) -> int:
    if policy.gas_price_wei is not None:
        return policy.gas_price_wei
    return int(await client.call(client.w3.eth.gas_price))


async def estimate_gas(client: ChainClient, *, sender: str, to: str | None, data: str) -> int:
    """The node's estimate plus a margin, capped at the block gas limit."""
    tx: dict[str, str] = {"from": sender, "data": data}
    if to is not None:
        tx["to"] = to
    estimate = await client.call(client.w3.eth.estimate_gas(tx))  # type: ignore[arg-type]
    block = await client.get_block("latest")
    return min(int(estimate * GAS_MARGIN), int(block["gasLimit"]))


def _already_known(exc: ChainRejected) -> bool:
    """The node refused a transaction because it already has it (geth, anvil wording)."""
    text = str(exc).lower()
    return "already known" in text or "already imported" in text


async def deploy_registrar(
    client: ChainClient, signer: Signer, policy: GasPolicy, bytecode: str, timeout: float = 120
) -> tuple[str, int]:
    """Deploy the registrar; returns (address 0x-hex lowercase, block number)."""
    nonce = await client.call(client.w3.eth.get_transaction_count(signer.address, "pending"))
    gas = await estimate_gas(client, sender=signer.address, to=None, data=bytecode)
    signed = signer.sign_legacy(
        nonce=nonce,
        gas=gas,
        gas_price=await current_gas_price(client, policy),
        to=None,
        data=bytecode,
        chain_id=policy.chain_id,
    )
    try:
        await client.call(client.w3.eth.send_raw_transaction(HexStr(signed.raw)))
    except ChainRejected as exc:
        # Several workers starting together sign the very same deployment: the node
        # already has it, and its receipt serves them all.
        if not _already_known(exc):
            raise
    async with asyncio.timeout(timeout):
        while True:
            receipt = await client.receipt(signed.tx_hash)
            if receipt is not None:
                break
            await asyncio.sleep(0.5)
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise RuntimeError(f"registrar deployment failed in transaction {signed.tx_hash}")
    return str(receipt["contractAddress"]).lower(), int(receipt["blockNumber"])


class TxWriter:
    """The background task that puts pending registrations on chain."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        client: ChainClient,
        registrar: Registrar,
        signer: Signer,
        policy: GasPolicy,
        poll_seconds: float,
        max_in_flight: int,
        confirmations: int = 0,
        on_settled: Callable[[str], None] | None = None,
        mine_stalled: Callable[[], Awaitable[None]] | None = None,
        stuck_after: float = 120.0,
        quiet_seconds: float = QUIET_SECONDS,
        quiet_max_seconds: float = QUIET_MAX_SECONDS,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.client = client
        self.registrar = registrar
        self.signer = signer
        self.policy = policy
        self.poll_seconds = poll_seconds
        self.max_in_flight = max_in_flight
        self.confirmations = confirmations
        # On an automining node, a burst of transactions can leave some in the pool until
        # the next one arrives: the embedded default passes a function that mines a block.
        self.mine_stalled = mine_stalled
        self.on_settled = on_settled
        self.next_nonce: int | None = None
        # Nonces taken by gap-filling transfers, until mined.
        self.fillers: set[int] = set()
        self.send_attempts: dict[int, int] = {}
        self._wake = asyncio.Event()
        self.state = "starting"
        self.reconciled = False
        # Steps failed in a row, and why the last one did: /readyz and /metrics show a
        # writer that cannot make progress.
        self.failures = 0
        self.last_error: str | None = None
        # Since when every step has waited on an outage, and how long that may last
        # before it counts as not making progress either.
        self.waiting_since: float | None = None
        self.stuck_after = stuck_after
        self.quiet_seconds = quiet_seconds
        self.quiet_max_seconds = quiet_max_seconds

    def wake(self) -> None:
        """Tell the writer that a registration was accepted."""
        self._wake.set()

    def problem(self) -> str | None:
        """Why the writer cannot make progress, else None: two steps in a row failed on
        something other than an outage, or an outage has paused it for `stuck_after`."""
        if self.failures >= 2:
            return f"writer failing ({self.failures} steps in a row): {self.last_error}"
        if self.waiting_since is not None:
            waited = time.monotonic() - self.waiting_since
            if waited >= self.stuck_after:
                return f"writer paused for {waited:.0f} s: {self.last_error}"
        return None

    async def run(self) -> None:
        """Work until cancelled; chain and database outages only pause it."""
        backoff = self.poll_seconds
        while True:
            self._wake.clear()  # a wake-up during the step is kept for the wait below
            try:
                await self.step()
                self.state = "running"
                self.failures = 0
                self.last_error = None
                self.waiting_since = None
                backoff = self.poll_seconds
            except (ServiceUnavailable, WriterPaused) as exc:
                # Waiting on something /readyz already shows (the node, the database) or
                # that answers 503 itself (an unfunded signer): not a stuck writer.
                self.state = "waiting for " + exc.detail
                logger.warning("writer paused: %s", exc.detail)
                self.next_nonce = None
                self.last_error = exc.detail
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
                backoff = min(backoff * 2, 30.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("writer step failed")
                self.state = "failing"
                self._failed(f"{type(exc).__name__}: {exc}")
                backoff = min(backoff * 2, 30.0)
            # With every slot in flight, or nothing to send, only a receipt (next poll) or
            # an accepted registration (a wake-up) can change anything.
            try:
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            except TimeoutError:
                continue
            await self._until_quiet()

    async def _until_quiet(self) -> None:
        """Wait until no wake-up came for quiet_seconds, or quiet_max_seconds passed."""
        deadline = time.monotonic() + self.quiet_max_seconds
        while (left := deadline - time.monotonic()) > 0:
            self._wake.clear()
            try:
                async with asyncio.timeout(min(self.quiet_seconds, left)):
                    await self._wake.wait()
            except TimeoutError:
                return

    def _failed(self, reason: str) -> None:
        self.next_nonce = None
        self.failures += 1
        self.last_error = reason

    async def step(self) -> bool:
        """Settle what was mined, then send what fits. True when more work is waiting."""
        if self.next_nonce is None:
            await self._recover()
        in_flight = await self._settle_in_flight()
        if not in_flight and not self.fillers and await self._next_unsent() is None:
            # Idle: no nonce to check before a send, nor gap below one in flight. (A
            # server's idle writer asked the node every poll, for nothing.)
            return False
        await self._check_nonces()
        sent = 0
        while in_flight + sent < self.max_in_flight:
            registration = await self._next_unsent()
            if registration is None:
                return False
            if await self._send(registration):
                sent += 1
        return True

    # -- recovery -----------------------------------------------------------------------

    async def _recover(self) -> None:
        """Make SQL and the node agree on nonces after a start, crash or rejection."""
        if not self.reconciled:
            # Once per writer: the node may have come back without its last blocks.
            await reconcile_confirmed(
                sessionmaker=self.sessionmaker, client=self.client, registrar=self.registrar
            )
            self.reconciled = True
        w3 = self.client.w3
        mined_count = await self.client.call(
            w3.eth.get_transaction_count(self.signer.address, "latest")
        )
        for registration in await self._in_flight():
            assert registration.nonce is not None and registration.raw_tx is not None
            receipt = await self._receipt(registration)
            if receipt is not None:
                continue  # settled below
            if registration.nonce < mined_count:
                # That nonce was used by another transaction: sign this one again later.
                await self._unsend(registration.id)
                continue
            try:
                await self._broadcast(registration.raw_tx)
            except ChainRejected as exc:
                logger.warning("re-broadcast of %r refused: %s", registration.name, exc)
                await self._unsend(registration.id)
        self.next_nonce = await self.client.call(
            w3.eth.get_transaction_count(self.signer.address, "pending")
        )
        logger.info("writer nonce %d for %s", self.next_nonce, self.signer.address)

    async def _check_nonces(self) -> None:
        """Compare nonces with the node's count: resynchronise the next nonce, and fill
        any nonce missing below transactions in flight.

        A reorg or a reconcile can hand a registration back to be signed anew while
        later nonces are still in the pool: the node then keeps those queued forever
        behind the gap. A zero-value transfer to ourselves takes the missing nonce."""
        mined = await self.client.call(
            self.client.w3.eth.get_transaction_count(self.signer.address, "latest")
        )
        held = {
            registration.nonce
            for registration in await self._in_flight()
            if registration.nonce is not None and registration.nonce >= mined
        }
        self.fillers = {nonce for nonce in self.fillers if nonce >= mined}
        top = max(held | self.fillers, default=mined - 1) + 1
        if self.next_nonce is not None and self.next_nonce > top:
            # Only go back to a nonce the node's pool does not hold either.
            pending = await self.client.call(
                self.client.w3.eth.get_transaction_count(self.signer.address, "pending")
            )
            top = max(top, pending)
        if self.next_nonce is not None and self.next_nonce != top:
            logger.warning(
                "writer nonce %d, but the node and SQL hold %d: resynchronised",
                self.next_nonce,
                top,
            )
            self.next_nonce = top
        for nonce in range(mined, top):
            if nonce not in held and nonce not in self.fillers:
                await self._fill(nonce)

    async def _fill(self, nonce: int) -> None:
        logger.warning("nonce %d is missing under transactions in flight: filling it", nonce)
        signed = self.signer.sign_legacy(
            nonce=nonce,
            gas=21_000,
            gas_price=await current_gas_price(self.client, self.policy),
            to=self.signer.address,
            data="0x",
            chain_id=self.policy.chain_id,
        )
        try:
            await self._broadcast(signed.raw)
        except ChainRejected as exc:
            # Taken meanwhile ("nonce too low"): the next check sees the new count.
            logger.warning("filling nonce %d refused: %s", nonce, exc)
            return
        self.fillers.add(nonce)

    # -- settling -----------------------------------------------------------------------

    async def _in_flight(self) -> list[Registration]:
        async with session_scope(self.sessionmaker) as session:
            rows = await session.scalars(
                select(Registration)
                .where(Registration.state == PENDING, Registration.raw_tx.is_not(None))
                .order_by(Registration.nonce)
            )
            return list(rows)

    async def _receipt(self, registration: Registration) -> Mined | None:
        assert registration.tx_hash is not None
        receipt = await self.client.receipt(registration.tx_hash)
        if receipt is None:
            return None
        # Receipts before Byzantium have no status: the logs say what happened.
        status = receipt.get("status")
        return Mined(
            block=int(receipt["blockNumber"]),
            reverted=status is not None and int(status) == 0,
            bound=self.registrar.binds_in(receipt, registration.name, registration.addr),
        )

    async def _settle_in_flight(self) -> int:
        """Decide every mined registration; returns how many are still in flight."""
        still = 0
        in_flight = await self._in_flight()
        head = await self.client.block_number() if in_flight and self.confirmations else 0
        for registration in in_flight:
            receipt = await self._receipt(registration)
            deep_enough = head >= receipt.block + self.confirmations if receipt else False
            if receipt is not None and self.confirmations and not deep_enough:
                still += 1  # mined, not yet deep enough to call confirmed
                continue
            if receipt is None:
                if registration.tx_hash and not await self.client.transaction_known(
                    registration.tx_hash
                ):
                    assert registration.raw_tx is not None
                    try:
                        await self._broadcast(registration.raw_tx)
                    except ChainRejected as exc:
                        # Its nonce went to another transaction: sign it again.
                        logger.warning("re-broadcast of %r refused: %s", registration.name, exc)
                        await self._unsend(registration.id)
                        self.next_nonce = None
                        continue
                still += 1
                continue
            await self._decide(registration, receipt)
        if still and self.mine_stalled is not None:
            await self.mine_stalled()
        return still

    async def _decide(self, registration: Registration, mined: Mined) -> None:
        """Confirmed when our transaction's logs show the binding, or the chain holds it
        now; otherwise failed, with the reason the current state gives."""
        if mined.bound:
            await self._confirm(registration.id, mined.block)
            return
        bound, conflict = await self._chain_state(registration, "latest")
        if bound:
            # Bound by another transaction (a copy sent by another writer): still true.
            await self._confirm(registration.id, mined.block)
            return
        reason = conflict or "the registrar did not record the name"
        if mined.reverted:
            reason = "transaction reverted; " + reason
        await self._fail(registration.id, reason, mined.block)

    async def _chain_state(
        self, registration: Registration, block: int | str
    ) -> tuple[bool, str | None]:
        """(the chain binds the name to our address, why it cannot when something else
        holds the name or the address), from one batch of reads at `block`."""
        view = await self.registrar.view(
            [registration.name], jami_id=registration.addr, block=block
        )
        record = view.records[0]
        if record is not None and record.addr == registration.addr:
            return True, None
        if record is not None or view.owners[0] != ZERO_ADDRESS:
            holder = record.addr if record is not None else ZERO_ADDRESS
            return False, f"name taken on chain by 0x{holder}"
        if view.reverse_name is not None:
            return False, f"address already has the name {view.reverse_name!r} on chain"
        return False, None

    async def _confirm(self, registration_id: int, block: int) -> None:
        async with session_scope(self.sessionmaker) as session, session.begin():
            registration = await session.get(Registration, registration_id)
            assert registration is not None
            registration.state = CONFIRMED
            registration.block = block
            registration.reason = None
            record = await session.get(NameRecord, registration.name)
            if record is not None:
                record.pending = False
                record.block_number = block
                record.owner = self._owner_of(registration)
        logger.info("confirmed %r in block %d", registration.name, block)
        self.send_attempts.pop(registration_id, None)
        if self.on_settled:
            self.on_settled(registration.folded_name)

    async def _fail(self, registration_id: int, reason: str, block: int | None) -> None:
        async with session_scope(self.sessionmaker) as session, session.begin():
            registration = await session.get(Registration, registration_id)
            assert registration is not None
            registration.state = FAILED
            registration.reason = reason
            registration.block = block
            registration.claim_name = None
            registration.claim_addr = None
            await session.execute(
                delete(NameRecord).where(
                    NameRecord.name == registration.name, NameRecord.pending.is_(True)
                )
            )
        logger.warning("registration of %r failed: %s", registration.name, reason)
        self.send_attempts.pop(registration_id, None)
        if self.on_settled:
            self.on_settled(registration.folded_name)

    # -- sending ------------------------------------------------------------------------

    async def _next_unsent(self) -> Registration | None:
        async with session_scope(self.sessionmaker) as session:
            return await session.scalar(
                select(Registration)
                .where(Registration.state == PENDING, Registration.raw_tx.is_(None))
                .order_by(Registration.id)
                .limit(1)
            )

    async def _unsend(self, registration_id: int) -> None:
        async with session_scope(self.sessionmaker) as session, session.begin():
            registration = await session.get(Registration, registration_id)
            assert registration is not None
            registration.nonce = None
            registration.tx_hash = None
            registration.raw_tx = None

    def _owner_of(self, registration: Registration) -> str:
        """The on-chain owner to write: what the row says (this server's signer for an
        HTTP registration, the file's owner for an operator's import), never zero: a
        zero owner counts as unreserved on the original Jami registrar."""
        if registration.owner and registration.owner != ZERO_ADDRESS:
            return registration.owner
        return self.signer.address.lower().removeprefix("0x")

    async def _send(self, registration: Registration) -> bool:
        """Sign and send one registration; False when it was decided without a send."""
        bound, conflict = await self._chain_state(registration, "latest")
        if bound:
            # Already on chain (a restart after mining, or another writer did it).
            await self._confirm(registration.id, await self.client.block_number())
            return False
        if conflict is not None:
            await self._fail(registration.id, conflict, None)
            return False
        data = self.registrar.reserve_for_data(
            name=registration.name,
            owner=self._owner_of(registration),
            jami_id=registration.addr,
            publickey=registration.publickey,
            signature=registration.signature,
        )
        try:
            gas = await estimate_gas(
                self.client, sender=self.signer.address, to=self.registrar.address, data=data
            )
        except (ChainRejected, ContractLogicError) as exc:
            await self._fail(registration.id, f"gas estimation failed: {exc}", None)
            return False
        nonce = self.next_nonce
        assert nonce is not None
        signed = self.signer.sign_legacy(
            nonce=nonce,
            gas=gas,
            gas_price=await current_gas_price(self.client, self.policy),
            to=self.registrar.address,
            data=data,
            chain_id=self.policy.chain_id,
        )
        await self._record_sent(registration.id, nonce, signed)
        self.next_nonce = nonce + 1
        try:
            await self._broadcast(signed.raw)
        except ChainRejected as exc:
            attempts = self.send_attempts.get(registration.id, 0) + 1
            if isinstance(exc, FeeCapExceeded):
                attempts = 0  # the operator's gas price is refused, not this registration
            self.send_attempts[registration.id] = attempts
            logger.warning(
                "node refused the registration of %r (attempt %d): %s",
                registration.name,
                attempts,
                exc,
            )
            await self._unsend(registration.id)
            self.next_nonce = None  # resynchronise from the node
            if attempts >= MAX_SEND_ATTEMPTS:
                await self._fail(registration.id, f"node refused the transaction: {exc}", None)
            raise WriterPaused(f"node refused a transaction: {exc}") from exc
        logger.info("sent %r nonce %d tx %s gas %d", registration.name, nonce, signed.tx_hash, gas)
        return True

    async def _record_sent(self, registration_id: int, nonce: int, signed: SignedTx) -> None:
        async with session_scope(self.sessionmaker) as session, session.begin():
            registration = await session.get(Registration, registration_id)
            assert registration is not None
            registration.nonce = nonce
            registration.tx_hash = signed.tx_hash
            registration.raw_tx = signed.raw
            registration.updated_at = utcnow()

    async def _broadcast(self, raw_tx: str) -> None:
        try:
            await self.client.call(self.client.w3.eth.send_raw_transaction(HexStr(raw_tx)))
        except ChainRejected as exc:
            if _already_known(exc):
                return
            raise
