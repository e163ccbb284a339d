"""contracts/Registrar.sol, compiled artifact deployed on anvil (constantinople, chain 1551)."""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Callable
from importlib import resources
from typing import Any, cast

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from app.chain.anvil import AnvilNode, fund

with warnings.catch_warnings():
    # web3 7 imports websockets' legacy client at import time; we only use HTTP.
    warnings.filterwarnings(
        "ignore", message="websockets.legacy is deprecated", category=DeprecationWarning
    )
    from web3 import Web3
    from web3.contract import Contract
    from web3.contract.contract import ContractConstructor, ContractFunction
    from web3.exceptions import ContractLogicError
    from web3.types import TxReceipt

DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
GAS_PRICE = 10**9
BLOCK_GAS_LIMIT = 4_700_000
ZERO_ADDRESS = "0x" + "00" * 20
ZERO_NAME = b"\0" * 32
CHANGED = keccak(text="Changed(bytes32)")
PRIMARY_CHANGED = keccak(text="PrimaryChanged(bytes32,address,address)")

_name_counter = itertools.count()

AccountFactory = Callable[[], LocalAccount]


def _artifact() -> dict[str, Any]:
    data = resources.files("contracts").joinpath("Registrar.json").read_text()
    artifact: dict[str, Any] = json.loads(data)
    return artifact


@pytest.fixture(scope="module")
def node(anvil: AnvilNode) -> AnvilNode:
    """The session's anvil: each module's registrar is a new deployment on it."""
    return anvil


@pytest.fixture(scope="module")
def w3(node: AnvilNode) -> Web3:
    return Web3(Web3.HTTPProvider(node.url))


def _send(
    w3: Web3,
    account: LocalAccount,
    call: ContractFunction | ContractConstructor,
    gas: int | None = None,
) -> TxReceipt:
    """Sign a legacy (type 0) transaction for `call` and return its mined receipt."""
    params: dict[str, Any] = {
        "from": account.address,
        "nonce": w3.eth.get_transaction_count(account.address),
        "gasPrice": GAS_PRICE,
        "chainId": 1551,
    }
    if gas is not None:
        params["gas"] = gas
    tx = call.build_transaction(params)  # type: ignore[arg-type]
    signed = account.sign_transaction(cast(dict[str, Any], tx))
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)


@pytest.fixture(scope="module")
def registrar(w3: Web3) -> Contract:
    artifact = _artifact()
    deployer: LocalAccount = Account.from_key(DEPLOYER_KEY)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = _send(w3, deployer, factory.constructor())
    assert receipt["status"] == 1
    return cast(Contract, w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"]))


@pytest.fixture
def new_account(node: AnvilNode) -> AccountFactory:
    """Makes fresh funded accounts, so each test owns its nonces and names."""

    def make() -> LocalAccount:
        account: LocalAccount = Account.create()
        fund(node.url, account.address, 10**20)
        return account

    return make


def _fresh_name() -> bytes:
    return f"name{next(_name_counter)}-{os.getpid()}".encode().ljust(32, b"\0")


def _address() -> str:
    address: str = Account.create().address
    return address


def _record(registrar: Contract, name: bytes) -> tuple[Any, ...]:
    fns = registrar.functions
    return (
        fns.owner(name).call(),
        fns.addr(name).call(),
        fns.subRegistrar(name).call(),
        fns.content(name).call(),
        fns.publickey(name).call(),
        fns.signature(name).call(),
    )


def _topic_address(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def _reserve(
    w3: Web3,
    registrar: Contract,
    sender: LocalAccount,
    name: bytes,
    owner: str,
    address: str,
    publickey: str = "pk",
    signed_name: str = "sig",
) -> TxReceipt:
    call = registrar.functions.reserveFor(name, owner, address, publickey, signed_name)
    return _send(w3, sender, call)


def test_reserve_for_stores_record_and_emits_events(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    sender, owner = new_account(), new_account()
    name, address = _fresh_name(), _address()
    receipt = _reserve(w3, registrar, sender, name, owner.address, address, "PUBKEY", "SIG")

    assert receipt["status"] == 1
    assert _record(registrar, name) == (
        owner.address,
        address,
        ZERO_ADDRESS,
        ZERO_NAME,
        "PUBKEY",
        "SIG",
    )
    assert registrar.functions.name(address).call() == name
    primary, changed = receipt["logs"]
    assert primary["topics"] == [PRIMARY_CHANGED, name, _topic_address(address)]
    assert bytes(primary["data"]) == _topic_address(owner.address)
    assert changed["topics"] == [CHANGED, name]
    event = registrar.events.PrimaryChanged().process_log(primary)
    assert event["args"] == {"name": name, "addr": address, "owner": owner.address}


def test_reserve_for_zero_owner_takes_name(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    sender = new_account()
    name, address = _fresh_name(), _address()
    _reserve(w3, registrar, sender, name, ZERO_ADDRESS, address)
    before = _record(registrar, name)
    assert before[:2] == (ZERO_ADDRESS, address)

    # The record's owner is zero, but its addr alone marks the name as taken.
    receipt = _reserve(w3, registrar, new_account(), name, ZERO_ADDRESS, _address(), "x", "y")
    assert receipt["status"] == 1
    assert receipt["logs"] == []
    assert _record(registrar, name) == before


def test_reserve_for_without_address_emits_only_changed(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    sender, owner = new_account(), new_account()
    name = _fresh_name()
    receipt = _reserve(w3, registrar, sender, name, owner.address, ZERO_ADDRESS)
    assert [log["topics"] for log in receipt["logs"]] == [[CHANGED, name]]
    assert _record(registrar, name)[:2] == (owner.address, ZERO_ADDRESS)
    assert registrar.functions.name(ZERO_ADDRESS).call() == ZERO_NAME


def test_reserve_for_taken_name_changes_nothing(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    sender, owner = new_account(), new_account()
    name = _fresh_name()
    _reserve(w3, registrar, sender, name, owner.address, _address())
    before = _record(registrar, name)

    other_address = _address()
    receipt = _reserve(w3, registrar, sender, name, sender.address, other_address, "a", "b")
    assert receipt["status"] == 1
    assert receipt["logs"] == []
    assert _record(registrar, name) == before
    assert registrar.functions.name(other_address).call() == ZERO_NAME


def test_reserve_for_named_address_changes_nothing(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    sender, owner = new_account(), new_account()
    first, second, address = _fresh_name(), _fresh_name(), _address()
    _reserve(w3, registrar, sender, first, owner.address, address)

    receipt = _reserve(w3, registrar, sender, second, owner.address, address)
    assert receipt["status"] == 1
    assert receipt["logs"] == []
    assert _record(registrar, second) == (
        ZERO_ADDRESS,
        ZERO_ADDRESS,
        ZERO_ADDRESS,
        ZERO_NAME,
        "",
        "",
    )
    assert registrar.functions.name(address).call() == first


@pytest.mark.parametrize(
    ("zero_name", "zero_owner_and_address"),
    [
        pytest.param(True, False, id="zero-name"),
        pytest.param(False, True, id="zero-owner-and-address"),
    ],
)
def test_reserve_for_empty_input_changes_nothing(
    w3: Web3,
    registrar: Contract,
    new_account: AccountFactory,
    zero_name: bool,
    zero_owner_and_address: bool,
) -> None:
    sender = new_account()
    name = ZERO_NAME if zero_name else _fresh_name()
    owner, address = (
        (ZERO_ADDRESS, ZERO_ADDRESS) if zero_owner_and_address else (sender.address, _address())
    )
    receipt = _reserve(w3, registrar, sender, name, owner, address)
    assert receipt["status"] == 1
    assert receipt["logs"] == []
    assert _record(registrar, name) == (ZERO_ADDRESS, ZERO_ADDRESS, ZERO_ADDRESS, ZERO_NAME, "", "")
    assert registrar.functions.name(address).call() == ZERO_NAME


def test_reserve_uses_sender_as_owner(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    sender = new_account()
    name, address = _fresh_name(), _address()
    receipt = _send(w3, sender, registrar.functions.reserve(name, address))
    assert len(receipt["logs"]) == 2
    assert _record(registrar, name) == (sender.address, address, ZERO_ADDRESS, ZERO_NAME, "", "")
    assert registrar.functions.name(address).call() == name


OWNER_ONLY_CALLS = [
    pytest.param(lambda fns, name: fns.transfer(name, _address()), id="transfer"),
    pytest.param(lambda fns, name: fns.disown(name), id="disown"),
    pytest.param(lambda fns, name: fns.setAddress(name, _address(), True), id="setAddress"),
    pytest.param(lambda fns, name: fns.setSubRegistrar(name, _address()), id="setSubRegistrar"),
    pytest.param(lambda fns, name: fns.setContent(name, b"\x01" * 32), id="setContent"),
]


@pytest.mark.parametrize("make_call", OWNER_ONLY_CALLS)
def test_owner_only_non_owner_reverts(
    w3: Web3, registrar: Contract, new_account: AccountFactory, make_call: Any
) -> None:
    owner, stranger = new_account(), new_account()
    name = _fresh_name()
    _reserve(w3, registrar, owner, name, owner.address, _address())
    before = _record(registrar, name)

    call = make_call(registrar.functions, name)
    with pytest.raises(ContractLogicError, match="not the owner"):
        call.estimate_gas({"from": stranger.address})
    receipt = _send(w3, stranger, call, gas=200_000)
    assert receipt["status"] == 0
    assert _record(registrar, name) == before


@pytest.mark.parametrize("make_call", OWNER_ONLY_CALLS)
def test_owner_only_ownerless_record_reverts(
    w3: Web3, registrar: Contract, new_account: AccountFactory, make_call: Any
) -> None:
    sender = new_account()
    name = _fresh_name()
    _reserve(w3, registrar, sender, name, ZERO_ADDRESS, _address())

    # Nobody, not even the zero address, manages a record registered without an owner.
    call = make_call(registrar.functions, name)
    with pytest.raises(ContractLogicError, match="not the owner"):
        call.estimate_gas({"from": ZERO_ADDRESS})
    with pytest.raises(ContractLogicError, match="not the owner"):
        call.estimate_gas({"from": sender.address})


def test_transfer_moves_ownership(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    owner, new_owner = new_account(), new_account()
    name = _fresh_name()
    _reserve(w3, registrar, owner, name, owner.address, _address())

    receipt = _send(w3, owner, registrar.functions.transfer(name, new_owner.address))
    assert [log["topics"] for log in receipt["logs"]] == [[CHANGED, name]]
    assert registrar.functions.owner(name).call() == new_owner.address
    with pytest.raises(ContractLogicError):
        registrar.functions.setContent(name, b"\x02" * 32).estimate_gas({"from": owner.address})
    _send(w3, new_owner, registrar.functions.setContent(name, b"\x02" * 32))
    assert registrar.functions.content(name).call() == b"\x02" * 32


def test_disown_frees_name_and_address(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    owner, newcomer = new_account(), new_account()
    name, address = _fresh_name(), _address()
    _reserve(w3, registrar, owner, name, owner.address, address, "K" * 100, "S" * 100)
    _send(w3, owner, registrar.functions.setContent(name, b"\x03" * 32))

    receipt = _send(w3, owner, registrar.functions.disown(name))
    assert [log["topics"] for log in receipt["logs"]] == [[CHANGED, name]]
    assert _record(registrar, name) == (ZERO_ADDRESS, ZERO_ADDRESS, ZERO_ADDRESS, ZERO_NAME, "", "")
    assert registrar.functions.name(address).call() == ZERO_NAME

    # Both the name and the address can be registered again.
    receipt = _reserve(w3, registrar, newcomer, name, newcomer.address, address, "k2", "s2")
    assert len(receipt["logs"]) == 2
    assert _record(registrar, name)[:2] == (newcomer.address, address)
    assert registrar.functions.name(address).call() == name


def test_set_address_primary_moves_reverse_entry(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    owner = new_account()
    name, old_address, new_address = _fresh_name(), _address(), _address()
    _reserve(w3, registrar, owner, name, owner.address, old_address)

    receipt = _send(w3, owner, registrar.functions.setAddress(name, new_address, True))
    primary, changed = receipt["logs"]
    assert primary["topics"] == [PRIMARY_CHANGED, name, _topic_address(new_address)]
    assert changed["topics"] == [CHANGED, name]
    assert registrar.functions.addr(name).call() == new_address
    assert registrar.functions.name(new_address).call() == name
    assert registrar.functions.name(old_address).call() == ZERO_NAME


def test_set_address_not_primary_sets_no_reverse_entry(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    owner = new_account()
    name, old_address, new_address = _fresh_name(), _address(), _address()
    _reserve(w3, registrar, owner, name, owner.address, old_address)

    receipt = _send(w3, owner, registrar.functions.setAddress(name, new_address, False))
    assert [log["topics"] for log in receipt["logs"]] == [[CHANGED, name]]
    assert registrar.functions.addr(name).call() == new_address
    assert registrar.functions.name(new_address).call() == ZERO_NAME
    assert registrar.functions.name(old_address).call() == ZERO_NAME


def test_set_address_primary_named_address_reverts(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    owner = new_account()
    name, other_name, taken_address = _fresh_name(), _fresh_name(), _address()
    _reserve(w3, registrar, owner, name, owner.address, _address())
    _reserve(w3, registrar, owner, other_name, owner.address, taken_address)

    call = registrar.functions.setAddress(name, taken_address, True)
    with pytest.raises(ContractLogicError, match="address has another name"):
        call.estimate_gas({"from": owner.address})
    assert registrar.functions.name(taken_address).call() == other_name


def test_set_sub_registrar_and_content_store_values(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    owner = new_account()
    name, sub_registrar = _fresh_name(), _address()
    _reserve(w3, registrar, owner, name, owner.address, _address())

    receipt = _send(w3, owner, registrar.functions.setSubRegistrar(name, sub_registrar))
    assert [log["topics"] for log in receipt["logs"]] == [[CHANGED, name]]
    receipt = _send(w3, owner, registrar.functions.setContent(name, b"\x04" * 32))
    assert [log["topics"] for log in receipt["logs"]] == [[CHANGED, name]]
    assert registrar.functions.subRegistrar(name).call() == sub_registrar
    assert registrar.functions.content(name).call() == b"\x04" * 32


def test_reserve_for_rsa4096_key_fits_block(
    w3: Web3, registrar: Contract, new_account: AccountFactory
) -> None:
    sender = new_account()
    name = _fresh_name()
    publickey, signed_name = "P" * 800, "S" * 700
    receipt = _reserve(
        w3, registrar, sender, name, ZERO_ADDRESS, _address(), publickey, signed_name
    )
    assert receipt["status"] == 1
    assert len(receipt["logs"]) == 2
    assert receipt["gasUsed"] < BLOCK_GAS_LIMIT // 3
    assert registrar.functions.publickey(name).call() == publickey
    assert registrar.functions.signature(name).call() == signed_name


def test_artifact_targets_petersburg() -> None:
    artifact = _artifact()
    assert artifact["evmVersion"] == "petersburg"
    assert artifact["compiler"].startswith("solc-js 0.6.12+")
