"""The registration signer (app/chain/signer.py): legacy EIP-155 signing and key loading."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
import rlp
from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.encoding import big_endian_to_int

from app.chain.signer import Signer, SignerKeyError, load_or_create_key_file, load_signer
from app.settings import Settings

JAMI_CHAIN_ID = 1551
TEST_KEY = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
TEST_ADDRESS = Account.from_key(TEST_KEY).address
PASSWORD = "correct horse battery staple"
# The original Jami registrar; eth_account takes a checksummed `to`, as the registrar passes it.
REGISTRAR = to_checksum_address("0xe53cb2ace8707526a5050bec7bcf979c57f8b44f")


def settings(**values: Any) -> Settings:
    """Settings from these values only: no .env file of the developer leaks in."""
    return Settings(_env_file=None, **values)


def signer_from_key(key: str) -> Signer:
    signer = load_signer(settings(signer_key=key))
    assert signer is not None
    return signer


@pytest.fixture
def signer() -> Signer:
    return signer_from_key(TEST_KEY)


@pytest.fixture(autouse=True)
def _no_jamins_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's JAMINS_SIGNER_* variables must not change what these tests load.
    for name in ("SIGNER_KEY", "SIGNER_KEY_FILE", "SIGNER_KEYSTORE_PASSWORD"):
        monkeypatch.delenv(f"JAMINS_{name}", raising=False)


@pytest.mark.parametrize(
    ("to", "data"),
    [
        pytest.param(REGISTRAR, "0x" + "ab" * 100, id="call-registrar"),
        pytest.param(None, "0x6080604052", id="deploy-contract"),
    ],
)
def test_sign_legacy_makes_eip155_type0_transaction(
    signer: Signer, to: str | None, data: str
) -> None:
    signed = signer.sign_legacy(
        nonce=42, gas=300_000, gas_price=20 * 10**9, to=to, data=data, chain_id=JAMI_CHAIN_ID
    )

    raw = bytes.fromhex(signed.raw.removeprefix("0x"))
    assert signed.raw.startswith("0x")
    assert raw[0] >= 0xC0  # an RLP list: a legacy transaction, not a typed envelope
    fields = rlp.decode(raw)
    assert len(fields) == 9
    nonce, gas_price, gas, to_field, value, data_field, v, r, s = fields
    assert big_endian_to_int(nonce) == 42
    assert big_endian_to_int(gas_price) == 20 * 10**9
    assert big_endian_to_int(gas) == 300_000
    assert to_field == (bytes.fromhex(to[2:]) if to else b"")
    assert big_endian_to_int(value) == 0
    assert data_field == bytes.fromhex(data[2:])
    assert big_endian_to_int(v) in (JAMI_CHAIN_ID * 2 + 35, JAMI_CHAIN_ID * 2 + 36)
    assert big_endian_to_int(r) != 0
    assert big_endian_to_int(s) != 0
    assert Account.recover_transaction(signed.raw) == signer.address
    assert signed.tx_hash == "0x" + keccak(raw).hex()


def test_sign_legacy_depends_on_chain_id(signer: Signer) -> None:
    on_jami, on_other = (
        signer.sign_legacy(
            nonce=0, gas=21_000, gas_price=1, to=REGISTRAR, data="0x", chain_id=chain_id
        )
        for chain_id in (JAMI_CHAIN_ID, 1)
    )

    assert on_jami.raw != on_other.raw
    assert big_endian_to_int(rlp.decode(bytes.fromhex(on_other.raw[2:]))[6]) in (37, 38)


@pytest.mark.parametrize("show", [pytest.param(repr, id="repr"), pytest.param(str, id="str")])
def test_signer_text_hides_private_key(signer: Signer, show: Callable[[object], str]) -> None:
    text = show(signer)

    assert TEST_KEY not in text.lower()
    assert TEST_ADDRESS in text


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(TEST_KEY, id="bare-hex"),
        pytest.param("0x" + TEST_KEY, id="0x-prefixed"),
        pytest.param("0x" + TEST_KEY.upper(), id="upper-case"),
        pytest.param(f"  0x{TEST_KEY}\n", id="surrounding-whitespace"),
    ],
)
def test_load_signer_reads_hex_key(key: str) -> None:
    signer = signer_from_key(key)

    assert signer.address == TEST_ADDRESS
    assert signer.address == to_checksum_address(signer.address)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(f"0x{TEST_KEY}\n", id="0x-with-newline"),
        pytest.param(TEST_KEY, id="bare-without-newline"),
    ],
)
def test_load_signer_reads_key_file(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "signer.key"
    key_file.write_text(content)

    signer = load_signer(settings(signer_key_file=key_file))

    assert signer is not None
    assert signer.address == TEST_ADDRESS


@pytest.mark.parametrize(
    ("kdf", "iterations"),
    [
        # Small work factors keep the test fast; the format is what geth writes.
        pytest.param("scrypt", 2**10, id="scrypt"),
        pytest.param("pbkdf2", 1000, id="pbkdf2"),
    ],
)
def test_load_signer_decrypts_keystore(
    tmp_path: Path, kdf: Literal["pbkdf2", "scrypt"], iterations: int
) -> None:
    keystore = tmp_path / "keystore.json"
    encrypted = Account.encrypt(bytes.fromhex(TEST_KEY), PASSWORD, kdf=kdf, iterations=iterations)
    keystore.write_text(json.dumps(encrypted))

    signer = load_signer(settings(signer_key_file=keystore, signer_keystore_password=PASSWORD))

    assert signer is not None
    assert signer.address == TEST_ADDRESS


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "keystore.json"
    path.write_text(
        json.dumps(
            Account.encrypt(bytes.fromhex(TEST_KEY), PASSWORD, kdf="pbkdf2", iterations=1000)
        )
    )
    return path


def test_load_signer_keystore_without_password_fails(keystore: Path) -> None:
    with pytest.raises(SignerKeyError, match="JAMINS_SIGNER_KEYSTORE_PASSWORD"):
        load_signer(settings(signer_key_file=keystore))


def test_load_signer_keystore_wrong_password_fails(keystore: Path) -> None:
    with pytest.raises(SignerKeyError) as caught:
        load_signer(settings(signer_key_file=keystore, signer_keystore_password="wrong"))

    assert "wrong" not in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{}", id="empty-object"),
        pytest.param('{"version": 3}', id="no-crypto-section"),
        pytest.param("{not json", id="broken-json"),
    ],
)
def test_load_signer_malformed_keystore_fails(tmp_path: Path, content: str) -> None:
    keystore = tmp_path / "keystore.json"
    keystore.write_text(content)

    with pytest.raises(SignerKeyError, match="cannot decrypt"):
        load_signer(settings(signer_key_file=keystore, signer_keystore_password=PASSWORD))


GARBAGE_KEYS = [
    pytest.param("not-a-private-key", id="words"),
    pytest.param("0x1234abcd", id="too-short"),
    pytest.param("0x" + "5e" * 33, id="too-long"),
    pytest.param("zz" * 32, id="not-hex"),
    pytest.param("0x" + "00" * 32, id="zero"),
    pytest.param("0x" + "ff" * 32, id="above-curve-order"),
    pytest.param("0x0x" + TEST_KEY, id="double-prefix"),
]


@pytest.mark.parametrize("garbage", GARBAGE_KEYS)
def test_load_signer_garbage_key_fails_without_echo(garbage: str) -> None:
    with pytest.raises(SignerKeyError) as caught:
        load_signer(settings(signer_key=garbage))

    message = str(caught.value)
    assert garbage.removeprefix("0x") not in message
    assert garbage[2:12] not in message
    # The library's error may quote the key: it must not be chained into a traceback.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("garbage", GARBAGE_KEYS)
def test_load_signer_garbage_key_file_fails_without_echo(tmp_path: Path, garbage: str) -> None:
    key_file = tmp_path / "signer.key"
    key_file.write_text(garbage + "\n")

    with pytest.raises(SignerKeyError) as caught:
        load_signer(settings(signer_key_file=key_file))

    assert garbage.removeprefix("0x") not in str(caught.value)


def test_load_signer_binary_key_file_fails(tmp_path: Path) -> None:
    key_file = tmp_path / "signer.key"
    key_file.write_bytes(b"\xff\xfe\x00\x01 not text")

    with pytest.raises(SignerKeyError):
        load_signer(settings(signer_key_file=key_file))


def test_load_signer_missing_key_file_fails(tmp_path: Path) -> None:
    with pytest.raises(SignerKeyError, match="cannot read"):
        load_signer(settings(signer_key_file=tmp_path / "absent.key"))


def test_load_signer_key_wins_over_key_file(tmp_path: Path) -> None:
    other_key_file = tmp_path / "other.key"
    other_key_file.write_text("0x" + "11" * 32 + "\n")

    signer = load_signer(settings(signer_key=TEST_KEY, signer_key_file=other_key_file))

    assert signer is not None
    assert signer.address == TEST_ADDRESS


def test_load_signer_without_key_returns_none() -> None:
    assert load_signer(settings()) is None


def test_load_or_create_key_file_creates_private_file(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "signer.key"

    created = load_or_create_key_file(key_file)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    content = key_file.read_text()
    assert content.endswith("\n")
    assert Account.from_key(content.strip()).address == created.address
    assert content.strip().removeprefix("0x") not in repr(created)


def test_load_or_create_key_file_reuses_existing_key(tmp_path: Path) -> None:
    key_file = tmp_path / "signer.key"

    first = load_or_create_key_file(key_file)
    content = key_file.read_text()
    second = load_or_create_key_file(key_file)

    assert second.address == first.address
    assert key_file.read_text() == content
    reloaded = load_signer(settings(signer_key_file=key_file))
    assert reloaded is not None
    assert reloaded.address == first.address


def test_load_or_create_key_file_makes_distinct_keys(tmp_path: Path) -> None:
    first = load_or_create_key_file(tmp_path / "a.key")
    second = load_or_create_key_file(tmp_path / "b.key")

    assert first.address != second.address
