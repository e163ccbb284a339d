"""docker-compose.yml's geth services run with the real geth 1.13.15 binary, natively.

No Docker engine here, so this does what compose would: read each geth service's
entrypoint, command, environment, volumes and secrets from docker-compose.yml, substitute
the environment as compose does (`${VAR:-default}`, `${VAR:?error}`, ...), map the
container paths (volumes, /run/secrets) to a temporary project directory, and start the
processes. The only rewrites are for running side by side on one host: loopback addresses,
free ports, and 127.0.0.1 added to --http.vhosts (the name server's Host is `geth` in
compose). The private profile must seal blocks at its genesis gas limit and the name server
must register on it; the jami profile must initialise from genesis/1551.json and start
(peering cannot be tested offline).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml
from eth_account import Account

from app.chain.anvil import AnvilRPCError, rpc
from tests.conftest import unique_name
from tests.geth import write_genesis
from tests.jami_keys import make_account
from tests.server import REPO_ROOT, ServerProcess, free_port

pytestmark = pytest.mark.slow

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
JAMI_GENESIS_HASH = "0x0af63ba6b1ffac5ea4aac146bb653517df622e6ebf2a59d6e8def2533e8b061b"
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


class ComposeError(Exception):
    """What `docker compose` would refuse with (a required variable is not set)."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Substitute `env` into `text` the way compose does."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        present = value is not None and (value != "" or not (operator or "").startswith(":"))
        if operator in (":-", "-"):
            return value if present and value is not None else argument
        if operator in (":?", "?"):
            if not present:
                raise ComposeError(f"required variable {name} is missing a value: {argument}")
            return value or ""
        if operator in (":+", "+"):
            return argument if present else ""
        return value or ""

    return _VARIABLE.sub(substitute, text)


class Project:
    """A compose project directory: genesis/, secrets/, docker/ and the named volumes."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        shutil.copytree(REPO_ROOT / "genesis", root / "genesis")
        shutil.copytree(
            REPO_ROOT / "docker", root / "docker", ignore=shutil.ignore_patterns("*.pyc")
        )
        (root / "secrets").mkdir()
        (root / "volumes").mkdir()
        self.bin = root / "bin"
        self.bin.mkdir()
        self.processes: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def paths(self, service: dict[str, Any]) -> dict[str, Path]:
        """Container path -> host path, from the service's volumes and secrets."""
        mapping: dict[str, Path] = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mapping[target] = self.root / source
            else:
                mapping[target] = self.root / "volumes" / source
                mapping[target].mkdir(exist_ok=True)
        for secret in service.get("secrets", []):
            mapping[f"/run/secrets/{secret}"] = self.root / COMPOSE["secrets"][secret]["file"]
        return mapping

    def argv(self, name: str, geth: str) -> tuple[list[str], dict[str, str], dict[str, int]]:
        """The service's process as compose would run it, rewritten for this host."""
        service = COMPOSE["services"][name]
        mapping = self.paths(service)
        entrypoint = service.get("entrypoint") or ["geth"]
        command = [interpolate(str(arg), self.env) for arg in service.get("command", [])]
        environment = {
            key: interpolate(str(value), self.env)
            for key, value in (service.get("environment") or {}).items()
        }

        def host_path(value: str) -> str:
            for container, host in sorted(mapping.items(), key=lambda item: -len(item[0])):
                if value == container or value.startswith(container + "/"):
                    return str(host) + value[len(container) :]
            return value

        ports = {"http": free_port(), "p2p": free_port(), "auth": free_port()}
        rewritten = []
        for argument in command:
            flag, equals, value = argument.partition("=")
            if flag == "--port":
                value = str(ports["p2p"])
            elif flag == "--http.port":
                value = str(ports["http"])
            elif flag == "--http.addr":
                value = "127.0.0.1"
            elif flag == "--http.vhosts":
                value += ",127.0.0.1"
            rewritten.append(flag + equals + host_path(value) if equals else argument)
        rewritten += [f"--authrpc.port={ports['auth']}"]
        if "--nodiscover" not in rewritten:
            rewritten += ["--nodiscover", "--maxpeers=0"]  # offline: no dialing out
        environment = {key: host_path(value) for key, value in environment.items()}
        # Scripts: run the project's copy with the container paths replaced.
        program = [host_path(part) for part in entrypoint]
        for index, part in enumerate(program):
            if part.endswith(".sh"):
                script = Path(part)
                text = script.read_text()
                for container, host in mapping.items():
                    if not container.endswith(".sh"):
                        text = text.replace(f"={container}", f"={host}")
                        text = text.replace(f"{container}/", f"{host}/")
                native = script.with_suffix(f".{name}.sh")
                native.write_text(text)
                program[index] = str(native)
        (self.bin / "geth").unlink(missing_ok=True)
        (self.bin / "geth").symlink_to(geth)
        environment["PATH"] = f"{self.bin}:/usr/bin:/bin"
        return program + rewritten, environment, ports

    def run(self, name: str, geth: str) -> subprocess.CompletedProcess[str]:
        argv, environment, _ = self.argv(name, geth)
        return subprocess.run(
            argv, env=environment, capture_output=True, text=True, timeout=120, check=False
        )

    def start(self, name: str, geth: str) -> str:
        """Start a long-running service; returns its loopback JSON-RPC URL."""
        argv, environment, ports = self.argv(name, geth)
        log = self.root / f"{name}.log"
        handle = log.open("wb")
        process = subprocess.Popen(argv, env=environment, stdout=handle, stderr=subprocess.STDOUT)
        self.processes.append((process, handle))
        url = f"http://127.0.0.1:{ports['http']}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
            try:
                rpc(url, "eth_chainId", timeout=1)
                return url
            except (OSError, AnvilRPCError):
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM each process by PID (SIGKILL after 30 s)."""
        for process, handle in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            handle.close()
        self.processes.clear()


@pytest.fixture
def private_project(tmp_path: Path) -> Iterator[tuple[Project, dict[str, Any]]]:
    """The README's private-profile steps: keys, password, `jamins genesis`, .env."""
    sealer, signer = Account.create(), Account.create()
    env = {
        "COMPOSE_PROFILES": "private",
        "SEALER_ADDRESS": sealer.address,
        "JAMINS_CHAIN_ID": "4747",
        "POSTGRES_PASSWORD": "x",
        "JAMINS_HOSTNAME": "example.org",
    }
    project = Project(tmp_path / "project", env)
    (project.root / "secrets/sealer.key").write_text(sealer.key.hex().removeprefix("0x") + "\n")
    (project.root / "secrets/sealer.password").write_text("s3cret-password\n")
    # A gas limit other than the default: geth must seal at the genesis's, not its own.
    genesis = write_genesis(
        project.root / "genesis/private.json",
        signers=[sealer.address],
        funded=[signer.address],
        chain_id=4747,
        period=1,
        gas_limit=6_000_000,
    )
    try:
        yield project, {"signer_key": signer.key.hex(), "genesis": genesis}
    finally:
        project.stop()


def test_compose_refuses_private_geth_without_its_settings(
    geth_binary: str, private_project: tuple[Project, dict[str, Any]]
) -> None:
    """An empty value made geth exit obscurely (`--miner.etherbase=`, `--networkid=`):
    the private geth must refuse first, naming the setting."""
    project, _ = private_project
    for missing in (None, ""):
        if missing is None:
            del project.env["SEALER_ADDRESS"]
        else:
            project.env["SEALER_ADDRESS"] = missing
        refused = project.run("geth-private", geth_binary)
        assert refused.returncode != 0
        assert "SEALER_ADDRESS" in refused.stderr
        assert not list((project.root / "volumes").glob("geth-private/geth/chaindata"))


def test_compose_file_substitutes_for_the_jami_profile_without_private_settings() -> None:
    """compose substitutes the whole file before it picks the profile's services: a value
    only the private profile needs must not be required (`:?`) of a jami-profile .env."""
    jami_env = {"COMPOSE_PROFILES": "jami", "POSTGRES_PASSWORD": "x", "JAMINS_HOSTNAME": "a.b"}
    interpolate((REPO_ROOT / "docker-compose.yml").read_text(), jami_env)


def test_compose_private_profile_seals_and_the_name_server_registers(
    geth_binary: str, private_project: tuple[Project, dict[str, Any]], tmp_path: Path
) -> None:
    project, made = private_project
    del project.env["JAMINS_CHAIN_ID"]  # geth takes the network id from the genesis
    init = project.run("geth-init-private", geth_binary)
    assert init.returncode == 0, init.stderr
    again = project.run("geth-init-private", geth_binary)  # idempotent on restart
    assert again.returncode == 0 and "already initialised" in again.stdout, again.stderr
    url = project.start("geth-private", geth_binary)
    deadline = time.monotonic() + 60
    while int(rpc(url, "eth_blockNumber"), 16) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert rpc(url, "net_version") == "4747"
    latest = rpc(url, "eth_getBlockByNumber", ["latest", False])
    assert int(latest["gasLimit"], 16) == int(made["genesis"]["gasLimit"], 16) == 6_000_000
    assert rpc(url, "eth_getBlockByNumber", ["0x0", False])["hash"] != JAMI_GENESIS_HASH

    server = ServerProcess(
        data_dir=tmp_path / "server",
        env={
            "JAMINS_RPC_URL": url,
            "JAMINS_CHAIN_ID": "4747",
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": made["signer_key"],
            "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
        },
    )
    server.start()
    try:
        name, account = unique_name("compose"), make_account()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post(f"/name/{name}", json=account.registration_body(name))
            assert answer.status_code == 200
            assert server.wait_settled(name, timeout=60)["state"] == "confirmed"
            assert http.get(f"/name/{name}").json()["addr"] == "0x" + account.jami_id
    finally:
        server.stop()


def test_compose_jami_profile_initialises_and_starts(geth_binary: str, tmp_path: Path) -> None:
    project = Project(tmp_path / "project", {"COMPOSE_PROFILES": "jami"})
    try:
        init = project.run("geth-init-jami", geth_binary)
        assert init.returncode == 0, init.stderr
        assert "hash=0af63b..8b061b" in init.stderr
        url = project.start("geth-jami", geth_binary)
        assert int(rpc(url, "eth_chainId"), 16) == 1551
        assert rpc(url, "net_version") == "1551"
        assert rpc(url, "eth_getBlockByNumber", ["0x0", False])["hash"] == JAMI_GENESIS_HASH
        time.sleep(3)  # still up: no flag it refuses later
        assert rpc(url, "eth_syncing") is False or isinstance(rpc(url, "eth_syncing"), dict)
        assert all(process.poll() is None for process, _ in project.processes)
    finally:
        project.stop()
    log = (project.root / "geth-jami.log").read_text()
    assert "Fatal" not in log, log[-3000:]
    # Archive: every state kept, transactions all indexed (--gcmode=archive).
    assert "Disabled transaction unindexing for archive node" in log or "archive" in log


def test_compose_geth_services_publish_no_port() -> None:
    """geth 1.13 has unpatched p2p crash bugs; a syncing node needs outbound peers only."""
    for name in ("geth-jami", "geth-private"):
        assert not COMPOSE["services"][name].get("ports"), name
