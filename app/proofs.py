"""Jami registration proofs (pure crypto: no I/O).

A registration carries the account's RSA public key and a signature over the name. The key
must hash to the Jami ID being named (SHA-1 of its DER SubjectPublicKeyInfo), and the
signature (RSASSA-PKCS1-v1_5, SHA-512) must verify over the UTF-8 bytes of the name.
"""

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = [
    "MAX_KEY_BITS",
    "MAX_PUBLICKEY_CHARS",
    "MAX_SIGNATURE_CHARS",
    "MIN_KEY_BITS",
    "MalformedProof",
    "ProofMismatch",
    "jami_id",
    "load_public_key",
    "verify_registration",
]

MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192
# An RSA-8192 key is about 1,950 base64 characters as PEM and its signature 1,368: the caps
# leave room and bound the work done before the key size is known.
MAX_PUBLICKEY_CHARS = 8192
MAX_SIGNATURE_CHARS = 4096

_PEM_BEGIN = b"-----BEGIN PUBLIC KEY-----"
_PEM_END = b"-----END PUBLIC KEY-----"
_PEM_TRAILING_WHITESPACE = b" \t\r\n"


class MalformedProof(ValueError):
    """The key or signature cannot be read, or the key is not acceptable (HTTP 400)."""


class ProofMismatch(ValueError):
    """The key does not hash to the Jami ID, or the signature does not verify (HTTP 401)."""


def _strict_b64decode(value: str, what: str, max_chars: int) -> bytes:
    """Decode standard base64 with padding and no whitespace; raise MalformedProof."""
    if not value:
        raise MalformedProof(f"{what} is empty")
    if len(value) > max_chars:
        raise MalformedProof(f"{what} is longer than {max_chars} characters")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedProof(f"{what} is not base64") from exc
    if not decoded:
        raise MalformedProof(f"{what} is empty")
    return decoded


def load_public_key(publickey_b64: str) -> RSAPublicKey:
    """Read the `publickey` field of a registration and return the RSA public key.

    The field is base64 (standard alphabet, padded, no whitespace: what clients send) of either
    the PEM text of a SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), possibly followed by
    NUL bytes (clients built before August 2026 append one), or its DER. Raises MalformedProof
    for anything else, for a non-RSA key and for a key outside 2048..8192 bits.
    """
    key_bytes = _strict_b64decode(publickey_b64, "public key", MAX_PUBLICKEY_CHARS).rstrip(b"\x00")
    if not key_bytes:
        raise MalformedProof("public key is empty")
    try:
        if key_bytes.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(_checked_pem(key_bytes))
        else:
            key = serialization.load_der_public_key(key_bytes)
            # The loader also takes a bare PKCS#1 key; only SubjectPublicKeyInfo is a Jami key.
            spki = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if spki != key_bytes:
                raise MalformedProof("public key is not a DER SubjectPublicKeyInfo")
    except (ValueError, UnsupportedAlgorithm) as exc:
        if isinstance(exc, MalformedProof):
            raise
        raise MalformedProof("public key cannot be parsed") from exc
    if not isinstance(key, RSAPublicKey):
        raise MalformedProof("public key is not RSA")
    if not MIN_KEY_BITS <= key.key_size <= MAX_KEY_BITS:
        raise MalformedProof(f"RSA key size {key.key_size} outside {MIN_KEY_BITS}..{MAX_KEY_BITS}")
    return key


def _checked_pem(pem: bytes) -> bytes:
    """Return `pem` if it is one PUBLIC KEY block followed by nothing but whitespace."""
    # Clients parse the stored key back with GnuTLS, which wants exactly this label.
    if not pem.startswith(_PEM_BEGIN):
        raise MalformedProof("PEM block is not a PUBLIC KEY")
    end = pem.find(_PEM_END)
    if end == -1:
        raise MalformedProof("PEM block has no END line")
    if pem[end + len(_PEM_END) :].strip(_PEM_TRAILING_WHITESPACE):
        raise MalformedProof("data after the PEM END line")
    return pem


def _spki_sha1_hex(key: RSAPublicKey) -> str:
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(spki).hexdigest()


def jami_id(key: RSAPublicKey) -> str:
    """Return the Jami ID of a key: lowercase hex SHA-1 of its DER SubjectPublicKeyInfo."""
    return _spki_sha1_hex(key)


def verify_registration(*, name: str, jami_id: str, publickey_b64: str, signature_b64: str) -> None:
    """Check a registration proof; return None when it holds.

    `name` is the name exactly as signed (the decoded path); `jami_id` is already normalised
    to 40 lowercase hex. Raises MalformedProof for an unreadable or unacceptable key or
    signature, ProofMismatch when the key is not that Jami ID's or the signature does not
    verify over the name.
    """
    key = load_public_key(publickey_b64)
    if _spki_sha1_hex(key) != jami_id:
        raise ProofMismatch("public key does not match addr")
    signature = _strict_b64decode(signature_b64, "signature", MAX_SIGNATURE_CHARS)
    try:
        key.verify(signature, name.encode("utf-8"), padding.PKCS1v15(), hashes.SHA512())
    except InvalidSignature as exc:
        raise ProofMismatch("signature does not match name") from exc
