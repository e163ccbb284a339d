"""names.json round trip with the real commands: index and export one chain, import into a
fresh chain, index and export again: the same bytes."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.chain.anvil import AnvilNode
from tests.chain_tools import DirectRecord, DirectWriter
from tests.conftest import funded_key, unique_name
from tests.pg import PostgresServer
from tests.server import REPO_ROOT


@pytest.fixture
def node_a(anvil_binary: str) -> Iterator[AnvilNode]:
    with AnvilNode(binary=anvil_binary) as node:
        yield node


@pytest.fixture
def node_b(anvil_binary: str) -> Iterator[AnvilNode]:
    with AnvilNode(binary=anvil_binary) as node:
        yield node


def jamins(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "JAMINS_ENV_FILE": "", "JAMINS_CONFIRMATIONS": "0", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def written_records() -> list[DirectRecord]:
    keyed = [
        DirectRecord(
            name=unique_name("rt"),
            jami_id=secrets.token_hex(20),
            publickey=base64.b64encode(secrets.token_bytes(800)).decode(),
            signature=base64.b64encode(secrets.token_bytes(512)).decode(),
        )
        for _ in range(25)
    ]
    bare = [DirectRecord(name=unique_name("old"), jami_id=secrets.token_hex(20)) for _ in range(8)]
    unicode = [DirectRecord(name="élodie-" + secrets.token_hex(2), jami_id=secrets.token_hex(20))]
    return keyed + bare + unicode


def test_export_import_export_round_trips_byte_for_byte(
    node_a: AnvilNode, node_b: AnvilNode, tmp_path: Path, postgres: PostgresServer
) -> None:
    writer = DirectWriter(node_a.url, funded_key(node_a))
    contract = writer.deploy()
    written = written_records()
    writer.reserve_for(written)
    env_a = {
        "JAMINS_RPC_URL": node_a.url,
        "JAMINS_CONTRACT_ADDRESS": contract,
        "JAMINS_INDEX_FROM_BLOCK": "0",
        "JAMINS_DATA_DIR": str(tmp_path / "a"),
    }
    indexed = jamins("index", env=env_a)
    assert indexed.returncode == 0, indexed.stderr
    first = tmp_path / "a.json"
    exported = jamins("export", str(first), env=env_a)
    assert exported.returncode == 0, exported.stderr

    records = json.loads(first.read_text(encoding="utf-8"))
    assert [record["name"] for record in records] == sorted(r.name for r in written)
    by_name = {record["name"]: record for record in records}
    for record in written:
        entry = by_name[record.name]
        assert entry["addr"] == "0x" + record.jami_id
        assert entry["owner"] == writer.address
        assert entry.get("publickey") == (record.publickey or None)
        assert entry.get("signature") == (record.signature or None)

    env_b = {
        "JAMINS_RPC_URL": node_b.url,
        "JAMINS_DEPLOY": "true",
        "JAMINS_SIGNER_KEY": funded_key(node_b),
        "JAMINS_DATABASE_URL": postgres.create_database(f"rt_{secrets.token_hex(4)}"),
        "JAMINS_DATA_DIR": str(tmp_path / "b"),
    }
    imported = jamins("import", str(first), env=env_b)
    assert imported.returncode == 0, imported.stderr
    assert f"{len(written)} registered" in imported.stderr
    again = jamins("import", str(first), env=env_b)  # resumable: nothing twice
    assert again.returncode == 0, again.stderr
    assert f"0 registered, 0 loaded into the cache, {len(written)} already there" in again.stderr

    assert jamins("index", env=env_b).returncode == 0
    second = tmp_path / "b.json"
    assert jamins("export", str(second), env=env_b).returncode == 0
    assert second.read_bytes() == first.read_bytes()

    env_c = {"JAMINS_DATA_DIR": str(tmp_path / "c"), "JAMINS_RPC_URL": node_b.url}
    assert jamins("import", "--cache-only", str(first), env=env_c).returncode == 0
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
    result = jamins("import", str(clash), env=env)
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
