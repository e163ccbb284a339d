"""The registrar contract adapter: the only code that knows the contract's ABI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_typing import HexAddress, HexStr
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.types import Nonce
from web3.utils.address import get_create_address

from app.chain.client import ChainClient, ChainRejected
from app.errors import ChainUnavailable
from app.names import BadName, check_lookup_name, from_bytes32, to_bytes32

ZERO_ADDRESS = "0" * 40
# Topic 0 of the event reserveFor emits when it binds a name to an address.
PRIMARY_CHANGED = "0x" + keccak(text="PrimaryChanged(bytes32,address,address)").hex()


@cache
def artifact() -> dict[str, Any]:
    """The compiled registrar (contracts/Registrar.json, built by contracts/build.mjs)."""
    text = resources.files("contracts").joinpath("Registrar.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _selectors() -> dict[str, str]:
    """0x-hex 4-byte selectors of the registrar's functions, by name."""
    selectors = {}
    for entry in artifact()["abi"]:
        if entry.get("type") == "function":
            types = ",".join(argument["type"] for argument in entry["inputs"])
            digest = keccak(text=f"{entry['name']}({types})")
            selectors[entry["name"]] = "0x" + digest[:4].hex()
    return selectors


def _hex40(address: str) -> str:
    """An address from web3 (EIP-55 mixed case) as 40 lowercase hex, no 0x."""
    return address.lower().removeprefix("0x")


def _checksum(hex40: str) -> str:
    return AsyncWeb3.to_checksum_address("0x" + hex40)


@dataclass(frozen=True)
class ChainRecord:
    """A name's record as the contract holds it; addresses are 40 lowercase hex."""

    name: str
    addr: str
    owner: str
    publickey: str
    signature: str


@dataclass(frozen=True)
class ChainView:
    """What one batch read: per name its record (None when free: no owner, no address;
    a record's addr is zero when an owner holds it without one) and owner, and the name
    an address points to."""

    records: list[ChainRecord | None]
    owners: list[str]
    reverse_name: str | None


# What the registrar holds per name, in the order of view()'s reads.
RECORD_FIELDS = ("addr", "owner", "publickey", "signature")


class Registrar:
    """Reads and encodes calls of one deployed registrar."""

    def __init__(self, client: ChainClient, address: str) -> None:
        self.client = client
        self.address = AsyncWeb3.to_checksum_address(address)
        self.contract = client.w3.eth.contract(address=self.address, abi=artifact()["abi"])

    async def is_deployed(self) -> bool:
        code = await self.client.call(self.client.w3.eth.get_code(self.address))
        return len(code) > 0

    def _selector(self, function: str) -> str:
        return _selectors()[function]

    async def records_at(
        self, names: list[str], block: int | str = "latest"
    ) -> list[ChainRecord | None]:
        """Full records of many names at `block`, in one JSON-RPC batch."""
        return (await self.view(names, block=block)).records

    async def view(
        self,
        names: list[str],
        *,
        jami_id: str | None = None,
        block: int | str = "latest",
        mostly_free: bool = False,
    ) -> ChainView:
        """Records and owners of `names`, and the name of `jami_id`, in one JSON-RPC batch
        of raw eth_calls (web3's per-call formatting costs more than the node's work).

        `mostly_free`: the names are expected free (a registration's check). The batch then
        asks only who holds each name, two calls per name instead of four, and the records
        of the names held are read whole in a second batch (each record, owner included,
        from that one read). A free name costs three calls of five (its addr and owner, the
        reverse entry), and the node answers a batch one call after the other."""
        if not mostly_free:
            return await self._view(names, jami_id, block, RECORD_FIELDS)
        holders = await self._view(names, jami_id, block, ("addr", "owner"))
        held = [name for name, record in zip(names, holders.records, strict=True) if record]
        if not held:
            return holders
        full = dict(zip(held, await self.records_at(held, block), strict=True))
        records = [full.get(name) for name in names]
        return ChainView(
            records=records,
            owners=[record.owner if record is not None else ZERO_ADDRESS for record in records],
            reverse_name=holders.reverse_name,
        )

    async def _view(
        self, names: list[str], jami_id: str | None, block: int | str, fields: tuple[str, ...]
    ) -> ChainView:
        """view() reading `fields` of each name (the fields not read are left empty)."""
        selectors = {field: self._selector(field) for field in fields}
        block_id = hex(block) if isinstance(block, int) else block
        calls = [
            (
                "eth_call",
                [
                    {"to": self.address, "data": selectors[field] + to_bytes32(name).hex()},
                    block_id,
                ],
            )
            for name in names
            for field in fields
        ]
        if jami_id is not None:
            reverse_call = self._selector("name") + "0" * 24 + jami_id
            calls.append(("eth_call", [{"to": self.address, "data": reverse_call}, block_id]))
        try:
            results = await self.client.rpc_batch(calls)
        except ChainRejected as exc:
            # A read the node refused ("header not found", shutting down, pruned state)
            # says nothing about the name: never "not registered".
            raise ChainUnavailable(f"chain node refused a registrar read: {exc}") from exc
        for result in results:
            self._check_answer(result)
        records: list[ChainRecord | None] = []
        owners: list[str] = []
        width = len(fields)
        for index, name in enumerate(names):
            read = dict(zip(fields, results[width * index : width * (index + 1)], strict=True))
            addr = _address_word(read["addr"])
            owners.append(_address_word(read["owner"]))
            if addr == ZERO_ADDRESS and owners[-1] == ZERO_ADDRESS:
                records.append(None)  # free: reserveFor would bind it
                continue
            # An owner with a zero address still holds the name (reserveFor refuses it).
            records.append(
                ChainRecord(
                    name=name,
                    addr=addr,
                    owner=owners[-1],
                    publickey=_string_result(read.get("publickey", "")),
                    signature=_string_result(read.get("signature", "")),
                )
            )
        reverse_name = None
        if jami_id is not None:
            raw = bytes.fromhex(str(results[-1])[2:] or "")
            if any(raw):
                try:
                    reverse_name = from_bytes32(raw)
                except BadName:
                    reverse_name = None
        return ChainView(records=records, owners=owners, reverse_name=reverse_name)

    def _check_answer(self, result: Any) -> None:
        """Refuse what a registrar with code never answers: an empty or short result is
        an address without code (a node still loading its state, reset, or on another
        chain), which would read as "every name is free"."""
        if not isinstance(result, str) or len(result) < 66 or (len(result) - 2) % 64:
            raise ChainUnavailable(
                f"the registrar at {self.address} answered {str(result)[:20]!r}: no contract "
                "there on this node now (still loading, reset, or another chain)"
            )

    async def touched_names(self, from_block: int, to_block: int) -> dict[bytes, int]:
        """Names (raw bytes32) that any registrar event touched in the range, each with the
        last block that touched it. Both events carry the name as topic 1."""
        logs = await self.client.rpc(
            "eth_getLogs",
            [{"address": self.address, "fromBlock": hex(from_block), "toBlock": hex(to_block)}],
        )
        touched: dict[bytes, int] = {}
        for log in logs:
            topics = log.get("topics") or []
            if len(topics) < 2 or log.get("removed"):
                continue
            key = bytes.fromhex(topics[1][2:])
            touched[key] = max(touched.get(key, 0), int(log["blockNumber"], 16))
        return touched

    def binds_in(self, receipt: Any, name: str, jami_id: str) -> bool:
        """Whether the transaction of `receipt` bound `name` to `jami_id` on this registrar.

        Decided from the receipt's logs alone (a node keeps receipts, not old states): the
        registrar emits PrimaryChanged(name, addr, owner) exactly when it writes the
        binding, and a refused reserveFor emits nothing and does not revert."""
        name_topic = "0x" + to_bytes32(name).hex()
        addr_topic = "0x" + "0" * 24 + jami_id
        for log in receipt.get("logs") or []:
            if _hex(log.get("address")) != self.address.lower() or log.get("removed"):
                continue
            topics = [_hex(topic) for topic in log.get("topics") or []]
            if topics[:3] == [PRIMARY_CHANGED, name_topic, addr_topic]:
                return True
        return False

    def reserve_for_data(
        self, *, name: str, owner: str, jami_id: str, publickey: str, signature: str
    ) -> str:
        """Call data of reserveFor(name, owner, addr, publickey, signedname)."""
        return str(
            self.contract.encode_abi(
                "reserveFor",
                args=[to_bytes32(name), _checksum(owner), _checksum(jami_id), publickey, signature],
            )
        )


def servable(name: str) -> bool:
    """Whether a name found on chain may be served: one a lookup could ask for.

    Anyone can write any 32 bytes on the contract (`rawname2 ` with a trailing space,
    `a b`, `x/owner`): those are not names. The lookup rules, not the registration
    rules: a name registered before today's policy (`Alice`, a look-alike) keeps
    resolving, as the README promises; fold collisions are the caller's to settle."""
    try:
        check_lookup_name(name)
    except BadName:
        return False
    return True


def _hex(value: Any) -> str:
    """A topic or address as web3 or raw JSON-RPC gives it → lowercase 0x-hex."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value).lower()


def _address_word(result: str) -> str:
    """A 32-byte ABI word holding an address → 40 lowercase hex."""
    return result[-40:].lower() if result and len(result) >= 42 else ZERO_ADDRESS


def _string_result(result: str) -> str:
    """An ABI-encoded `string` return value."""
    if not result or result == "0x":
        return ""
    (text,) = abi_decode(["string"], bytes.fromhex(result[2:]))
    return str(text)


def create_address(deployer: str, nonce: int) -> str:
    """Where a contract deployed by `deployer` with `nonce` lands (CREATE): 0x + 40 hex."""
    return get_create_address(HexAddress(HexStr("0x" + _hex40(deployer))), Nonce(nonce)).lower()


def deployment_data() -> str:
    """The registrar's creation bytecode (its constructor takes no argument)."""
    bytecode = str(artifact()["bytecode"])
    return bytecode if bytecode.startswith("0x") else "0x" + bytecode
