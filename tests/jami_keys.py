"""Jami accounts for tests, made the way a Jami client makes them (not a test module).

A client's registration body is `{"addr", "owner", "signature", "publickey"}` where
`publickey` is base64 of the PEM public key followed by one NUL byte (clients built before
August 2026) and `signature` is base64 of RSASSA-PKCS1-v1_5 SHA-512 over the UTF-8 name.
"""

import base64
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = [
    "CAPTURED_BODY",
    "CAPTURED_NAME",
    "CAPTURED_REQUESTS_PATH",
    "EMBEDDED_CAPTURED_BODY",
    "JamiAccount",
    "account_of",
    "account_pool",
    "make_account",
    "read_captured_body",
    "write_pool",
]

ZERO_OWNER = "0" * 40


@dataclass(frozen=True)
class JamiAccount:
    """An RSA account key with the fields a client derives from it."""

    private_key: RSAPrivateKey
    publickey_b64: str  # base64 of the PEM SubjectPublicKeyInfo + one NUL, as clients send
    jami_id: str  # 40 lowercase hex: SHA-1 of the DER SubjectPublicKeyInfo

    def sign(self, name: str) -> str:
        """Return base64 of the PKCS#1 v1.5 SHA-512 signature over the UTF-8 name."""
        signature = self.private_key.sign(name.encode("utf-8"), padding.PKCS1v15(), hashes.SHA512())
        return base64.b64encode(signature).decode("ascii")

    def registration_body(self, name: str, owner: str = ZERO_OWNER) -> dict[str, str]:
        """Return the JSON body a client POSTs to /name/{name}, fields in the client's order."""
        return {
            "addr": self.jami_id,
            "owner": owner,
            "signature": self.sign(name),
            "publickey": self.publickey_b64,
        }


def make_account(bits: int = 4096) -> JamiAccount:
    """Generate a fresh account (RSA-4096 takes about a second)."""
    return account_of(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def account_of(private_key: RSAPrivateKey) -> JamiAccount:
    """The account of this key, with the fields a client derives from it."""
    public_key = private_key.public_key()
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return JamiAccount(
        private_key=private_key,
        publickey_b64=base64.b64encode(pem + b"\x00").decode("ascii"),
        jami_id=hashlib.sha1(der).hexdigest(),
    )


# RSA-4096 keys made once (`python -m tests.jami_keys`), for tests only: generating one
# takes a second or more of CPU, and the suite (each xdist worker too) wants dozens.
POOL_PATH = Path(__file__).parent / "data" / "account-pool.pem"
POOL_SIZE = 48


@functools.cache
def _pool_pems() -> list[bytes]:
    text = POOL_PATH.read_bytes() if POOL_PATH.is_file() else b""
    return re.findall(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----", text, re.S)


@functools.cache
def _pooled_account(index: int) -> JamiAccount:
    pems = _pool_pems()
    if index >= len(pems):
        return make_account(4096)
    # Our own keys: OpenSSL's consistency check of an RSA-4096 key costs more than making
    # a signature many times over, for nothing here.
    key = serialization.load_pem_private_key(
        pems[index], password=None, unsafe_skip_rsa_key_validation=True
    )
    assert isinstance(key, RSAPrivateKey) and key.key_size == 4096
    return account_of(key)


def account_pool(n: int) -> list[JamiAccount]:
    """Return n distinct RSA-4096 accounts, the same ones in every process (read from
    POOL_PATH; made on the spot past its end).

    account_pool(2) is the first two accounts of account_pool(5): callers that need accounts
    no other test uses should call make_account().
    """
    return [_pooled_account(index) for index in range(n)]


def write_pool(path: Path = POOL_PATH, size: int = POOL_SIZE) -> None:
    """Write `size` new RSA-4096 private keys (unencrypted PKCS#8 PEM) to `path`."""
    blocks = [
        rsa.generate_private_key(public_exponent=65537, key_size=4096).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for _ in range(size)
    ]
    path.write_bytes(b"".join(blocks))


CAPTURED_NAME = "rawname2"
CAPTURED_REQUESTS_PATH = Path(__file__).parent / "data" / "captured-requests.txt"

# The body a real jamid 13.7.0 sent to register "rawname2" (from captured-requests.txt).
EMBEDDED_CAPTURED_BODY: dict[str, str] = {
    "addr": ("90dc0871b22e1da63f12551281366b9231c2d2e1"),
    "owner": ("a50cfdaf5428466d7c120c086a57b2aa25cfd867"),
    "signature": (
        "nDEyaBJMih67Hx4IOUyNvK86tLY+LOXNbr2LaISwuAfIdPTUOqTk24ipI+BpUAPZrsK2GEPYXKs+ayMbLuVM"
        "mZncWL76IuRWIkW959YGVx+cAaa0dKglCJ89RdyrBuu/MRLkPKppjfhurMDZnKplkLmCildUGjWHwItxAkMC"
        "TlG/EjJQIlR7/mBZN/xFHiALxLAnc6Pz0uLQu+nFk+icyx4nm4K51jrU010QbNcWJxT+G/gR3BiN4fGvhHFe"
        "CRGl+Rx/VGdt6Z1k3qCrYxop9jBdDck5yTZF00x8JebraqHJ+Ta7z4tnjidTd0o2DqjJYlHLSeXUfw5AEXyf"
        "/7gKzktv5wqPJG6VhqPZ2xw7szpFDHCSrXVvFIOTN/5l8T01H+xdAsxuq+iJ0tSkQ438/nFGNp5v+RufXCsb"
        "Mb/ghM0BQ+KhjYXloqBVPk3oeY8ylDRkGF8kBRelds3Hf/PlAYmw0aflEeCDWPEoL79VHtX6wkgJadqsr54/"
        "sGN40C/1pXKIZt8d05w/IhL0Z4iGsz26yt4xdaE56yD8Wncvp0rI/NlAoD28gFMEXX7xzUOf/LSNBplG4qJi"
        "gAHZPLbRW5LnecRGJ3Q2Ejo3K45ymFuzRYhrJhzRuF+UHaLUQMX4D0PJDl/WsaHiSssWw4h7KIe+PzoMACsX"
        "UsiyIaWuh+c="
    ),
    "publickey": (
        "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KTUlJQ0lqQU5CZ2txaGtpRzl3MEJBUUVGQUFPQ0FnOEFNSUlD"
        "Q2dLQ0FnRUFydlBJbi9KMFpObS9QUkluUytLLwpFeEJEdVRzY05lL3doZEhFNlFlTnlSQ3FDY2o4bk9HWFRQ"
        "eWoxNCtuMlpVNGNxTTVzUXJheDQxUitVWnp5aUJnCk5NZEtkdFJWcVNDVGdOTmhSRE9VUlVxYTg3aFdZY2hi"
        "bVZtMkZ5VFc1c1lub0M5MGRnSVJFUi9ncWkyUm51RDYKMUdVT21iS0pWMEJjNjdLZWtPSlQ0OXBkZHhGOFNy"
        "R1YwQ0wrSXFSdGU3aGQvaUVSN0NUVERqaDFMc0JGcG5HZgo1c3l6SjkwenZBK0I0c1k1YVlzeXhialhKRi91"
        "dGVsWVordWNXMHR6aVVVMXlRbzFhRHJkS1RMUUgyWTlBVjJjClNRMTFGM1d2QWtjbS9NWnRsbVNTSGFEV3o0"
        "Y2kvanBCcE9KdWNlcWNuMS96bUFsMHpFTHI3VmtYSlcyWXJXdUsKSEJyVFZGUStoOHFMYlMvcEt5eTUzNzFR"
        "ckpDNU5oN0owQ1lxWStSUGhSYnk1QlJlalI3QnRQRUtDV05TZ3dUMAp0SVdhUWpXQzNKZ0Jqb0hCQkFGR1Uy"
        "SnFOcXpuQ2toblRybUEvVmxUR0RsVTV6L3N2dlBDZXI0ejE0UTVtVVNnCllKU3QvQ0FrQ1ZWbEZvN0hVck40"
        "dU9ybEx4SThUUGZuUkVhbTNUNHg2UXVFTm9ONDBqcGlYZTNXZ2M3RmtiSk4KK2lNM04yM0RJcVhleE1OTnFs"
        "bmZmUk5oL2hpbzE2bHlnU3d4MS9iTUhHamVnU2JJVWR1Y3FsQm9JbmZiRzk0ZwpNamU3YlhQbDF6Tk8vRVlM"
        "eXJNb3U1bFVzaHd5VFh2c3I1emNadXE0czgwT3lGcU9BOCtYUW0wYmludFFGOFhMClhraEE0Y2dqM05xOU51"
        "djM3V01NVUE4Q0F3RUFBUT09Ci0tLS0tRU5EIFBVQkxJQyBLRVktLS0tLQoA"
    ),
}


def read_captured_body(path: Path = CAPTURED_REQUESTS_PATH) -> dict[str, str]:
    """Return the registration body in the captured-requests file, keys in the order sent."""
    text = path.read_text(encoding="utf-8")
    match = re.search(r'^\{"addr".*$', text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no registration body in {path}")
    body: dict[str, str] = json.loads(match.group(0))
    return body


CAPTURED_BODY: dict[str, str] = read_captured_body()


if __name__ == "__main__":
    write_pool()
