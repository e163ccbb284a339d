"""Tables of cases for Jami registration proofs (app/proofs.py)."""

import base64
import secrets
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from app.proofs import (
    MAX_PUBLICKEY_CHARS,
    MAX_SIGNATURE_CHARS,
    MalformedProof,
    ProofMismatch,
    jami_id,
    load_public_key,
    verify_registration,
)
from tests.jami_keys import (
    CAPTURED_BODY,
    CAPTURED_NAME,
    EMBEDDED_CAPTURED_BODY,
    JamiAccount,
    account_pool,
    make_account,
    read_captured_body,
)

CAPTURED_ADDR = "90dc0871b22e1da63f12551281366b9231c2d2e1"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def pem_of(key: RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def der_of(key: RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def unproven_rsa_key(bits: int) -> RSAPublicKey:
    """An RSA public key of exactly `bits` bits without generating primes (nobody can sign)."""
    modulus = (1 << (bits - 1)) | secrets.randbits(bits - 1) | 1
    return rsa.RSAPublicNumbers(65537, modulus).public_key()


@pytest.fixture(scope="module")
def account() -> JamiAccount:
    return account_pool(1)[0]


@pytest.fixture(scope="module")
def other_account() -> JamiAccount:
    return account_pool(2)[1]


def test_captured_body_matches_the_embedded_copy() -> None:
    captured = read_captured_body()
    assert list(captured.items()) == list(EMBEDDED_CAPTURED_BODY.items())
    assert list(CAPTURED_BODY.items()) == list(captured.items())


def test_verify_registration_accepts_captured_jamid_body() -> None:
    assert CAPTURED_BODY["addr"] == CAPTURED_ADDR
    verify_registration(
        name=CAPTURED_NAME,
        jami_id=CAPTURED_BODY["addr"],
        publickey_b64=CAPTURED_BODY["publickey"],
        signature_b64=CAPTURED_BODY["signature"],
    )


def test_load_public_key_reads_captured_key() -> None:
    key = load_public_key(CAPTURED_BODY["publickey"])
    assert key.key_size == 4096
    assert jami_id(key) == CAPTURED_ADDR


def test_jami_keys_account_looks_like_a_client_account(account: JamiAccount) -> None:
    sent = b64decode(account.publickey_b64)
    assert sent.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert sent.endswith(b"-----END PUBLIC KEY-----\n\x00")
    assert jami_id(load_public_key(account.publickey_b64)) == account.jami_id
    body = account.registration_body("élodie")
    assert list(body) == ["addr", "owner", "signature", "publickey"]
    assert body["owner"] == "0" * 40
    # A captured body is 1884 bytes for a 4096-bit key and an 8-byte name.
    assert len(b64decode(body["publickey"])) == len(b64decode(CAPTURED_BODY["publickey"]))
    assert len(body["signature"]) == len(CAPTURED_BODY["signature"])


# Each builder returns (name, jami_id, publickey_b64, signature_b64) from an account.
Proof = tuple[str, str, str, str]
ProofBuilder = Callable[[JamiAccount, JamiAccount], Proof]


def _signed(account: JamiAccount, name: str) -> Proof:
    return name, account.jami_id, account.publickey_b64, account.sign(name)


def _with_key(account: JamiAccount, name: str, key_bytes: bytes) -> Proof:
    return name, account.jami_id, b64(key_bytes), account.sign(name)


def _pem(account: JamiAccount) -> bytes:
    return pem_of(account.private_key.public_key())


def _der(account: JamiAccount) -> bytes:
    return der_of(account.private_key.public_key())


def _signature_bytes(account: JamiAccount, name: str) -> bytes:
    return b64decode(account.sign(name))


def _flip_bit(raw: bytes, index: int) -> bytes:
    return raw[:index] + bytes([raw[index] ^ 0x01]) + raw[index + 1 :]


VALID_PROOFS = [
    pytest.param(lambda a, o: _signed(a, "rawname2"), id="client-pem-with-nul"),
    pytest.param(lambda a, o: _signed(a, "élodie"), id="non-ascii-name"),
    pytest.param(lambda a, o: _signed(a, "山田たろう"), id="japanese-name"),
    pytest.param(lambda a, o: _with_key(a, "rawname2", _pem(a)), id="pem-without-nul"),
    pytest.param(lambda a, o: _with_key(a, "rawname2", _pem(a) + b"\x00" * 3), id="pem-3-nuls"),
    pytest.param(
        lambda a, o: _with_key(a, "rawname2", _pem(a) + b"\r\n \t\n\x00"),
        id="pem-trailing-whitespace",
    ),
    pytest.param(
        lambda a, o: _with_key(a, "rawname2", _pem(a).replace(b"\n", b"\r\n")),
        id="pem-crlf",
    ),
    pytest.param(lambda a, o: _with_key(a, "rawname2", _der(a)), id="der"),
    pytest.param(lambda a, o: _with_key(a, "rawname2", _der(a) + b"\x00"), id="der-with-nul"),
]


@pytest.mark.parametrize("build", VALID_PROOFS)
def test_verify_registration_accepts(
    build: ProofBuilder, account: JamiAccount, other_account: JamiAccount
) -> None:
    name, addr, publickey_b64, signature_b64 = build(account, other_account)
    verify_registration(
        name=name, jami_id=addr, publickey_b64=publickey_b64, signature_b64=signature_b64
    )


def test_verify_registration_accepts_fresh_2048_bit_account() -> None:
    small = make_account(2048)
    verify_registration(
        name="rawname2",
        jami_id=small.jami_id,
        publickey_b64=small.publickey_b64,
        signature_b64=small.sign("rawname2"),
    )


MISMATCHED_PROOFS = [
    pytest.param(
        lambda a, o: (CAPTURED_NAME, a.jami_id, CAPTURED_BODY["publickey"], a.sign(CAPTURED_NAME)),
        "addr",
        id="key-hashes-to-another-addr",
    ),
    pytest.param(
        lambda a, o: ("rawname2", a.jami_id, o.publickey_b64, o.sign("rawname2")),
        "addr",
        id="other-account-key-and-signature-for-this-addr",
    ),
    pytest.param(
        lambda a, o: ("rawname2", a.jami_id, a.publickey_b64, o.sign("rawname2")),
        "signature",
        id="signature-by-another-key",
    ),
    pytest.param(
        lambda a, o: ("rawname3", a.jami_id, a.publickey_b64, a.sign("rawname2")),
        "signature",
        id="replay-under-another-name",
    ),
    pytest.param(
        lambda a, o: ("RawName2", a.jami_id, a.publickey_b64, a.sign("rawname2")),
        "signature",
        id="replay-under-other-case",
    ),
    pytest.param(
        lambda a, o: ("e\u0301lodie", a.jami_id, a.publickey_b64, a.sign("élodie")),
        "signature",
        id="replay-under-other-normal-form",
    ),
    pytest.param(
        lambda a, o: (
            "rawname2",
            a.jami_id,
            a.publickey_b64,
            b64(_signature_bytes(a, "rawname2")[:-1]),
        ),
        "signature",
        id="truncated-signature",
    ),
    pytest.param(
        lambda a, o: (
            "rawname2",
            a.jami_id,
            a.publickey_b64,
            b64(_signature_bytes(a, "rawname2") + b"\x00"),
        ),
        "signature",
        id="extended-signature",
    ),
    pytest.param(
        lambda a, o: (
            "rawname2",
            a.jami_id,
            a.publickey_b64,
            b64(_flip_bit(_signature_bytes(a, "rawname2"), 100)),
        ),
        "signature",
        id="flipped-signature-bit",
    ),
    pytest.param(
        lambda a, o: ("rawname2", a.jami_id, a.publickey_b64, b64(b"\x00" * 512)),
        "signature",
        id="zero-signature",
    ),
    pytest.param(
        lambda a, o: (
            "rawname2",
            a.jami_id,
            a.publickey_b64,
            b64(a.private_key.sign(b"rawname2", padding.PKCS1v15(), hashes.SHA256())),
        ),
        "signature",
        id="sha256-signature",
    ),
    pytest.param(
        lambda a, o: (
            "rawname2",
            a.jami_id,
            a.publickey_b64,
            b64(
                a.private_key.sign(
                    b"rawname2",
                    padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=32),
                    hashes.SHA512(),
                )
            ),
        ),
        "signature",
        id="pss-signature",
    ),
]


@pytest.mark.parametrize(("build", "reason"), MISMATCHED_PROOFS)
def test_verify_registration_refuses_mismatch(
    build: ProofBuilder, reason: str, account: JamiAccount, other_account: JamiAccount
) -> None:
    name, addr, publickey_b64, signature_b64 = build(account, other_account)
    with pytest.raises(ProofMismatch, match=reason):
        verify_registration(
            name=name, jami_id=addr, publickey_b64=publickey_b64, signature_b64=signature_b64
        )


def test_verify_registration_refuses_captured_body_for_another_name() -> None:
    with pytest.raises(ProofMismatch, match="signature does not match name"):
        verify_registration(
            name="rawname3",
            jami_id=CAPTURED_ADDR,
            publickey_b64=CAPTURED_BODY["publickey"],
            signature_b64=CAPTURED_BODY["signature"],
        )


def test_verify_registration_refuses_captured_key_for_another_addr() -> None:
    with pytest.raises(ProofMismatch, match="public key does not match addr"):
        verify_registration(
            name=CAPTURED_NAME,
            jami_id="0" * 40,
            publickey_b64=CAPTURED_BODY["publickey"],
            signature_b64=CAPTURED_BODY["signature"],
        )


CAPTURED_PEM = b64decode(CAPTURED_BODY["publickey"]).rstrip(b"\x00")
CAPTURED_KEY_B64 = CAPTURED_BODY["publickey"]


def _ec_pem() -> str:
    return b64(pem_of(ec.generate_private_key(ec.SECP256R1()).public_key()))


def _ed25519_pem() -> str:
    return b64(pem_of(ed25519.Ed25519PrivateKey.generate().public_key()))


def _pkcs1_pem() -> str:
    key = load_public_key(CAPTURED_KEY_B64)
    return b64(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))


def _pkcs1_der() -> str:
    key = load_public_key(CAPTURED_KEY_B64)
    return b64(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1))


def _private_key_pem() -> str:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return b64(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _urlsafe_der() -> str:
    standard = b64(der_of(load_public_key(CAPTURED_KEY_B64)))
    assert "+" in standard or "/" in standard
    return standard.replace("+", "-").replace("/", "_")


def _wrapped_base64() -> str:
    text = CAPTURED_KEY_B64
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76))


MALFORMED_KEYS = [
    pytest.param(lambda: "", "empty", id="empty"),
    pytest.param(lambda: "!!!!", "base64", id="not-base64"),
    pytest.param(lambda: CAPTURED_KEY_B64[:-1], "base64", id="bad-padding"),
    pytest.param(lambda: CAPTURED_KEY_B64 + "\n", "base64", id="trailing-newline"),
    pytest.param(lambda: " " + CAPTURED_KEY_B64, "base64", id="leading-space"),
    pytest.param(_wrapped_base64, "base64", id="base64-wrapped-in-lines"),
    pytest.param(_urlsafe_der, "base64", id="urlsafe-base64"),
    pytest.param(lambda: "é" * 8, "base64", id="non-ascii"),
    pytest.param(lambda: b64(b"\x00\x00\x00"), "empty", id="only-nuls"),
    pytest.param(lambda: b64(b"hello world"), "parsed", id="garbage-bytes"),
    pytest.param(lambda: b64(CAPTURED_PEM + b"garbage"), "after the PEM END", id="pem-garbage"),
    pytest.param(
        lambda: b64(CAPTURED_PEM + b"\x00garbage\x00"), "after the PEM END", id="pem-nul-garbage"
    ),
    pytest.param(lambda: b64(CAPTURED_PEM * 2), "after the PEM END", id="pem-two-blocks"),
    pytest.param(lambda: b64(CAPTURED_PEM[:-30]), "END", id="pem-truncated"),
    pytest.param(
        lambda: b64(CAPTURED_PEM.replace(b"MIIC", b"MIID", 1)), "parsed", id="pem-corrupt-body"
    ),
    pytest.param(_pkcs1_pem, "not a PUBLIC KEY", id="pem-pkcs1-rsa-public-key"),
    pytest.param(_private_key_pem, "not a PUBLIC KEY", id="pem-private-key"),
    pytest.param(_pkcs1_der, "SubjectPublicKeyInfo", id="der-pkcs1"),
    pytest.param(
        lambda: b64(der_of(load_public_key(CAPTURED_KEY_B64)) + b"junk"), "parsed", id="der-garbage"
    ),
    pytest.param(_ec_pem, "not RSA", id="ec-key"),
    pytest.param(_ed25519_pem, "not RSA", id="ed25519-key"),
    pytest.param(lambda: b64(pem_of(unproven_rsa_key(1024))), "size 1024", id="rsa-1024"),
    pytest.param(lambda: b64(pem_of(unproven_rsa_key(2047))), "size 2047", id="rsa-2047"),
    pytest.param(lambda: b64(pem_of(unproven_rsa_key(8193))), "size 8193", id="rsa-8193"),
    pytest.param(lambda: b64(pem_of(unproven_rsa_key(16384))), "size 16384", id="rsa-16384"),
    pytest.param(lambda: "A" * (MAX_PUBLICKEY_CHARS + 4), "longer than", id="oversized-string"),
    pytest.param(
        lambda: b64(CAPTURED_PEM + b"\n" * 6000), "longer than", id="oversized-pem-padding"
    ),
]


@pytest.mark.parametrize(("make_key", "reason"), MALFORMED_KEYS)
def test_load_public_key_refuses(make_key: Callable[[], str], reason: str) -> None:
    with pytest.raises(MalformedProof, match=reason):
        load_public_key(make_key())


@pytest.mark.parametrize(("make_key", "reason"), MALFORMED_KEYS)
def test_verify_registration_refuses_malformed_key(
    make_key: Callable[[], str], reason: str
) -> None:
    with pytest.raises(MalformedProof, match=reason):
        verify_registration(
            name=CAPTURED_NAME,
            jami_id=CAPTURED_ADDR,
            publickey_b64=make_key(),
            signature_b64=CAPTURED_BODY["signature"],
        )


@pytest.mark.parametrize(
    "bits",
    [
        pytest.param(2048, id="rsa-2048"),
        pytest.param(3072, id="rsa-3072"),
        pytest.param(8192, id="rsa-8192"),
    ],
)
def test_load_public_key_accepts_size(bits: int) -> None:
    key = unproven_rsa_key(bits)
    loaded = load_public_key(b64(pem_of(key)))
    assert loaded.key_size == bits
    assert jami_id(loaded) == jami_id(key)


def test_public_key_length_cap_admits_an_rsa_8192_client_key() -> None:
    client_field = b64(pem_of(unproven_rsa_key(8192)) + b"\x00")
    assert len(client_field) < MAX_PUBLICKEY_CHARS
    assert len(b64(b"\xff" * 1024)) < MAX_SIGNATURE_CHARS


MALFORMED_SIGNATURES = [
    pytest.param("", "empty", id="empty"),
    pytest.param("!!!!", "base64", id="not-base64"),
    pytest.param(CAPTURED_BODY["signature"][:-1], "base64", id="bad-padding"),
    pytest.param(CAPTURED_BODY["signature"] + "\n", "base64", id="trailing-newline"),
    pytest.param("=" * 4, "base64", id="padding-only"),
    pytest.param("A" * (MAX_SIGNATURE_CHARS + 4), "longer than", id="oversized-string"),
]


@pytest.mark.parametrize(("signature_b64", "reason"), MALFORMED_SIGNATURES)
def test_verify_registration_refuses_malformed_signature(signature_b64: str, reason: str) -> None:
    with pytest.raises(MalformedProof, match=reason):
        verify_registration(
            name=CAPTURED_NAME,
            jami_id=CAPTURED_ADDR,
            publickey_b64=CAPTURED_KEY_B64,
            signature_b64=signature_b64,
        )


def test_exceptions_are_value_errors() -> None:
    assert issubclass(MalformedProof, ValueError)
    assert issubclass(ProofMismatch, ValueError)
    assert not issubclass(MalformedProof, ProofMismatch)
