"""The balance rule (app.services.balance) in process, on the session's anvil node: it
pauses registrations when the signer cannot pay for one more and resumes once funded."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from eth_account import Account
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.chain.anvil import AnvilNode, fund
from app.chain.client import ChainClient
from app.services.balance import (
    PAUSED_REASON,
    REGISTRATION_GAS,
    BalanceReading,
    BalanceWatch,
    registrations_covered,
)
from app.services.registry import NameService

GAS_PRICE = 10**9
ONE_REGISTRATION = REGISTRATION_GAS * GAS_PRICE


@pytest.mark.parametrize(
    ("balance", "gas_price", "covered"),
    [
        pytest.param(0, GAS_PRICE, 0, id="empty"),
        pytest.param(ONE_REGISTRATION - 1, GAS_PRICE, 0, id="just-short"),
        pytest.param(ONE_REGISTRATION, GAS_PRICE, 1, id="exactly-one"),
        pytest.param(10**18, GAS_PRICE, 714, id="one-ether"),
        pytest.param(5, 0, None, id="free-gas"),
    ],
)
def test_registrations_covered(balance: int, gas_price: int, covered: int | None) -> None:
    assert registrations_covered(balance, gas_price) == covered


def test_the_watch_pauses_registrations_until_the_signer_is_funded(
    anvil: AnvilNode, caplog: pytest.LogCaptureFixture
) -> None:
    signer = Account.from_key("0x" + secrets.token_hex(32)).address
    service = NameService(
        sessionmaker=async_sessionmaker(),
        registrar=None,
        negative_cache_seconds=0,
        registrations_enabled=True,
    )
    readings: list[BalanceReading | None] = []

    async def fixed_gas_price() -> int:
        return GAS_PRICE

    async def go() -> list[tuple[BalanceReading, str | None]]:
        client = ChainClient(anvil.url, timeout=5)
        watch = BalanceWatch(
            service=service,
            client=client,
            signer_address=signer,
            gas_price=fixed_gas_price,
            interval=60,
            warn_below=10,
            on_check=readings.append,
        )
        try:
            seen = []
            for balance in (3 * ONE_REGISTRATION, ONE_REGISTRATION - 1, 100 * ONE_REGISTRATION):
                fund(anvil.url, signer, balance)
                seen.append((await watch.check(), service.registrations_paused))
            return seen
        finally:
            await client.close()

    (low, running), (broke, paused), (funded, resumed) = asyncio.run(go())

    assert (low.covered, low.paused, running) == (3, False, None)
    assert "3 more registrations" in caplog.text and signer in caplog.text
    assert (broke.covered, broke.paused, paused) == (0, True, PAUSED_REASON)
    assert (funded.covered, funded.paused, resumed) == (100, False, None)
    assert readings == [low, broke, funded]
