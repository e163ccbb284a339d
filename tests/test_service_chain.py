"""NameService over an in-process node (tests/fake_chain.py): what lookups and
registrations answer when the node fails, half-answers, or writes happen around them.
Deterministic: the test decides what the node answers and when blocks are mined."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from app.chain.registrar import Registrar
from app.chain.signer import Signer
from app.db import make_async_engine, make_sessionmaker, migrate
from app.errors import (
    AddressHasName,
    AddressNotRegistered,
    NameNotRegistered,
    NameTaken,
    RegistrationPending,
    ServiceUnavailable,
)
from app.services.admission import Admission
from app.services.registry import NameService, RegistrationRequest
from app.settings import Settings
from app.workers.writer import GasPolicy, TxWriter
from tests.fake_chain import CHAIN_ID, REGISTRAR, FakeNode
from tests.faults import quick_accounts

ServiceScenario = Callable[[FakeNode, NameService], Awaitable[None]]


SIGNER = Account.from_key("0x" + "5e" * 32)


def run_with_service(
    tmp_path: Path, node: FakeNode, scenario: ServiceScenario, **service: Any
) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite3'}"
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
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
                owner_address=SIGNER.address,
                lookup_cache_seconds=60,
                **service,
            )
            name_service.writer = TxWriter(  # type: ignore[attr-defined]
                sessionmaker=make_sessionmaker(engine),
                client=client,
                registrar=Registrar(client, REGISTRAR),
                signer=Signer(SIGNER),
                policy=GasPolicy(CHAIN_ID, None),
                poll_seconds=0.01,
                max_in_flight=4,
                on_settled=lambda folded: name_service.records_changed([folded]),
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
        assert (await service.lookup_addr(account.jami_id)).name == "held"

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


ATTACKER = "0x" + "77" * 20


def _writer(service: NameService) -> TxWriter:
    writer: TxWriter = service.writer  # type: ignore[attr-defined]
    return writer


@pytest.mark.parametrize("serve_pending", [False, True], ids=["shared", "only-writer"])
def test_lookup_while_pending_is_never_contradicted(tmp_path: Path, serve_pending: bool) -> None:
    """Another account's reserveFor of the same name lands first in our block. On a
    registrar others write, every lookup before the outcome is a 503, never the client's
    ID; on one only this server writes, the pending name is served (and that case has no
    other writer: the test shows what the setting trusts)."""
    (account,) = quick_accounts(1, offset=503)
    rival = "b7" * 20

    async def scenario(node: FakeNode, service: NameService) -> None:
        request = RegistrationRequest.model_validate(account.registration_body("contested"))
        await service.register("contested", request)
        node.direct_reserve_for(ATTACKER, "contested", ATTACKER[2:], rival)
        await _writer(service).step()  # ours is sent behind the rival's, same block
        if serve_pending:
            assert (await service.lookup_name("contested")).addr == account.jami_id
            return
        for lookup in (
            lambda: service.lookup_name("contested"),
            lambda: service.lookup_addr(account.jami_id),
        ):
            with pytest.raises(RegistrationPending):
                await lookup()
        node.mine()
        await _writer(service).step()
        assert (await service.lookup_name("contested")).addr == rival
        with pytest.raises(AddressNotRegistered):
            await service.lookup_addr(account.jami_id)

    run_with_service(tmp_path, FakeNode(automine=False), scenario, serve_pending=serve_pending)


def test_lookup_racing_a_registration_caches_nothing_stale(tmp_path: Path) -> None:
    """A lookup misses SQL and reads the chain; a registration of that name is accepted
    while the read is on its way. What the read found (free) must not be remembered."""
    (account,) = quick_accounts(1, offset=504)

    async def scenario(node: FakeNode, service: NameService) -> None:
        request = RegistrationRequest.model_validate(account.registration_body("racing"))

        async def register_meanwhile() -> None:
            await service.register("racing", request)

        node.before_batch = register_meanwhile
        with pytest.raises(NameNotRegistered):
            await service.lookup_name("racing")  # read before the registration: true then
        assert not service.answers.name_missing("racing")
        assert (await service.lookup_name("racing")).addr == account.jami_id
        # A pending record's answer is never kept as final.
        assert (await service.lookup_name("racing")).cache_token is None

    run_with_service(tmp_path, FakeNode(automine=False), scenario, serve_pending=True)


def test_reverse_lookup_answers_only_what_the_forward_lookup_confirms(tmp_path: Path) -> None:
    """Records written directly on the contract: `PGNAME1` (folds like the registered
    `pgname1` of another ID), and byte strings that are no name at all."""
    (account,) = quick_accounts(1, offset=505)
    impostor, spaced, blank, slashed = "c1" * 20, "c2" * 20, "c3" * 20, "c4" * 20

    async def scenario(node: FakeNode, service: NameService) -> None:
        request = RegistrationRequest.model_validate(account.registration_body("pgname1"))
        await service.register("pgname1", request)
        node.mine()
        await _writer(service).step()
        for name, jami_id in [
            ("PGNAME1", impostor),
            ("rawname2 ", spaced),
            ("a b", blank),
            ("x/owner", slashed),
        ]:
            node.direct_reserve_for(ATTACKER, name, ATTACKER[2:], jami_id)
        node.mine()
        for jami_id in (impostor, spaced, blank, slashed):
            with pytest.raises(AddressNotRegistered):
                await service.lookup_addr(jami_id)
        assert (await service.lookup_name("PGNAME1")).addr == account.jami_id
        assert (await service.lookup_addr(account.jami_id)).name == "pgname1"

    run_with_service(tmp_path, FakeNode(), scenario, serve_pending=True)


def test_name_held_without_address_is_taken_for_lookups_and_registrations(
    tmp_path: Path,
) -> None:
    (account,) = quick_accounts(1, offset=506)

    async def scenario(node: FakeNode, service: NameService) -> None:
        node.direct_reserve_for(ATTACKER, "heldname", ATTACKER[2:], "0" * 40)
        node.mine()
        view = await service.lookup_name("heldname")
        assert view.held_without_address and view.owner == ATTACKER[2:]
        request = RegistrationRequest.model_validate(account.registration_body("heldname"))
        with pytest.raises(NameTaken):
            await service.register("heldname", request)
        with pytest.raises(AddressNotRegistered):
            await service.lookup_addr("0" * 40)

    run_with_service(tmp_path, FakeNode(), scenario)


def test_reverse_lookup_ignores_names_pointed_at_an_address_without_its_proof(
    tmp_path: Path,
) -> None:
    """Any name's owner may call setAddress(name, victim, primary=false): the record says
    `evil -> victim` while the chain's reverse entry of the victim stays empty. Before,
    `/addr/victim` answered one of those names (which one could change between requests:
    the SQL candidates had no order) and the victim's own registration got 403 "address
    already has a name". The attacker even copies the victim's key and a signature of
    the victim's (public) over another name: neither proves `evil` for that ID."""
    (victim,) = quick_accounts(1, offset=507)
    spoofs = ["evil1", "evil2", "evil3", "evil4", "evil5"]  # more than the candidates read

    async def scenario(node: FakeNode, service: NameService) -> None:
        for spoof in spoofs:
            node.direct_reserve_for(
                ATTACKER, spoof, ATTACKER[2:], "0" * 40, victim.publickey_b64, victim.sign("mine")
            )
            node.direct_set_address(ATTACKER, spoof, victim.jami_id, primary=False)
        node.mine()
        assert node.reverse.get(victim.jami_id) is None  # the chain names no one
        for spoof in spoofs:
            # The forward records are what the chain says; the lookups mirror them in SQL.
            assert (await service.lookup_name(spoof)).addr == victim.jami_id
        for _ in range(3):
            with pytest.raises(AddressNotRegistered):
                await service.lookup_addr(victim.jami_id)

        request = RegistrationRequest.model_validate(victim.registration_body("mine"))
        await service.register("mine", request)  # the chain accepts it: so do we
        # Pending here, with a verified proof: answered (only this server writes).
        for _ in range(3):
            assert (await service.lookup_addr(victim.jami_id)).name == "mine"
        await _writer(service).step()
        node.mine()
        await _writer(service).step()
        assert node.reverse[victim.jami_id].rstrip(b"\0") == b"mine"
        for _ in range(3):
            assert (await service.lookup_addr(victim.jami_id)).name == "mine"
        await service.register("mine", request)  # a retry of it still answers 200

    run_with_service(tmp_path, FakeNode(automine=False), scenario, serve_pending=True)


def test_reverse_lookup_answers_a_chain_name_without_key_material(tmp_path: Path) -> None:
    """A name written directly with no key and no signature, bound by the chain's own
    reverse entry: SQL proves nothing, the chain's reverse record (forward-checked) does."""
    (account,) = quick_accounts(1, offset=508)

    async def scenario(node: FakeNode, service: NameService) -> None:
        node.direct_reserve_for(ATTACKER, "keyless", ATTACKER[2:], account.jami_id)
        node.mine()
        assert (await service.lookup_name("keyless")).addr == account.jami_id  # now in SQL
        assert (await service.lookup_addr(account.jami_id)).name == "keyless"
        request = RegistrationRequest.model_validate(account.registration_body("other"))
        with pytest.raises(AddressHasName):
            await service.register("other", request)  # the chain would refuse it

    run_with_service(tmp_path, FakeNode(), scenario)


@pytest.mark.parametrize("reverse_name", ["a b", "x/owner", "rawname2 "])
def test_register_for_an_address_the_chain_names_oddly_is_403_not_404(
    tmp_path: Path, reverse_name: str
) -> None:
    """The chain's reverse entry of the ID names a record no lookup could ask for. Before,
    storing that record raised "not registered" and the registration answered 404, which
    a Jami client reads as "free"; the chain refuses the registration: 403."""
    (account,) = quick_accounts(1, offset=509)

    async def scenario(node: FakeNode, service: NameService) -> None:
        node.direct_reserve_for(ATTACKER, reverse_name, ATTACKER[2:], account.jami_id)
        node.mine()
        request = RegistrationRequest.model_validate(account.registration_body("mine"))
        with pytest.raises(AddressHasName):
            await service.register("mine", request)
        with pytest.raises(AddressNotRegistered):
            await service.lookup_addr(account.jami_id)

    run_with_service(tmp_path, FakeNode(), scenario)


def test_registration_check_reads_the_same_view_for_less_of_the_nodes_work(
    tmp_path: Path,
) -> None:
    """Registrar.view(mostly_free=True), a registration's check: who holds each name
    first, the records of the names held in a second batch; the same view as one full
    read, free names, held names, names held without an address and the reverse entry."""

    async def scenario(node: FakeNode, service: NameService) -> None:
        node.direct_reserve_for(ATTACKER, "heldname", ATTACKER[2:], "ab" * 20, "pk", "sig")
        node.direct_reserve_for(ATTACKER, "ownedonly", ATTACKER[2:], "0" * 40)
        node.mine()
        registrar = Registrar(node.client(), REGISTRAR)
        for names, jami_id in [
            (["freename"], "cd" * 20),
            (["heldname", "freename"], "ab" * 20),
            (["ownedonly"], "cd" * 20),
            (["freename", "heldname", "ownedonly"], None),
        ]:
            assert await registrar.view(names, jami_id=jami_id, mostly_free=True) == (
                await registrar.view(names, jami_id=jami_id)
            )
        node.methods.clear()
        await registrar.view(["freename"], jami_id="cd" * 20, mostly_free=True)
        assert node.methods == ["eth_call"] * 3  # addr, owner, the reverse entry

    run_with_service(tmp_path, FakeNode(), scenario)
