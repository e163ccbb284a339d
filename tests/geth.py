"""A real geth 1.13.15 for the tests: finding the binary, and private Clique chains on it.

Each `GethNode` is one geth process on 127.0.0.1 with its own data directory, sealing a
private Clique chain whose genesis `jamins genesis` wrote (the Jami chain's fork schedule,
period 1 for speed). One sealer key, imported with `--lightkdf` so that unlocking it costs
nothing; a "bank" key funded in the genesis pays for the tests' transactions (geth has no
anvil_setBalance). Stopped by PID: SIGTERM (geth flushes), or SIGKILL for a crash.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from eth_account import Account

from app.chain.anvil import AnvilRPCError, rpc
from tests.cli_runner import run_jamins
from tests.server import REPO_ROOT, die_with_parent, free_port

GETH_VERSION = "1.13.15"
DEFAULT_GETH = REPO_ROOT / ".geth" / "bin" / "geth"
# The Jami chain's Constantinople block: before it the registrar's code (SHL/SHR, REVERT)
# cannot run, and before block 3 geth's RPC refuses EIP-155 transactions.
CONSTANTINOPLE_BLOCK = 5
_LOG_TAIL_BYTES = 4000
_PASSWORD = "test"


class GethNotFound(RuntimeError):
    """No geth 1.13.15 binary: the message says how to get one."""


class GethStartError(RuntimeError):
    """geth was spawned but did not come up (or exited)."""


@functools.cache
def find_geth() -> str:
    """The geth 1.13.15 binary: $JAMINS_GETH_PATH, else .geth/bin/geth (`make geth`)."""
    explicit = os.environ.get("JAMINS_GETH_PATH")
    path = Path(explicit) if explicit else DEFAULT_GETH
    if not (path.is_file() and os.access(path, os.X_OK)):
        how = "JAMINS_GETH_PATH" if explicit else "run `make geth` (needs Go)"
        raise GethNotFound(f"geth {GETH_VERSION} not found at {path}: {how}")
    version = subprocess.run(
        [str(path), "version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    if f"Version: {GETH_VERSION}-stable" not in version.splitlines():
        raise GethNotFound(f"{path} is not geth {GETH_VERSION}: {version.strip()[:200]!r}")
    return str(path)


def write_genesis(
    path: Path,
    *,
    signers: list[str],
    funded: list[str],
    chain_id: int,
    period: int = 1,
    gas_limit: int = 4_700_000,
) -> dict[str, Any]:
    """Write a private genesis with `jamins genesis` (the real command, run in this process:
    a new Python process per node cost a second of CPU) and return it."""
    command = ["genesis", "--chain-id", str(chain_id)]
    command += ["--period", str(period), "--gas-limit", str(gas_limit), "--out", str(path)]
    for signer in signers:
        command += ["--signer", signer]
    for account in funded:
        command += ["--fund", account]
    result = run_jamins(*command)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(path.read_text())
    return document


class GethNode:
    """One geth process on 127.0.0.1 sealing (or following) a private Clique chain."""

    kind = "geth"

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str | None = None,
        chain_id: int = 4242,
        period: int = 1,
        gas_limit: int = 4_700_000,
        archive: bool = True,
        mine: bool = True,
        sealer_key: str | None = None,
        bank_key: str | None = None,
        genesis_file: Path | None = None,
        max_peers: int = 0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or find_geth()
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.chain_id = chain_id
        self.archive = archive
        self.mine = mine
        self.max_peers = max_peers
        self.extra_args = extra_args
        self.sealer = Account.from_key(sealer_key or Account.create().key)
        self.bank = Account.from_key(bank_key or Account.create().key)
        self.log_path = workdir / "geth.log"
        self.http_port = 0
        self.auth_port = 0
        self.p2p_port = 0
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._bank_lock = threading.Lock()
        workdir.mkdir(parents=True, exist_ok=True)
        if genesis_file is None:
            genesis_file = workdir / "genesis.json"
            write_genesis(
                genesis_file,
                signers=[self.sealer.address],
                funded=[self.bank.address],
                chain_id=chain_id,
                period=period,
                gas_limit=gas_limit,
            )
        self.genesis_file = genesis_file
        self.genesis: dict[str, Any] = json.loads(genesis_file.read_text())
        self.gas_limit = int(self.genesis["gasLimit"], 16)
        self._init_datadir()

    # -- set-up ---------------------------------------------------------------------------

    def _geth(self, *args: str) -> str:
        result = subprocess.run(
            [self.binary, "--datadir", str(self.datadir), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise GethStartError(f"geth {' '.join(args)} failed:\n{result.stderr[-2000:]}")
        return result.stderr

    def _init_datadir(self) -> None:
        (self.workdir / "init.log").write_text(self._geth("init", str(self.genesis_file)))
        (self.workdir / "password").write_text(_PASSWORD + "\n")
        key_file = self.workdir / "sealer.key"
        key_file.write_text(self.sealer.key.hex().removeprefix("0x") + "\n")  # geth: no 0x
        self._geth(
            "account",
            "import",
            "--lightkdf",
            "--password",
            str(self.workdir / "password"),
            str(key_file),
        )

    def command(self) -> list[str]:
        sealer = self.sealer.address
        command = [
            self.binary,
            "--datadir", str(self.datadir),
            "--networkid", str(self.chain_id),
            "--syncmode", "full",
            "--gcmode", "archive" if self.archive else "full",
            "--nodiscover", "--maxpeers", str(self.max_peers), "--nat", "none",
            "--port", str(self.p2p_port), "--ipcdisable",
            "--http", "--http.addr", "127.0.0.1", "--http.port", str(self.http_port),
            "--http.api", "eth,net,web3,txpool,debug,admin,miner",
            "--authrpc.addr", "127.0.0.1", "--authrpc.port", str(self.auth_port),
            "--miner.etherbase", sealer, "--miner.gaslimit", str(self.gas_limit),
            "--unlock", sealer, "--password", str(self.workdir / "password"),
            "--allow-insecure-unlock",
            # Transactions of dropped blocks must stay dropped across a restart.
            "--txpool.journal", "",
            "--verbosity", "3",
        ]  # fmt: skip
        if self.mine:
            command.append("--mine")
        return command + list(self.extra_args)

    # -- process --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, *, wait_block: int = CONSTANTINOPLE_BLOCK, timeout: float = 60.0) -> None:
        """Spawn geth on fresh loopback ports; return once it answers and (when sealing or
        already past it) its head is at `wait_block`, the Constantinople block."""
        if self._process is not None:
            raise GethStartError("geth is already running")
        if not self.http_port:  # a restart keeps its ports, as a restarted server would
            self.http_port, self.auth_port, self.p2p_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._reap(signal.SIGKILL)
                raise GethStartError(f"geth exited with code {code}:\n{self.log_tail()}")
            try:
                if int(self.rpc("eth_chainId", timeout=1.0), 16) == self.chain_id:
                    break
            except (OSError, ValueError, AnvilRPCError):
                pass
            if time.monotonic() > deadline:
                self._reap(signal.SIGKILL)
                raise GethStartError(f"geth did not answer on {self.url}:\n{self.log_tail()}")
            time.sleep(0.1)
        if self.mine:
            self.wait_for_block(wait_block, timeout=max(5.0, deadline - time.monotonic()))

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        with self.log_path.open("rb") as log:
            log.seek(max(0, self.log_path.stat().st_size - _LOG_TAIL_BYTES))
            return log.read().decode("utf-8", "replace")

    def _reap(self, sig: signal.Signals, timeout: float = 30.0) -> None:
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """SIGTERM by PID: geth writes its state out and exits. Idempotent."""
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL by PID: a crash (a non-archive node loses its in-memory states)."""
        self._reap(signal.SIGKILL)

    def __enter__(self) -> GethNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- chain ----------------------------------------------------------------------------

    def rpc(self, method: str, params: list[Any] | None = None, timeout: float = 10.0) -> Any:
        return rpc(self.url, method, params or [], timeout=timeout)

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def wait_for_block(self, number: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.block_number() < number:
            if time.monotonic() > deadline:
                raise TimeoutError(f"geth at {self.url} did not reach block {number}")
            time.sleep(0.2)

    def wait_receipt(self, tx_hash: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                receipt = self.rpc("eth_getTransactionReceipt", [tx_hash])
            except AnvilRPCError as exc:  # "transaction indexing is in progress"
                if "indexing" not in str(exc):
                    raise
                receipt = None
            if receipt is not None:
                result: dict[str, Any] = receipt
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tx_hash} not mined on {self.url}")
            time.sleep(0.2)

    def send_from_bank(self, tx: dict[str, Any]) -> str:
        """Sign `tx` with the bank key (nonce, gas price, chain id filled) and send it."""
        with self._bank_lock:
            nonce = int(self.rpc("eth_getTransactionCount", [self.bank.address, "pending"]), 16)
            full = {
                "nonce": nonce,
                "gasPrice": int(self.rpc("eth_gasPrice"), 16),
                "chainId": self.chain_id,
                "gas": 21_000,
                "value": 0,
                **tx,
            }
            signed = self.bank.sign_transaction(full)
            tx_hash: str = self.rpc("eth_sendRawTransaction", ["0x" + signed.raw_transaction.hex()])
            return tx_hash

    def fund(self, address: str, wei: int) -> None:
        """Send `wei` from the bank to `address` and wait until it is mined."""
        tx_hash = self.send_from_bank({"to": address, "value": wei})
        receipt = self.wait_receipt(tx_hash)
        assert int(receipt["status"], 16) == 1, receipt

    def enode(self) -> str:
        """This node's enode URL on its loopback p2p port."""
        info = self.rpc("admin_nodeInfo")
        enode: str = info["enode"].split("@")[0] + f"@127.0.0.1:{self.p2p_port}"
        return enode
