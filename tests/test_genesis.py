"""The public 1551 genesis against PROTOCOL.md §6, and `jamins genesis` for private networks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.genesis import (
    EXTRA_SEAL_BYTES,
    EXTRA_VANITY_BYTES,
    GenesisError,
    build_clique_genesis,
    clique_extra_data,
    genesis_hash,
    jami_genesis,
)
from tests.geth import GethNode

GENESIS_DIR = Path(__file__).resolve().parents[1] / "genesis"
ZERO32 = "0x" + "00" * 32
# Block 0 of network 1551 as geth 1.13.15 writes it from genesis/1551.json (checked with
# `geth init` in test_geth_init_public_genesis_gives_the_pinned_hash).
JAMI_GENESIS_HASH = "0x0af63ba6b1ffac5ea4aac146bb653517df622e6ebf2a59d6e8def2533e8b061b"
JAMI_STATE_ROOT = "0x9162a309c102f46accebe14538d731cafd5c272d37a27897df3960924449b351"


def signers_of(genesis: dict[str, Any]) -> list[str]:
    """The signer addresses (0x + lowercase hex) a genesis's extraData lists."""
    extra = bytes.fromhex(str(genesis["extraData"]).removeprefix("0x"))
    body = extra[EXTRA_VANITY_BYTES : len(extra) - EXTRA_SEAL_BYTES]
    if len(extra) < EXTRA_VANITY_BYTES + EXTRA_SEAL_BYTES or len(body) % 20:
        raise GenesisError("extraData is not 32 bytes + 20 bytes per signer + 65 bytes")
    return ["0x" + body[index : index + 20].hex() for index in range(0, len(body), 20)]


# PROTOCOL.md §6, copied by hand: the tests must not take these from app/genesis.py.
SPEC_SIGNERS = [
    "0x29B5638EB1440f715EB65E6ff1879dCA633A6Adf",
    "0x65FA721fAdfB68ba85e3a5587dfbdbeac9521eD1",
]
SPEC_BALANCE = 0x200000000000000000000000000000000000000000000000000000000000000
SPEC_BOOTNODE = (
    "enode://11ba6d3bfdc29a8afb24dcfcf9a08c8008005ead62756eadb363523c2ca8b819efbb264053db3d"
    "73949f1375bb3f03090f44cacfb88bade38bb6fc2cb3d890a5@173.231.120.228:30301"
)
SPEC_FORKS = {
    "homesteadBlock": 1,
    "eip150Block": 2,
    "eip150Hash": ZERO32,
    "eip155Block": 3,
    "eip158Block": 3,
    "byzantiumBlock": 4,
    "constantinopleBlock": 5,
}
LATER_FORKS = (
    "petersburgBlock",
    "istanbulBlock",
    "muirGlacierBlock",
    "berlinBlock",
    "londonBlock",
    "arrowGlacierBlock",
    "grayGlacierBlock",
    "mergeNetsplitBlock",
    "shanghaiTime",
    "cancunTime",
    "terminalTotalDifficulty",
)

SEALER = "0x8Ba1f109551bD432803012645Ac136ddd64DBA72"
OTHER_SEALER = "0x0000000000000000000000000000000000000aBc"
PAYER = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"


def hex_int(value: str) -> int:
    assert value.startswith("0x"), value
    return int(value, 16)


def extra_parts(extra_data: str) -> tuple[bytes, bytes, bytes]:
    raw = bytes.fromhex(extra_data.removeprefix("0x"))
    return raw[:32], raw[32:-65], raw[-65:]


@pytest.fixture(scope="module")
def public_genesis() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((GENESIS_DIR / "1551.json").read_text())
    return document


def test_public_genesis_config_matches_the_spec(public_genesis: dict[str, Any]) -> None:
    config = public_genesis["config"]
    assert config["chainId"] == 1551
    for fork, block in SPEC_FORKS.items():
        assert config[fork] == block, fork
    for fork in LATER_FORKS:
        assert fork not in config, fork
    assert config["clique"] == {"period": 5, "epoch": 30000}
    assert set(config) == {"chainId", "clique", *SPEC_FORKS}


def test_public_genesis_header_fields_match_the_spec(public_genesis: dict[str, Any]) -> None:
    assert hex_int(public_genesis["nonce"]) == 0
    assert hex_int(public_genesis["timestamp"]) == 0x5C75CB4C
    assert hex_int(public_genesis["gasLimit"]) == 4_700_000
    assert hex_int(public_genesis["difficulty"]) == 1
    assert public_genesis["mixHash"] == ZERO32
    assert public_genesis["parentHash"] == ZERO32
    assert public_genesis["coinbase"] == "0x" + "00" * 20
    assert hex_int(public_genesis["number"]) == 0
    assert hex_int(public_genesis["gasUsed"]) == 0
    assert set(public_genesis) == {
        "config",
        "nonce",
        "timestamp",
        "extraData",
        "gasLimit",
        "difficulty",
        "mixHash",
        "coinbase",
        "alloc",
        "number",
        "gasUsed",
        "parentHash",
    }


def test_public_genesis_extra_data_lists_the_jami_signers(public_genesis: dict[str, Any]) -> None:
    vanity, body, seal = extra_parts(public_genesis["extraData"])
    assert vanity == bytes(32)
    assert seal == bytes(65)
    assert body == b"".join(bytes.fromhex(signer[2:]) for signer in SPEC_SIGNERS)


def test_public_genesis_alloc_funds_both_signers(public_genesis: dict[str, Any]) -> None:
    alloc = {
        key.lower().removeprefix("0x"): value for key, value in public_genesis["alloc"].items()
    }
    assert alloc == {signer[2:].lower(): {"balance": hex(SPEC_BALANCE)} for signer in SPEC_SIGNERS}


def test_public_genesis_is_what_the_module_builds(public_genesis: dict[str, Any]) -> None:
    assert public_genesis == jami_genesis()
    assert (GENESIS_DIR / "1551.json").read_text() == json.dumps(jami_genesis(), indent=2) + "\n"


def test_bootnode_file_holds_the_spec_bootnode() -> None:
    lines = (GENESIS_DIR / "1551.bootnodes").read_text().split()
    assert lines == [SPEC_BOOTNODE]


def run_genesis(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["genesis", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_genesis_defaults(tmp_path: Path) -> None:
    out = tmp_path / "private.json"
    code, _, _ = run_genesis(
        "--signer", SEALER, "--chain-id", "4242", "--timestamp", "1700000000", "--out", str(out)
    )
    assert code == 0
    document = json.loads(out.read_text())
    config = document["config"]
    assert config["chainId"] == 4242
    for fork, block in SPEC_FORKS.items():
        assert config[fork] == block, fork
    for fork in LATER_FORKS:
        assert fork not in config, fork
    assert config["clique"] == {"period": 5, "epoch": 30000}
    assert document["gasLimit"] == "0x47b760"
    assert hex_int(document["timestamp"]) == 1_700_000_000
    assert hex_int(document["difficulty"]) == 1
    assert document["mixHash"] == ZERO32
    assert document["parentHash"] == ZERO32
    vanity, body, seal = extra_parts(document["extraData"])
    assert (vanity, body, seal) == (bytes(32), bytes.fromhex(SEALER[2:]), bytes(65))
    # Without --fund the signers are funded, as on the Jami chain.
    assert document["alloc"] == {SEALER.lower(): {"balance": hex(SPEC_BALANCE)}}


def test_cli_genesis_several_signers_sorted_and_a_separate_payer() -> None:
    code, stdout, _ = run_genesis(
        "--signer",
        SEALER,
        "--signer",
        OTHER_SEALER.lower().removeprefix("0x"),
        "--chain-id",
        "777",
        "--period",
        "2",
        "--gas-limit",
        "8000000",
        "--fund",
        PAYER,
        "--timestamp",
        "0",
    )
    assert code == 0
    document = json.loads(stdout)
    vanity, body, seal = extra_parts(document["extraData"])
    assert vanity == bytes(32) and seal == bytes(65)
    assert body == bytes.fromhex(OTHER_SEALER[2:]) + bytes.fromhex(SEALER[2:])
    assert signers_of(document) == [OTHER_SEALER.lower(), SEALER.lower()]
    assert document["config"]["chainId"] == 777
    assert document["config"]["clique"] == {"period": 2, "epoch": 30000}
    assert hex_int(document["gasLimit"]) == 8_000_000
    assert list(document["alloc"]) == [PAYER.lower()]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--signer", SEALER, "--chain-id", "1551"], id="public-chain-id"),
        pytest.param(["--signer", "0x1234", "--chain-id", "5"], id="short-address"),
        pytest.param(["--signer", "0x" + "g" * 40, "--chain-id", "5"], id="not-hex"),
        pytest.param(["--signer", SEALER, "--chain-id", "0"], id="zero-chain-id"),
        pytest.param(["--signer", SEALER, "--chain-id", "5", "--fund", "x"], id="bad-fund"),
        # Period 0 seals only blocks with transactions, and geth takes no EIP-155
        # transaction before the Jami schedule's block 3: the chain would stay at block 0.
        pytest.param(["--signer", SEALER, "--chain-id", "5", "--period", "0"], id="period-0"),
    ],
)
def test_cli_genesis_refuses(args: list[str]) -> None:
    code, stdout, stderr = run_genesis(*args)
    assert code == 2
    assert stdout == ""
    assert stderr


def test_cli_genesis_period_0_error_names_the_setting() -> None:
    code, _, stderr = run_genesis("--signer", SEALER, "--chain-id", "5", "--period", "0")
    assert code == 2
    assert "--period" in stderr and "block 0" in stderr


def test_cli_genesis_needs_a_signer() -> None:
    code, _, _ = run_genesis("--chain-id", "5")
    assert code != 0


def test_extra_data_deduplicates_signers() -> None:
    extra = clique_extra_data([SEALER, SEALER.lower()])
    assert len(bytes.fromhex(extra[2:])) == 32 + 20 + 65


def test_build_refuses_no_signers() -> None:
    with pytest.raises(GenesisError):
        build_clique_genesis(signers=[], chain_id=5)


def test_signers_of_refuses_a_short_extra_data() -> None:
    with pytest.raises(GenesisError):
        signers_of({"extraData": "0x" + "00" * 40})


# -- the genesis hash ---------------------------------------------------------------------


def test_public_genesis_hash_computed_without_geth(public_genesis: dict[str, Any]) -> None:
    assert genesis_hash(public_genesis) == JAMI_GENESIS_HASH
    # SFL's file writes addresses in mixed case and alloc keys without 0x: same block.
    assert genesis_hash(jami_genesis()) == JAMI_GENESIS_HASH


def test_genesis_hash_follows_every_header_field(public_genesis: dict[str, Any]) -> None:
    changed = {**public_genesis, "timestamp": hex(int(public_genesis["timestamp"], 16) + 1)}
    assert genesis_hash(changed) != JAMI_GENESIS_HASH
    richer = json.loads(json.dumps(public_genesis))
    first = next(iter(richer["alloc"]))
    richer["alloc"][first]["balance"] = "0x1"
    assert genesis_hash(richer) != JAMI_GENESIS_HASH


def test_geth_init_public_genesis_gives_the_pinned_hash(geth_binary: str, tmp_path: Path) -> None:
    node = GethNode(
        tmp_path,
        binary=geth_binary,
        chain_id=1551,
        genesis_file=GENESIS_DIR / "1551.json",
        mine=False,
    )
    assert "hash=0af63b..8b061b" in (tmp_path / "init.log").read_text()
    node.start()
    try:
        block = node.rpc("eth_getBlockByNumber", ["0x0", False])
    finally:
        node.stop()
    assert block["hash"] == JAMI_GENESIS_HASH
    assert block["stateRoot"] == JAMI_STATE_ROOT


def test_geth_accepts_jamins_genesis_with_the_computed_hash(geth: GethNode) -> None:
    # The session's geth runs on a genesis `jamins genesis` wrote, and seals on it.
    assert geth.block_number() >= 5
    block = geth.rpc("eth_getBlockByNumber", ["0x0", False])
    assert block["hash"] == genesis_hash(geth.genesis)
