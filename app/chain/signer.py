"""The account that signs and pays for registration transactions."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress

from app.settings import Settings


class SignerKeyError(RuntimeError):
    """The configured signer key cannot be read (the message never holds the key)."""


@dataclass(frozen=True)
class SignedTx:
    raw: str  # 0x-prefixed hex, as eth_sendRawTransaction takes it
    tx_hash: str  # 0x-prefixed lowercase hex


class Signer:
    """Signs legacy (type-0, EIP-155) transactions, as the pre-London Jami chain wants."""

    def __init__(self, account: LocalAccount) -> None:
        self._account = account
        self.address: ChecksumAddress = account.address

    def __repr__(self) -> str:
        return f"Signer({self.address})"

    def sign_legacy(
        self, *, nonce: int, gas: int, gas_price: int, to: str | None, data: str, chain_id: int
    ) -> SignedTx:
        tx: dict[str, Any] = {
            "nonce": nonce,
            "gas": gas,
            "gasPrice": gas_price,
            "value": 0,
            "data": data,
            "chainId": chain_id,
        }
        if to is not None:
            tx["to"] = to
        signed = self._account.sign_transaction(tx)
        return SignedTx(raw="0x" + signed.raw_transaction.hex(), tx_hash="0x" + signed.hash.hex())


def _from_hex(key_hex: str) -> Signer:
    try:
        return Signer(Account.from_key(key_hex.strip()))
    except (ValueError, TypeError):
        raise SignerKeyError("the signer key is not a 32-byte hex private key") from None


def _from_file(path: Path, password: str | None) -> Signer:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SignerKeyError(f"cannot read the signer key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SignerKeyError(f"the signer key file {path} is not text") from None
    if text.lstrip().startswith("{"):
        if password is None:
            raise SignerKeyError(f"{path} is a keystore: set JAMINS_SIGNER_KEYSTORE_PASSWORD")
        try:
            key = Account.decrypt(json.loads(text), password)
        except (ValueError, KeyError, TypeError):  # wrong password, or not a keystore
            raise SignerKeyError(f"cannot decrypt the keystore {path}") from None
        return Signer(Account.from_key(key))
    return _from_hex(text)


def load_signer(settings: Settings) -> Signer | None:
    """The configured signer, or None when the server has no key (read-only server)."""
    if settings.signer_key is not None:
        return _from_hex(settings.signer_key.get_secret_value())
    password = (
        settings.signer_keystore_password.get_secret_value()
        if settings.signer_keystore_password
        else None
    )
    if settings.signer_key_file is not None:
        return _from_file(settings.signer_key_file, password)
    return None


# The data dir may sit inside a clone (`make serve ARGS="--data-dir ./data"`): it ignores
# what jamins keeps there, above all the key, unless it already has a .gitignore.
DATA_DIR_GITIGNORE = """\
# Written by jamins: its data dir, with the signer's private key. Keep it out of git.
.gitignore
signer.key
jamins.sqlite3*
chain/
*.lock
"""


def load_or_create_key_file(path: Path) -> Signer:
    """The embedded default's own key: made once, kept readable by its owner only."""
    if path.exists():
        return _from_file(path, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text(DATA_DIR_GITIGNORE)
    key_hex = "0x" + secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key_hex + "\n")
    return _from_hex(key_hex)


def create_keystore_file(path: Path, password: str) -> str:
    """Write a new random key to `path` as an encrypted keystore JSON (mode 0600; an existing
    file raises FileExistsError) and return its address. The key is never returned."""
    account = Account.create()
    keystore = Account.encrypt(account.key, password)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(keystore, handle)
        handle.write("\n")
    return str(account.address)
