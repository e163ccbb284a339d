"""Clique genesis files: the public Jami chain's (network 1551) and private networks'.

Pure functions over plain values; `jamins genesis` writes what they return. The fork
schedule is the Jami chain's (PROTOCOL.md §6): nothing after Constantinople, which geth
also reads as Petersburg when `petersburgBlock` is absent, so a registrar built for the
`petersburg` EVM behaves the same on a private network as on 1551.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import rlp
from eth_utils.crypto import keccak

JAMI_CHAIN_ID = 1551
JAMI_SIGNERS = (
    "0x29B5638EB1440f715EB65E6ff1879dCA633A6Adf",
    "0x65FA721fAdfB68ba85e3a5587dfbdbeac9521eD1",
)
JAMI_TIMESTAMP = 0x5C75CB4C
JAMI_BOOTNODE = (
    "enode://11ba6d3bfdc29a8afb24dcfcf9a08c8008005ead62756eadb363523c2ca8b819efbb264053db3d73"
    "949f1375bb3f03090f44cacfb88bade38bb6fc2cb3d890a5@173.231.120.228:30301"
)

DEFAULT_PERIOD = 5
DEFAULT_EPOCH = 30000
DEFAULT_GAS_LIMIT = 0x47B760  # 4,700,000: about three RSA-4096 registrations a block
DEFAULT_BALANCE = 0x200000000000000000000000000000000000000000000000000000000000000

EXTRA_VANITY_BYTES = 32
EXTRA_SEAL_BYTES = 65
ZERO_HASH = "0x" + "00" * 32
ZERO_ADDRESS = "0x" + "00" * 20

_ADDRESS = re.compile(r"^(0x)?[0-9a-fA-F]{40}$")


class GenesisError(ValueError):
    """The genesis cannot be built from these values (the message says which)."""


def normalize_address(address: str) -> str:
    """`address` as 0x + 40 lowercase hex; GenesisError when it is not an address."""
    if not _ADDRESS.match(address.strip()):
        raise GenesisError(f"not an Ethereum address: {address!r}")
    return "0x" + address.strip().lower().removeprefix("0x")


def clique_extra_data(signers: Iterable[str]) -> str:
    """Clique's genesis extraData: 32 zero bytes, each signer's 20 bytes, 65 zero bytes."""
    addresses = sorted({normalize_address(signer) for signer in signers})
    if not addresses:
        raise GenesisError("a Clique network needs at least one signer")
    body = "".join(address.removeprefix("0x") for address in addresses)
    return "0x" + "00" * EXTRA_VANITY_BYTES + body + "00" * EXTRA_SEAL_BYTES


def jami_fork_config(chain_id: int, *, period: int, epoch: int) -> dict[str, Any]:
    """The chain config: the Jami chain's fork blocks and a Clique engine."""
    return {
        "chainId": chain_id,
        "homesteadBlock": 1,
        "eip150Block": 2,
        "eip150Hash": ZERO_HASH,
        "eip155Block": 3,
        "eip158Block": 3,
        "byzantiumBlock": 4,
        "constantinopleBlock": 5,
        "clique": {"period": period, "epoch": epoch},
    }


def build_clique_genesis(
    *,
    signers: Iterable[str],
    chain_id: int,
    period: int = DEFAULT_PERIOD,
    epoch: int = DEFAULT_EPOCH,
    gas_limit: int = DEFAULT_GAS_LIMIT,
    timestamp: int = 0,
    funded: Iterable[str] | None = None,
    balance: int = DEFAULT_BALANCE,
) -> dict[str, Any]:
    """A geth genesis for a Clique network sealed by `signers`.

    `funded` accounts (default: the signers, as on the Jami chain) start with `balance` wei.
    """
    signer_list = list(signers)
    if chain_id <= 0:
        raise GenesisError("the chain id must be a positive integer")
    if period < 1:
        # Clique with period 0 seals only blocks that carry transactions, and geth takes no
        # EIP-155 transaction before this schedule's block 3 (nor mines one): it never
        # leaves block 0. The forks stay where the Jami chain has them, so that a private
        # chain runs exactly the rules of network 1551.
        raise GenesisError(
            "--period must be at least 1 second: with period 0 and the Jami fork schedule "
            "geth never seals past block 0"
        )
    if epoch <= 0:
        raise GenesisError("the epoch must be > 0")
    if gas_limit < 5000:
        raise GenesisError("the gas limit must be at least 5000 (geth's minimum)")
    extra_data = clique_extra_data(signer_list)
    funded_list = signer_list if funded is None else list(funded)
    alloc = {
        normalize_address(account): {"balance": hex(balance)}
        for account in sorted({normalize_address(account) for account in funded_list})
    }
    return {
        "config": jami_fork_config(chain_id, period=period, epoch=epoch),
        "nonce": "0x0",
        "timestamp": hex(timestamp),
        "extraData": extra_data,
        "gasLimit": hex(gas_limit),
        "difficulty": "0x1",
        "mixHash": ZERO_HASH,
        "coinbase": ZERO_ADDRESS,
        "alloc": alloc,
        "number": "0x0",
        "gasUsed": "0x0",
        "parentHash": ZERO_HASH,
    }


def jami_genesis() -> dict[str, Any]:
    """The genesis of the public Jami chain, network 1551 (PROTOCOL.md §6)."""
    return build_clique_genesis(
        signers=JAMI_SIGNERS, chain_id=JAMI_CHAIN_ID, timestamp=JAMI_TIMESTAMP
    )


# -- the genesis block hash, as geth computes it ------------------------------------------

_EMPTY_TRIE_ROOT = keccak(rlp.encode(b""))
_EMPTY_CODE_HASH = keccak(b"")
_EMPTY_UNCLES_HASH = keccak(rlp.encode([]))


def _hex_bytes(value: str) -> bytes:
    text = value.removeprefix("0x")
    return bytes.fromhex(text if len(text) % 2 == 0 else "0" + text)


def _hex_int(value: str | int) -> int:
    return value if isinstance(value, int) else int(str(value), 16)


def _compact(nibbles: Sequence[int], *, leaf: bool) -> bytes:
    """The hex-prefix encoding of a trie path (Yellow Paper appendix C)."""
    flag = 2 if leaf else 0
    packed = [flag + 1, *nibbles] if len(nibbles) % 2 else [flag, 0, *nibbles]
    return bytes(packed[i] * 16 + packed[i + 1] for i in range(0, len(packed), 2))


def _node_ref(node: Any) -> Any:
    """How a parent refers to `node`: inline when its RLP is short, else by its hash."""
    encoded = rlp.encode(node)
    return node if len(encoded) < 32 else keccak(encoded)


def _trie_node(pairs: list[tuple[tuple[int, ...], bytes]]) -> Any:
    """The Merkle-Patricia node holding `pairs` (distinct paths of equal length)."""
    if len(pairs) == 1:
        path, value = pairs[0]
        return [_compact(path, leaf=True), value]
    prefix_length = 0
    first = pairs[0][0]
    while all(path[prefix_length] == first[prefix_length] for path, _ in pairs):
        prefix_length += 1
    if prefix_length:
        rest = [(path[prefix_length:], value) for path, value in pairs]
        return [_compact(first[:prefix_length], leaf=False), _node_ref(_trie_node(rest))]
    branch: list[Any] = [b""] * 17
    for nibble in range(16):
        group = [(path[1:], value) for path, value in pairs if path[0] == nibble]
        if group:
            branch[nibble] = _node_ref(_trie_node(group))
    return branch


def state_root(alloc: dict[str, Any]) -> bytes:
    """The state root of a genesis alloc of plain accounts (balance and nonce only)."""
    pairs = []
    for address, account in alloc.items():
        if account.get("code") or account.get("storage"):
            raise GenesisError("state_root handles accounts without code or storage only")
        key = keccak(_hex_bytes(address))
        value = rlp.encode(
            [
                _hex_int(account.get("nonce", 0)),
                _hex_int(account.get("balance", 0)),
                _EMPTY_TRIE_ROOT,
                _EMPTY_CODE_HASH,
            ]
        )
        pairs.append((tuple(nibble for byte in key for nibble in divmod(byte, 16)), value))
    if not pairs:
        return _EMPTY_TRIE_ROOT
    return keccak(rlp.encode(_trie_node(sorted(pairs))))


def genesis_hash(genesis: dict[str, Any]) -> str:
    """The hash of block 0 geth writes for `genesis` (pre-London: the 15-field header).

    Lets an operator check a node's block 0 against the genesis file without running geth.
    """
    config = genesis["config"]
    if any(key in config for key in ("londonBlock", "shanghaiTime", "cancunTime")):
        raise GenesisError("genesis_hash handles pre-London genesis files only")
    header = [
        _hex_bytes(genesis.get("parentHash", ZERO_HASH)),
        _EMPTY_UNCLES_HASH,
        _hex_bytes(genesis.get("coinbase", ZERO_ADDRESS)),
        state_root(genesis.get("alloc", {})),
        _EMPTY_TRIE_ROOT,  # transactions
        _EMPTY_TRIE_ROOT,  # receipts
        bytes(256),  # logs bloom
        _hex_int(genesis.get("difficulty", "0x0")),
        _hex_int(genesis.get("number", "0x0")),
        _hex_int(genesis["gasLimit"]),
        _hex_int(genesis.get("gasUsed", "0x0")),
        _hex_int(genesis.get("timestamp", "0x0")),
        _hex_bytes(genesis.get("extraData", "0x")),
        _hex_bytes(genesis.get("mixHash", ZERO_HASH)),
        _hex_int(genesis.get("nonce", "0x0")).to_bytes(8, "big"),
    ]
    return "0x" + keccak(rlp.encode(header)).hex()
