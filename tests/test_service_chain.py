"""NameService over an in-process node (tests/fake_chain.py): what lookups and
registrations answer when the node fails, half-answers, or writes happen around them.
Deterministic: the test decides what the node answers and when blocks are mined."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.admission import Admission
from app.chain.registrar import Registrar
from app.db import make_async_engine, make_sessionmaker, migrate
from app.errors import ServiceUnavailable
from app.services.registry import NameService, RegistrationRequest
from app.settings import Settings
from tests.fake_chain import REGISTRAR, FakeNode
from tests.faults import quick_accounts

ServiceScenario = Callable[[FakeNode, NameService], Awaitable[None]]


def run_with_service(
    tmp_path: Path, node: FakeNode, scenario: ServiceScenario, **service: Any
) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite3'}"
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)  # type: ignore[call-arg]
    migrate(settings)

    async def go() -> None:
        engine = make_async_engine(settings)
        try:
            client = node.client()
            name_service = NameService(
                sessionmaker=make_sessionmaker(engine),
                registrar=Registrar(client, REGISTRAR),
                negative_cache_seconds=60,
                registrations_enabled=True,
                owner_address="0x" + "5e" * 20,
                lookup_cache_seconds=60,
                **service,
            )
            await scenario(node, name_service)
        finally:
            await engine.dispose()

    asyncio.run(go())


FAILURES = [
    pytest.param({"refuse": True}, id="connection-refused"),
    pytest.param({"no_code": True}, id="registrar-without-code"),
    pytest.param({"batch_answer": "empty"}, id="empty-batch"),
    pytest.param({"batch_answer": "partial"}, id="partial-batch"),
    pytest.param({"batch_answer": "error"}, id="batch-refused"),
    pytest.param({"rpc_error": "node is shutting down"}, id="rpc-error"),
]


@pytest.mark.parametrize("failure", FAILURES)
def test_lookup_on_a_failing_node_is_unavailable_and_not_remembered(
    tmp_path: Path, failure: dict[str, Any]
) -> None:
    (account,) = quick_accounts(1, offset=500)

    async def scenario(node: FakeNode, service: NameService) -> None:
        node.direct_reserve_for("0x" + "77" * 20, "held", "77" * 20, account.jami_id)
        node.mine()
        for key, value in failure.items():
            setattr(node, key, value)
        for lookup in (
            lambda: service.lookup_name("held"),
            lambda: service.lookup_name("never-seen"),
            lambda: service.lookup_addr(account.jami_id),
            lambda: service.lookup_addr("99" * 20),
        ):
            with pytest.raises(ServiceUnavailable):
                await lookup()
        body = account.registration_body("mine")
        with pytest.raises(ServiceUnavailable):
            await service.register("mine", RegistrationRequest.model_validate(body))
        # Nothing was remembered as free: the node back, the held name is found.
        for key in failure:
            setattr(node, key, FakeNode.__dataclass_fields__[key].default)
        assert (await service.lookup_name("held")).addr == account.jami_id
        assert await service.lookup_addr(account.jami_id) == "held"

    run_with_service(tmp_path, FakeNode(), scenario)


@pytest.mark.parametrize("limited", [False, True], ids=["no-rate-limit", "rate-limit-1"])
def test_register_identical_copies_at_once_all_succeed_for_one_token(
    tmp_path: Path, limited: bool
) -> None:
    """30 copies of one registration at once: before, one copy read the first one's
    row by address only (403 "address already has a name"), and copies spent tokens."""
    (account,) = quick_accounts(1, offset=501)
    admission = Admission(rate_per_minute=1, burst=1, max_pending=0) if limited else None

    async def scenario(node: FakeNode, service: NameService) -> None:
        request = RegistrationRequest.model_validate(account.registration_body("twin"))
        outcomes = await asyncio.gather(
            *(service.register("twin", request, client="1.2.3.4") for _ in range(30)),
            return_exceptions=True,
        )
        assert [type(outcome).__name__ for outcome in outcomes] == ["NoneType"] * 30
        await service.register("twin", request, client="1.2.3.4")  # a later retry
        if limited:
            # One token spent in all: another name from this client is throttled.
            other_account = quick_accounts(1, 502)[0]
            other = RegistrationRequest.model_validate(other_account.registration_body("xx2"))
            with pytest.raises(ServiceUnavailable, match="too many"):
                await service.register("xx2", other, client="1.2.3.4")

    run_with_service(tmp_path, FakeNode(), scenario, admission=admission)
