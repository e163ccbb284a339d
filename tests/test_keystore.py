"""`jamins keystore`: a new signer key as an encrypted keystore, funded as the README says,
loaded by the server; and the embedded default's key never lands in git.

One `jamins keystore` runs as a real process (the layer above: exit code, the address on
stdout and nothing else); the other cases run the command in this process
(tests.cli_runner)."""

from __future__ import annotations

import functools
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from pydantic import SecretStr

from app.chain.anvil import AnvilNode, rpc
from app.chain.signer import load_signer
from app.settings import Settings
from tests.cli_runner import run_jamins
from tests.server import REPO_ROOT, InProcessApp, ServerProcess

PASSWORD = "correct horse battery staple"


@pytest.fixture
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keystores written in this process derive their key with 2 rounds of PBKDF2, not
    eth_account's default scrypt (about a second of CPU per encryption and decryption):
    what those cases test is where the password comes from. The real process of
    test_keystore_writes_... writes with the default."""
    monkeypatch.setattr(
        Account, "encrypt", functools.partial(Account.encrypt, kdf="pbkdf2", iterations=2)
    )


def jamins_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS`: a real process, no JAMINS_* setting, nothing on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "JAMINS_ENV_FILE": ""},
        stdin=subprocess.DEVNULL,
        # No controlling terminal: a password prompt would read stdin.
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keystore_writes_an_encrypted_key_and_prints_only_its_address(
    tmp_path: Path, cheap_kdf: None
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    keystore = tmp_path / "keys" / "signer.json"
    made = jamins_process("keystore", str(keystore), "--password-file", str(password_file))
    assert made.returncode == 0, made.stderr
    address = made.stdout.strip()
    written = keystore.read_text()
    # Each decryption is a scrypt run of about a second: once here, once by load_signer.
    key = Account.decrypt(json.loads(written), PASSWORD)
    assert json.loads(written)["crypto"]["kdf"] == "scrypt"
    assert Account.from_key(key).address == address
    assert key.hex().removeprefix("0x") not in made.stdout + made.stderr
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    # What the server reads with JAMINS_SIGNER_KEY_FILE and its password.
    signer = load_signer(
        Settings(signer_key_file=keystore, signer_keystore_password=SecretStr(PASSWORD))
    )
    assert signer is not None and signer.address == address

    again = run_jamins("keystore", str(keystore), "--password-file", str(password_file))
    assert again.returncode == 2
    assert "exists" in again.stderr and "Traceback" not in again.stderr
    assert keystore.read_text() == written


def test_keystore_takes_the_password_from_the_environment_or_a_prompt(
    tmp_path: Path, cheap_kdf: None
) -> None:
    from_env = run_jamins(
        "keystore",
        str(tmp_path / "a.json"),
        env={"JAMINS_SIGNER_KEYSTORE_PASSWORD": PASSWORD},
    )
    assert from_env.returncode == 0, from_env.stderr
    keystore = json.loads((tmp_path / "a.json").read_text())
    assert Account.from_key(Account.decrypt(keystore, PASSWORD)).address == from_env.stdout.strip()

    prompted = run_jamins("keystore", str(tmp_path / "b.json"), stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.returncode == 0, prompted.stderr
    keystore = json.loads((tmp_path / "b.json").read_text())
    assert Account.from_key(Account.decrypt(keystore, PASSWORD)).address in prompted.stdout

    mismatch = run_jamins("keystore", str(tmp_path / "c.json"), stdin=f"{PASSWORD}\nother\n" * 3)
    assert mismatch.returncode != 0
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("password", ["", "\n"], ids=["empty-file", "blank-line"])
def test_keystore_refuses_an_empty_password(tmp_path: Path, password: str) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(password)
    refused = run_jamins(
        "keystore", str(tmp_path / "k.json"), "--password-file", str(password_file)
    )
    assert refused.returncode == 2
    assert "password" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "k.json").exists()


def test_readme_funding_step_funds_the_keystore_on_your_node(
    tmp_path: Path, anvil: AnvilNode, cheap_kdf: None
) -> None:
    # README: eth_sendTransaction from an account the node holds unlocked.
    made = run_jamins(
        "keystore", str(tmp_path / "s.json"), env={"JAMINS_SIGNER_KEYSTORE_PASSWORD": "x"}
    )
    address = made.stdout.strip()
    funder = rpc(anvil.url, "eth_accounts", [])[0]
    # 100 ether at 1 gwei, as in the README (a legacy gas price: the chain is pre-London).
    sent = {"from": funder, "to": address, "value": "0x56BC75E2D63100000"}
    tx = rpc(anvil.url, "eth_sendTransaction", [{**sent, "gasPrice": "0x3b9aca00"}])
    # Mined a moment later (anvil mines in the background, geth within a block).
    deadline = time.monotonic() + 30
    while rpc(anvil.url, "eth_getTransactionReceipt", [tx]) is None:
        assert time.monotonic() < deadline, "the funding transaction was never mined"
        time.sleep(0.1)
    assert int(rpc(anvil.url, "eth_getBalance", [address, "latest"]), 16) == 100 * 10**18


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def test_embedded_data_dir_inside_a_clone_leaves_git_status_clean(
    tmp_path: Path, anvil_binary: str
) -> None:
    # `make serve ARGS="--data-dir ./data"`, or any other folder of a clone.
    clone = tmp_path / "clone"
    clone.mkdir()
    git(clone, "init", "-q")
    # The README's folder with a real `jamins serve` (which adds the node's lock file)...
    server = ServerProcess(data_dir=clone / "data", env={"JAMINS_ANVIL_PATH": anvil_binary})
    server.log_path = tmp_path / "data.log"  # the test's log, not the server's files
    server.start()
    try:
        assert httpx.get(server.url + "/healthz").json()["registrations"] == "enabled"
    finally:
        server.stop()
    # ... and any other folder, with the same application in this process.
    settings = Settings(_env_file=None, data_dir=clone / "my-names", anvil_path=anvil_binary)
    with InProcessApp(settings) as app, app.client() as http:
        assert http.get("/healthz").json()["registrations"] == "enabled"
    for folder in ("data", "my-names"):
        assert (clone / folder / "signer.key").is_file()
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""


def test_repository_ignores_the_readme_example_data_dir() -> None:
    ignored = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "data/signer.key"], check=False
    )
    assert ignored.returncode == 0
