"""The signer-balance rule: registrations pause while the signer cannot pay for one more.

Every `interval` seconds the watch reads the signer's balance and the gas price: below
`warn_below` registrations it logs a warning, and below one it pauses registrations (they
answer 503, which a Jami client shows as a network error, never as "taken") until the
account is funded again. Each reading is handed to `on_check` (the metrics).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.chain.client import ChainClient, ChainRejected
from app.errors import ServiceUnavailable
from app.services.registry import NameService

logger = logging.getLogger(__name__)

REGISTRATION_GAS = 1_400_000  # what one registration with an RSA-4096 key costs
PAUSED_REASON = "the server's balance cannot pay for a registration; try again later"


def registrations_covered(balance_wei: int, gas_price_wei: int) -> int | None:
    """How many registrations the balance pays for; None when gas is free."""
    if gas_price_wei <= 0:
        return None
    return balance_wei // (REGISTRATION_GAS * gas_price_wei)


@dataclass(frozen=True)
class BalanceReading:
    balance_wei: int
    gas_price_wei: int
    covered: int | None  # registrations the balance pays for; None: gas is free
    paused: bool


class BalanceWatch:
    def __init__(
        self,
        *,
        service: NameService,
        client: ChainClient,
        signer_address: str,
        gas_price: Callable[[], Awaitable[int]],
        interval: float,
        warn_below: int,
        on_check: Callable[[BalanceReading | None], None] | None = None,
    ) -> None:
        self.service = service
        self.client = client
        self.signer_address = signer_address
        self.gas_price = gas_price
        self.interval = interval
        self.warn_below = warn_below
        # Called with each reading, and with None when the node did not answer.
        self.on_check = on_check

    async def check(self) -> BalanceReading:
        """One check: pauses or resumes registrations, and returns what it read."""
        balance = int(await self.client.call(self.client.w3.eth.get_balance(self.signer_address)))  # type: ignore[arg-type]
        gas_price = await self.gas_price()
        covered = registrations_covered(balance, gas_price)
        paused = covered is not None and covered < 1
        if paused:
            if self.service.registrations_paused is None:
                logger.error(
                    "signer %s has %d wei: not enough for one registration at gas price %d; "
                    "registrations answer 503 until it is funded",
                    self.signer_address,
                    balance,
                    gas_price,
                )
            self.service.registrations_paused = PAUSED_REASON
        else:
            if self.service.registrations_paused is not None:
                logger.info("signer %s funded again: registrations resume", self.signer_address)
            self.service.registrations_paused = None
            if covered is not None and covered < self.warn_below:
                logger.warning(
                    "low balance: signer %s has %d wei, enough for %d more registrations at "
                    "gas price %d",
                    self.signer_address,
                    balance,
                    covered,
                    gas_price,
                )
        reading = BalanceReading(balance, gas_price, covered, paused)
        if self.on_check is not None:
            self.on_check(reading)
        return reading

    async def run(self) -> None:
        """Check until cancelled; a chain outage only skips a check."""
        while True:
            try:
                await self.check()
            except (ServiceUnavailable, ChainRejected) as exc:
                if self.on_check is not None:
                    self.on_check(None)
                logger.warning("balance check skipped: %s", exc)
            await asyncio.sleep(self.interval)
