"""An in-process JSON-RPC node running a model of the registrar, for deterministic tests.

It sits at the adapter boundary: a web3 provider under the real ChainClient, so the
writer, the registrar adapter and the services run unchanged above it. It keeps no
history unless asked (like anvil `--prune-history`, geth's full node past 128 blocks, or
any node restarted from a state file): an `eth_call` at any block but the head fails as
those nodes fail. Failure modes a test switches on: a refused connection, a registrar
with no code (`0x` answers), an empty or partial batch, an RPC error on every call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import rlp
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.providers.async_base import AsyncBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from app.chain.client import ChainClient
from app.errors import ChainUnavailable

CHAIN_ID = 1551
REGISTRAR = "0x" + "52" * 20
ZERO = "0" * 40
CHANGED = "0x" + keccak(text="Changed(bytes32)").hex()
PRIMARY_CHANGED = "0x" + keccak(text="PrimaryChanged(bytes32,address,address)").hex()


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


SELECTORS = {
    _selector("reserveFor(bytes32,address,address,string,string)"): "reserveFor",
    _selector("disown(bytes32)"): "disown",
    _selector("setAddress(bytes32,address,bool)"): "setAddress",
    _selector("addr(bytes32)"): "addr",
    _selector("owner(bytes32)"): "owner",
    _selector("publickey(bytes32)"): "publickey",
    _selector("signature(bytes32)"): "signature",
    _selector("name(address)"): "name",
}


@dataclass
class Record:
    owner: str = ZERO
    addr: str = ZERO
    publickey: str = ""
    signature: str = ""


@dataclass
class Tx:
    hash: str
    sender: str
    nonce: int
    to: str | None
    data: bytes


@dataclass
class FakeNode:
    """The chain's state now; blocks keep receipts (a node always keeps those)."""

    records: dict[bytes, Record] = field(default_factory=dict)
    reverse: dict[str, bytes] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    pool: dict[str, Tx] = field(default_factory=dict)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    head: int = 1
    automine: bool = True
    keeps_history: bool = False
    # Failure modes
    refuse: bool = False
    no_code: bool = False
    batch_answer: str | None = None  # "empty", "partial", "error"
    rpc_error: str | None = None
    calls: int = 0
    methods: list[str] = field(default_factory=list)
    # Awaited before the node answers the next batch (then forgotten): what happens
    # while a read is on its way.
    before_batch: Callable[[], Awaitable[None]] | None = None

    def client(self) -> ChainClient:
        client = ChainClient("http://fake-node", timeout=5)
        provider = FakeProvider(self)
        client.w3 = AsyncWeb3(provider)  # type: ignore[arg-type]
        client.transport = FakeTransport(provider)
        return client

    # -- the model of the registrar ------------------------------------------------------

    def _execute(self, tx: Tx, block: int, index: int) -> dict[str, Any]:
        logs: list[dict[str, Any]] = []
        status = 1
        if tx.to is not None and tx.to.lower() == REGISTRAR and not self.no_code:
            function = SELECTORS.get(tx.data[:4])
            if function == "reserveFor":
                name, owner, addr, key, sig = abi_decode(
                    ["bytes32", "address", "address", "string", "string"], tx.data[4:]
                )
                logs = self._reserve_for(name, owner[2:].lower(), addr[2:].lower(), key, sig)
            elif function == "disown":
                (name,) = abi_decode(["bytes32"], tx.data[4:])
                record = self.records.get(name)
                if record is None or record.owner != tx.sender[2:].lower() or record.owner == ZERO:
                    status = 0
                else:
                    if self.reverse.get(record.addr) == name:
                        del self.reverse[record.addr]
                    del self.records[name]
                    logs = [self._log(CHANGED, name)]
            elif function == "setAddress":
                name, addr, primary = abi_decode(["bytes32", "address", "bool"], tx.data[4:])
                record = self.records.get(name)
                if record is None or record.owner != tx.sender[2:].lower() or record.owner == ZERO:
                    status = 0
                elif (
                    primary
                    and addr[2:].lower() != ZERO
                    and self.reverse.get(addr[2:].lower(), name) != name
                ):
                    status = 0  # require: "address has another name"
                else:
                    logs = self._set_address(name, record, addr[2:].lower(), primary)
        for position, log in enumerate(logs):
            log.update(
                blockNumber=hex(block),
                transactionHash=tx.hash,
                transactionIndex=hex(index),
                logIndex=hex(position),
                blockHash="0x" + keccak(block.to_bytes(8, "big")).hex(),
                removed=False,
            )
        return {
            "transactionHash": tx.hash,
            "blockNumber": hex(block),
            "blockHash": "0x" + keccak(block.to_bytes(8, "big")).hex(),
            "transactionIndex": hex(index),
            "from": tx.sender,
            "to": tx.to,
            "status": hex(status),
            "logs": logs,
            "gasUsed": hex(100_000),
            "cumulativeGasUsed": hex(100_000),
        }

    def _log(self, topic: str, name: bytes, *extra: str) -> dict[str, Any]:
        return {"address": REGISTRAR, "topics": [topic, "0x" + name.hex(), *extra], "data": "0x"}

    def _reserve_for(
        self, name: bytes, owner: str, addr: str, key: str, sig: str
    ) -> list[dict[str, Any]]:
        if name == bytes(32) or (owner == ZERO and addr == ZERO):
            return []
        record = self.records.get(name)
        if record is not None and (record.owner != ZERO or record.addr != ZERO):
            return []
        if addr != ZERO and addr in self.reverse:
            return []
        self.records[name] = Record(owner=owner, addr=addr, publickey=key, signature=sig)
        logs = []
        if addr != ZERO:
            self.reverse[addr] = name
            logs.append(
                self._log(PRIMARY_CHANGED, name, "0x" + "0" * 24 + addr)
                | {"data": "0x" + "0" * 24 + owner}
            )
        return [*logs, self._log(CHANGED, name)]

    def _set_address(
        self, name: bytes, record: Record, addr: str, primary: bool
    ) -> list[dict[str, Any]]:
        if record.addr != ZERO and self.reverse.get(record.addr) == name:
            del self.reverse[record.addr]
        record.addr = addr
        logs = []
        if primary and addr != ZERO:
            self.reverse[addr] = name
            logs.append(
                self._log(PRIMARY_CHANGED, name, "0x" + "0" * 24 + addr)
                | {"data": "0x" + "0" * 24 + record.owner}
            )
        return [*logs, self._log(CHANGED, name)]

    def mine(self) -> None:
        """One block with every pooled transaction that is next in its sender's order."""
        self.head += 1
        index = 0
        progress = True
        while progress:
            progress = False
            for tx_hash, tx in list(self.pool.items()):
                if tx.nonce == self.nonces.get(tx.sender, 0):
                    self.nonces[tx.sender] = tx.nonce + 1
                    self.receipts[tx_hash] = self._execute(tx, self.head, index)
                    del self.pool[tx_hash]
                    index += 1
                    progress = True
            for tx_hash, tx in list(self.pool.items()):
                if tx.nonce < self.nonces.get(tx.sender, 0):
                    del self.pool[tx_hash]  # replaced by another transaction's nonce

    def direct_reserve_for(
        self,
        sender: str,
        name: str,
        owner: str,
        addr: str,
        publickey: str = "",
        signature: str = "",
    ) -> None:
        """Another account's reserveFor, pooled (mined with the next block)."""
        data = _selector("reserveFor(bytes32,address,address,string,string)") + abi_encode(
            ["bytes32", "address", "address", "string", "string"],
            [name.encode().ljust(32, b"\0"), "0x" + owner, "0x" + addr, publickey, signature],
        )
        self._pool_direct(sender, data)

    def direct_set_address(self, sender: str, name: str, addr: str, primary: bool) -> None:
        """The name's owner calls setAddress directly, pooled (mined with the next block)."""
        data = _selector("setAddress(bytes32,address,bool)") + abi_encode(
            ["bytes32", "address", "bool"], [name.encode().ljust(32, b"\0"), "0x" + addr, primary]
        )
        self._pool_direct(sender, data)

    def _pool_direct(self, sender: str, data: bytes) -> None:
        sender = sender.lower()
        nonce = self.nonces.get(sender, 0) + sum(
            1 for tx in self.pool.values() if tx.sender == sender
        )
        tx_hash = "0x" + keccak(sender.encode() + nonce.to_bytes(8, "big")).hex()
        self.pool[tx_hash] = Tx(tx_hash, sender, nonce, REGISTRAR, data)

    # -- JSON-RPC ------------------------------------------------------------------------

    def answer(self, method: str, params: list[Any]) -> Any:
        """The result of one call; raises RpcError for a JSON-RPC error."""
        self.calls += 1
        self.methods.append(method)
        if self.rpc_error is not None:
            raise RpcError(self.rpc_error)
        handler = getattr(self, "_" + method, None)
        if handler is None:
            raise RpcError(f"method {method} not supported")
        return handler(*params)

    def _block_tag(self, block: str) -> None:
        if block in ("latest", "pending") or int(block, 16) == self.head:
            return
        if not self.keeps_history:
            wanted = int(block, 16)
            raise RpcError(
                f"BlockOutOfRangeError: block height is {self.head} but requested was {wanted}"
            )

    def _eth_chainId(self) -> str:
        return hex(CHAIN_ID)

    def _eth_blockNumber(self) -> str:
        return hex(self.head)

    def _eth_gasPrice(self) -> str:
        return hex(10**9)

    def _eth_estimateGas(self, tx: dict[str, Any], *_: Any) -> str:
        return hex(200_000)

    def _eth_getBlockByNumber(self, block: str, full: bool) -> dict[str, Any] | None:
        number = self.head if block in ("latest", "pending") else int(block, 16)
        if number > self.head:
            return None
        return {
            "number": hex(number),
            "hash": "0x" + keccak(number.to_bytes(8, "big")).hex(),
            "gasLimit": hex(4_700_000),
        }

    def _eth_getCode(self, address: str, block: str) -> str:
        return "0x" if self.no_code or address.lower() != REGISTRAR else "0x6080"

    def _eth_getTransactionCount(self, address: str, block: str) -> str:
        address = address.lower()
        count = self.nonces.get(address, 0)
        if block == "pending":
            pooled = sorted(tx.nonce for tx in self.pool.values() if tx.sender == address)
            for nonce in pooled:
                if nonce == count:
                    count += 1
        return hex(count)

    def _eth_sendRawTransaction(self, raw: str) -> str:
        raw_bytes = bytes.fromhex(raw[2:])
        fields = rlp.decode(raw_bytes)
        sender = Account.recover_transaction(raw).lower()
        nonce = int.from_bytes(fields[0], "big")
        to = "0x" + fields[3].hex() if fields[3] else None
        tx_hash = "0x" + keccak(raw_bytes).hex()
        if tx_hash in self.pool or tx_hash in self.receipts:
            raise RpcError("already known")
        if nonce < self.nonces.get(sender, 0):
            raise RpcError("nonce too low")
        self.pool[tx_hash] = Tx(tx_hash, sender, nonce, to, bytes(fields[5]))
        if self.automine:
            self.mine()
        return tx_hash

    def _eth_getTransactionReceipt(self, tx_hash: str) -> dict[str, Any] | None:
        return self.receipts.get(tx_hash)

    def _eth_getTransactionByHash(self, tx_hash: str) -> dict[str, Any] | None:
        tx = self.pool.get(tx_hash)
        if tx is None and tx_hash not in self.receipts:
            return None
        # A node gives the gas limit too: receipts without a status are read against it.
        return {"hash": tx_hash, "gas": hex(500_000)}

    def _eth_getLogs(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        low, high = int(query["fromBlock"], 16), int(query["toBlock"], 16)
        return [
            log
            for receipt in self.receipts.values()
            if low <= int(receipt["blockNumber"], 16) <= high
            for log in receipt["logs"]
        ]

    def _evm_mine(self) -> str:
        self.mine()
        return "0x0"

    def _eth_call(self, call: dict[str, Any], block: str = "latest") -> str:
        self._block_tag(block)
        if self.no_code or call["to"].lower() != REGISTRAR:
            return "0x"
        data = bytes.fromhex(call["data"][2:])
        function = SELECTORS[data[:4]]
        if function == "name":
            (addr,) = abi_decode(["address"], data[4:])
            return "0x" + self.reverse.get(addr[2:].lower(), bytes(32)).hex()
        (name,) = abi_decode(["bytes32"], data[4:])
        record = self.records.get(name, Record())
        if function in ("addr", "owner"):
            return "0x" + "0" * 24 + str(getattr(record, function))
        return "0x" + abi_encode(["string"], [getattr(record, function)]).hex()


class RpcError(Exception):
    pass


class FakeProvider(AsyncBaseProvider):
    def __init__(self, node: FakeNode) -> None:
        super().__init__()
        self.node = node
        self._ids = 0

    def _response(self, method: str, params: Any) -> RPCResponse:
        self._ids += 1
        try:
            return {
                "jsonrpc": "2.0",
                "id": self._ids,
                "result": self.node.answer(method, list(params)),
            }
        except RpcError as exc:
            return {
                "jsonrpc": "2.0",
                "id": self._ids,
                "error": {"code": -32000, "message": str(exc)},
            }

    def _refuse(self) -> None:
        if self.node.refuse:
            raise aiohttp.ClientConnectionError("Cannot connect to host fake-node: refused")

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        self._refuse()
        return self._response(method, params)

    async def make_batch_request(
        self, requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        self._refuse()
        if self.node.before_batch is not None:
            hook, self.node.before_batch = self.node.before_batch, None
            await hook()
        if self.node.batch_answer == "error":
            return {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "batch refused"},
            }
        responses = [self._response(method, params) for method, params in requests]
        if self.node.batch_answer == "empty":
            return []
        if self.node.batch_answer == "partial":
            return responses[: len(responses) // 2]
        return responses

    async def is_connected(self, show_traceback: bool = False) -> bool:
        return not self.node.refuse


class FakeTransport:
    """ChainClient's raw JSON-RPC transport (app.chain.client.HttpTransport) on the same
    fake node: what HttpTransport sends, answered as FakeProvider answers web3."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def send(self, payload: dict[str, Any] | list[dict[str, Any]]) -> Any:
        try:
            if isinstance(payload, list):
                calls = [(RPCEndpoint(call["method"]), call["params"]) for call in payload]
                return await self.provider.make_batch_request(calls)
            return await self.provider.make_request(
                RPCEndpoint(payload["method"]), payload["params"]
            )
        except aiohttp.ClientError as exc:
            raise ChainUnavailable() from exc

    async def close(self) -> None:
        pass
