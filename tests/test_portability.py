"""names.json round trip with the real commands: index and export one chain, import into a
fresh chain, index and export again: the same bytes.

`jamins index` and `jamins export` run as real processes once (chain A, shared by both
round trips), `jamins import` once (the conflicts test): the exit code and the summary an
operator reads. Every other case runs the same commands in this process (tests.cli_runner),
without paying an interpreter's start-up for each."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.chain.anvil import AnvilNode
from tests.chain_tools import DirectRecord, DirectWriter
from tests.chain_tools import _selector as selector
from tests.chain_tools import rpc as chain_rpc
from tests.cli_runner import CommandResult, run_jamins
from tests.conftest import ChainNode, funded_key, unique_name
from tests.jami_keys import account_pool
from tests.pg import PostgresServer
from tests.server import REPO_ROOT


@pytest.fixture(scope="module")
def node_a(anvil_binary: str) -> Iterator[AnvilNode]:
    """Chain A, where names are exported from: each test deploys a registrar of its own."""
    with AnvilNode(binary=anvil_binary) as node:
        yield node


@pytest.fixture(params=["anvil", "geth"])
def node_b(request: pytest.FixtureRequest) -> ChainNode:
    """The chain names are imported into: the session's anvil or geth (a registrar of its
    own there: another chain than node_a's all the same)."""
    chain_node: ChainNode = request.getfixturevalue(request.param)
    return chain_node


def jamins_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS`: a real process, with `env` as its whole environment."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "JAMINS_ENV_FILE": "", "JAMINS_CONFIRMATIONS": "0", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def jamins(*args: str, env: dict[str, str]) -> CommandResult:
    """The same command in this process."""
    return run_jamins(*args, env={"JAMINS_CONFIRMATIONS": "0", **env})


def written_records() -> list[DirectRecord]:
    keyed = [
        DirectRecord(
            name=unique_name("rt"),
            jami_id=secrets.token_hex(20),
            publickey=base64.b64encode(secrets.token_bytes(800)).decode(),
            signature=base64.b64encode(secrets.token_bytes(512)).decode(),
        )
        for _ in range(5)
    ]
    bare = [DirectRecord(name=unique_name("old"), jami_id=secrets.token_hex(20)) for _ in range(2)]
    unicode = [DirectRecord(name="élodie-" + secrets.token_hex(2), jami_id=secrets.token_hex(20))]
    return keyed + bare + unicode


@dataclass(frozen=True)
class ExportedChain:
    """Chain A's records, written by another party, indexed and exported by jamins."""

    owner: str
    written: list[DirectRecord]
    names_file: Path


@pytest.fixture(scope="module")
def exported_chain_a(node_a: AnvilNode, tmp_path_factory: pytest.TempPathFactory) -> ExportedChain:
    """`jamins index` then `jamins export` of chain A, as real processes."""
    writer = DirectWriter(node_a.url, funded_key(node_a))
    contract = writer.deploy()
    written = written_records()
    writer.reserve_for(written)
    folder = tmp_path_factory.mktemp("chain-a")
    env_a = {
        "JAMINS_RPC_URL": node_a.url,
        "JAMINS_CONTRACT_ADDRESS": contract,
        "JAMINS_INDEX_FROM_BLOCK": "0",
        "JAMINS_DATA_DIR": str(folder / "a"),
    }
    (folder / "a").mkdir()
    indexed = jamins_process("index", env=env_a)
    assert indexed.returncode == 0, indexed.stderr
    assert f"{len(written)} records loaded" in indexed.stderr
    names = folder / "a.json"
    exported = jamins_process("export", str(names), env=env_a)
    assert exported.returncode == 0, exported.stderr
    assert f"exported {len(written)} records to {names}" in exported.stderr
    return ExportedChain(owner=writer.address, written=written, names_file=names)


def test_export_import_export_round_trips_byte_for_byte(
    exported_chain_a: ExportedChain, node_b: ChainNode, tmp_path: Path, postgres: PostgresServer
) -> None:
    written, first = exported_chain_a.written, exported_chain_a.names_file
    records = json.loads(first.read_text(encoding="utf-8"))
    assert [record["name"] for record in records] == sorted(r.name for r in written)
    by_name = {record["name"]: record for record in records}
    for record in written:
        entry = by_name[record.name]
        assert entry["addr"] == "0x" + record.jami_id
        assert entry["owner"] == exported_chain_a.owner
        assert entry.get("publickey") == (record.publickey or None)
        assert entry.get("signature") == (record.signature or None)

    env_b = {
        "JAMINS_RPC_URL": node_b.url,
        "JAMINS_CHAIN_ID": str(node_b.chain_id),
        "JAMINS_DEPLOY": "true",
        "JAMINS_SIGNER_KEY": funded_key(node_b),
        "JAMINS_DATABASE_URL": postgres.create_database(f"rt_{secrets.token_hex(4)}"),
        "JAMINS_DATA_DIR": str(tmp_path / "b"),
    }
    # The keys and signatures are random bytes: only their bytes are round-tripped here.
    imported = jamins("import", "--no-verify", str(first), env=env_b)
    assert imported.returncode == 0, imported.stderr
    assert f"{len(written)} registered" in imported.stderr
    again = jamins("import", "--no-verify", str(first), env=env_b)  # resumable: nothing twice
    assert again.returncode == 0, again.stderr
    assert f"0 registered, 0 loaded into the cache, {len(written)} already there" in again.stderr

    assert jamins("index", env=env_b).returncode == 0
    second = tmp_path / "b.json"
    assert jamins("export", str(second), env=env_b).returncode == 0
    assert second.read_bytes() == first.read_bytes()

    env_c = {
        "JAMINS_DATA_DIR": str(tmp_path / "c"),
        "JAMINS_RPC_URL": node_b.url,
        "JAMINS_CHAIN_ID": str(node_b.chain_id),
    }
    (tmp_path / "c").mkdir()
    cached = jamins("import", "--cache-only", "--no-verify", str(first), env=env_c)
    assert cached.returncode == 0, cached.stderr
    third = tmp_path / "c.json"
    assert jamins("export", str(third), env=env_c).returncode == 0
    assert third.read_bytes() == first.read_bytes()


def test_import_reports_conflicts_and_bad_files(node_a: AnvilNode, tmp_path: Path) -> None:
    writer = DirectWriter(node_a.url, funded_key(node_a))
    contract = writer.deploy()
    taken = DirectRecord(name=unique_name("taken"), jami_id=secrets.token_hex(20))
    writer.reserve_for([taken])
    env = {
        "JAMINS_RPC_URL": node_a.url,
        "JAMINS_CONTRACT_ADDRESS": contract,
        "JAMINS_SIGNER_KEY": funded_key(node_a),
        "JAMINS_DATA_DIR": str(tmp_path),
    }
    clash = tmp_path / "clash.json"
    fresh = unique_name("fresh")
    clash.write_text(
        json.dumps(
            [
                {
                    "name": taken.name,
                    "addr": "0x" + secrets.token_hex(20),
                    "owner": "0x" + "0" * 40,
                },
                {"name": fresh, "addr": secrets.token_hex(20).upper()},
            ]
        )
    )
    result = jamins_process("import", str(clash), env=env)
    assert result.returncode == 1
    assert "1 registered" in result.stderr and "1 conflicts" in result.stderr
    assert f"{taken.name}: on chain for 0x{taken.jami_id}" in result.stderr

    for content, message in [
        ("{}", "expected a JSON array"),
        ('[{"name": "x", "addr": "nothex"}]', "record 0"),
        ("not json", "cannot read"),
        (json.dumps([{"name": "a" * 33, "addr": "0" * 40}]), "record 0"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        refused = jamins("import", str(bad), env=env)
        assert refused.returncode == 2
        assert message in refused.stderr


def names_file(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["export"], id="export"),
        pytest.param(["import", "--cache-only", "NAMES"], id="import-cache-only"),
        pytest.param(["import", "NAMES"], id="import"),
        pytest.param(["index"], id="index"),
    ],
)
def test_data_commands_refuse_a_missing_data_dir(tmp_path: Path, args: list[str]) -> None:
    names = names_file(tmp_path / "names.json", [{"name": "abc", "addr": "0" * 39 + "1"}])
    typo = tmp_path / "typo"
    result = jamins(
        *[str(names) if arg == "NAMES" else arg for arg in args],
        "--data-dir",
        str(typo),
        env={"JAMINS_RPC_URL": "http://127.0.0.1:9"},
    )
    assert result.returncode == 2, result.stderr
    assert str(typo) in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not typo.exists()


def test_export_refuses_a_data_dir_without_a_database(tmp_path: Path) -> None:
    result = jamins("export", "--data-dir", str(tmp_path), env={})
    assert result.returncode == 2
    assert "jamins.sqlite3" in result.stderr and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_import_cache_only_counts_and_reports_fold_collisions(tmp_path: Path) -> None:
    env = {"JAMINS_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "data").mkdir()
    base = unique_name("fold")
    first = names_file(tmp_path / "a.json", [{"name": base, "addr": secrets.token_hex(20)}])
    loaded = jamins("import", "--cache-only", str(first), env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert "1 loaded into the cache" in loaded.stderr

    other = unique_name("other")
    second = names_file(
        tmp_path / "b.json",
        [
            {"name": base.upper(), "addr": secrets.token_hex(20)},  # folds like the cached one
            {"name": other, "addr": secrets.token_hex(20)},
            {"name": other.upper(), "addr": secrets.token_hex(20)},  # like one in this file
        ],
    )
    result = jamins("import", "--cache-only", str(second), env=env)
    assert result.returncode == 1
    assert "1 loaded into the cache" in result.stderr
    assert "2 conflicts" in result.stderr
    assert f"{base.upper()}: folds like {base}" in result.stderr
    assert f"{other.upper()}: folds like {other}" in result.stderr

    exported = json.loads(jamins("export", env=env).stdout)
    assert sorted(record["name"] for record in exported) == sorted([base, other])


def test_import_verifies_proofs_unless_told_not_to(node_a: AnvilNode, tmp_path: Path) -> None:
    writer = DirectWriter(node_a.url, funded_key(node_a))
    contract = writer.deploy()
    alice, bob = account_pool(2)
    good, stolen_key, other_name, bare = (unique_name(p) for p in ("good", "key", "sig", "bare"))
    records = [
        {"name": good, "addr": alice.jami_id, "publickey": alice.publickey_b64,
         "signature": alice.sign(good)},
        # Bob's key and signature, but another address: the key does not hash to addr.
        {"name": stolen_key, "addr": secrets.token_hex(20), "publickey": bob.publickey_b64,
         "signature": bob.sign(stolen_key)},
        # Bob's key, signed over another name.
        {"name": other_name, "addr": bob.jami_id, "publickey": bob.publickey_b64,
         "signature": bob.sign(good)},
        # No key material (an old registration): nothing to verify.
        {"name": bare, "addr": secrets.token_hex(20)},
    ]  # fmt: skip
    names = names_file(tmp_path / "names.json", records)
    env = {
        "JAMINS_RPC_URL": node_a.url,
        "JAMINS_CONTRACT_ADDRESS": contract,
        "JAMINS_SIGNER_KEY": funded_key(node_a),
        "JAMINS_DATA_DIR": str(tmp_path),
    }
    result = jamins("import", str(names), env=env)
    assert result.returncode == 1
    assert "2 registered" in result.stderr and "2 refused" in result.stderr
    assert f"{stolen_key}: refused: public key does not match addr" in result.stderr
    assert f"{other_name}: refused: signature does not match name" in result.stderr
    assert "1 without key material" in result.stderr
    on_chain = {
        record["name"]: chain_addr(node_a.url, contract, record["name"]) for record in records
    }
    assert on_chain[good] == alice.jami_id
    assert on_chain[bare] == records[3]["addr"]
    assert on_chain[stolen_key] is None and on_chain[other_name] is None

    forced = jamins("import", "--no-verify", str(names), env=env)
    assert forced.returncode == 0, forced.stderr
    assert "2 registered" in forced.stderr and "0 refused" in forced.stderr
    assert chain_addr(node_a.url, contract, other_name) == bob.jami_id


def chain_addr(url: str, contract: str, name: str) -> str | None:
    """The registrar's addr(name), straight from the node."""
    data = selector("addr(bytes32)") + name.encode().ljust(32, b"\0")
    answer = chain_rpc(url, "eth_call", [{"to": contract, "data": "0x" + data.hex()}, "latest"])
    addr = str(answer)[-40:]
    return None if int(addr, 16) == 0 else addr
