"""Writing the registrar directly, fast, as another party would (not through jamins):
for tests and benchmarks that need a chain already holding many names."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak
from web3 import Web3

from app.chain.registrar import artifact, create_address
from app.names import to_bytes32

GAS_PRICE = 10**9


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


RESERVE_FOR = _selector("reserveFor(bytes32,address,address,string,string)")
TRANSFER = _selector("transfer(bytes32,address)")
DISOWN = _selector("disown(bytes32)")
SET_ADDRESS = _selector("setAddress(bytes32,address,bool)")


def rpc_batch(
    url: str, calls: list[tuple[str, list[Any]]], timeout: float = 120, check: bool = True
) -> list[Any]:
    if not calls:
        return []
    payload = [
        {"jsonrpc": "2.0", "id": index, "method": method, "params": params}
        for index, (method, params) in enumerate(calls)
    ]
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        answers = sorted(json.loads(response.read()), key=lambda answer: answer["id"])
    for answer in answers:
        if check and "error" in answer:
            raise RuntimeError(f"node refused: {answer['error']}")
    return [answer.get("result") for answer in answers]


def rpc(url: str, method: str, params: list[Any]) -> Any:
    return rpc_batch(url, [(method, params)])[0]


@dataclass(frozen=True)
class DirectRecord:
    name: str
    jami_id: str  # 40 lowercase hex
    publickey: str = ""
    signature: str = ""


class DirectWriter:
    """An account that sends registrar transactions itself, in JSON-RPC batches."""

    def __init__(self, url: str, key: str, contract: str | None = None) -> None:
        self.url = url
        self.account = Account.from_key(key)
        self.contract = contract
        self.nonce = int(rpc(url, "eth_getTransactionCount", [self.account.address, "pending"]), 16)
        self.chain_id = int(rpc(url, "eth_chainId", []), 16)
        self.automining = True  # anvil; geth seals on its own clock (no evm_mine)

    @property
    def address(self) -> str:
        return str(self.account.address).lower()

    def deploy(self) -> str:
        """Deploy our registrar from this account; returns its address."""
        address = create_address(self.account.address, self.nonce)
        self._send_all(
            [(None, bytes.fromhex(str(artifact()["bytecode"]).removeprefix("0x")))], gas=2_000_000
        )
        self.contract = address
        return address

    def reserve_for(self, records: list[DirectRecord], *, batch: int = 200) -> None:
        """reserveFor each record with this account as owner; returns once all are mined."""
        calls = [
            (
                self.contract,
                RESERVE_FOR
                + abi_encode(
                    ["bytes32", "address", "address", "string", "string"],
                    [
                        to_bytes32(record.name),
                        self.account.address,
                        "0x" + record.jami_id,
                        record.publickey,
                        record.signature,
                    ],
                ),
            )
            for record in records
        ]
        for start in range(0, len(calls), batch):
            self._send_all(calls[start : start + batch])

    def transfer(self, name: str, new_owner: str) -> None:
        data = TRANSFER + abi_encode(["bytes32", "address"], [to_bytes32(name), new_owner])
        self._send_all([(self.contract, data)])

    def disown(self, name: str) -> None:
        self._send_all([(self.contract, DISOWN + abi_encode(["bytes32"], [to_bytes32(name)]))])

    def set_address(self, name: str, jami_id: str, primary: bool = True) -> None:
        data = SET_ADDRESS + abi_encode(
            ["bytes32", "address", "bool"], [to_bytes32(name), "0x" + jami_id, primary]
        )
        self._send_all([(self.contract, data)])

    def _send_all(self, calls: list[tuple[str | None, bytes]], gas: int | None = None) -> None:
        raws = []
        hashes = []
        for to, data in calls:
            tx: dict[str, Any] = {
                "nonce": self.nonce,
                "gasPrice": GAS_PRICE,
                "gas": gas or (90_000 + 700 * len(data)),
                "data": data,
                "value": 0,
                "chainId": self.chain_id,
            }
            if to is not None:
                tx["to"] = _checksum(to)
            signed = self.account.sign_transaction(tx)
            raws.append("0x" + signed.raw_transaction.hex())
            hashes.append("0x" + signed.hash.hex())
            self.nonce += 1
        first_nonce = self.nonce - len(raws)
        rpc_batch(self.url, [("eth_sendRawTransaction", [raw]) for raw in raws])
        self._wait_mined(hashes[-1], raws, first_nonce)
        receipts = rpc_batch(self.url, [("eth_getTransactionReceipt", [h]) for h in hashes])
        failed = [
            h for h, receipt in zip(hashes, receipts, strict=True) if receipt["status"] != "0x1"
        ]
        if failed:
            raise RuntimeError(f"{len(failed)} transactions reverted, e.g. {failed[0]}")

    def _wait_mined(
        self, tx_hash: str, raws: list[str], first_nonce: int, timeout: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout
        while rpc(self.url, "eth_getTransactionReceipt", [tx_hash]) is None:
            mined = int(rpc(self.url, "eth_getTransactionCount", [self.address, "latest"]), 16)
            pool = rpc(self.url, "txpool_status", [])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tx_hash} not mined: pool {pool}, mined nonce {mined}")
            if int(pool["pending"], 16) == 0:
                # Under load anvil has been seen to drop part of a burst from its pool,
                # leaving the rest queued behind the gap: send again what is not mined
                # (the same bytes, so nothing twice).
                rpc_batch(
                    self.url,
                    [("eth_sendRawTransaction", [raw]) for raw in raws[mined - first_nonce :]],
                    check=False,  # some may be mined meanwhile: "nonce too low"
                )
            # anvil's automine makes one block per arriving transaction, each as full as
            # the gas limit allows: what a burst leaves in the pool waits for a block.
            if self.automining:
                try:
                    rpc(self.url, "evm_mine", [])
                except RuntimeError:  # geth: "the method evm_mine does not exist"
                    self.automining = False
            if not self.automining:
                time.sleep(0.2)


def _checksum(address: str) -> str:
    return str(Web3.to_checksum_address(address))
