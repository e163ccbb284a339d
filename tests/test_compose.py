"""What can be checked of the compose stack without a Docker engine: the compose file,
the pinned images, the files it references, geth's command line against geth 1.13's
flags, the Dockerfile's Python install, and Debian's dhtnode really answering."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.genesis import JAMI_BOOTNODE
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
GETH_IMAGE = re.compile(r"^ethereum/client-go:v1\.13\.\d+$")

# The geth 1.13 flags this stack relies on (cmd/utils/flags.go of v1.13.15; all of them
# exist from 1.11 to 1.13, and --unlock/--allow-insecure-unlock/--miner.etherbase are gone
# or deprecated later, one more reason to pin 1.13).
GETH_1_13_FLAGS = {
    "datadir",
    "networkid",
    "syncmode",
    "gcmode",
    "history.transactions",
    "bootnodes",
    "port",
    "nodiscover",
    "http",
    "http.addr",
    "http.port",
    "http.api",
    "http.vhosts",
    "ipcdisable",
    "verbosity",
    "mine",
    "miner.etherbase",
    "miner.gaslimit",
    "unlock",
    "password",
    "allow-insecure-unlock",
}
GETH_SYNCMODES = {"full", "snap"}  # 1.13 dropped "light" serving and "fast"
UNSAFE_APIS = {"personal", "admin", "debug", "miner", "txpool"}

# Files the operator makes (README.md "Running with docker compose"); never in the repo.
OPERATOR_FILES = {".env", "secrets/signer.key", "secrets/sealer.key", "secrets/sealer.password"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def geth_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services(compose).items()
        if service["image"].startswith("ethereum/client-go") and "command" in service
    }


def interpolation_default(value: str) -> str:
    """`${VAR:-default}` / `${VAR-default}` -> default; other text unchanged."""
    return re.sub(r"\$\{[A-Z_]+:?-([^}]*)\}", r"\1", value)


def test_compose_has_the_services_and_profiles(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {
        "geth-init-jami",
        "geth-jami",
        "geth-init-private",
        "geth-private",
        "postgres",
        "migrate",
        "nameserver",
        "dhtnode",
        "caddy",
    }
    for name, service in services(compose).items():
        profiles = service.get("profiles")
        if name.startswith("geth"):
            assert profiles in (["jami"], ["private"]), name
        else:
            assert profiles is None, name  # the rest runs in both profiles


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: {image} has no tag"
        assert tag != "latest" and "latest" not in tag, name
        assert re.search(r"\d", tag), f"{name}: {image} is not a version tag"
    for name, service in geth_services(compose).items():
        assert GETH_IMAGE.match(service["image"]), name
    for dockerfile in (REPO / "Dockerfile", REPO / "docker/dhtnode/Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("FROM "):
                image = line.split()[1]
                assert re.search(r":[^:]*\d", image) and "latest" not in image, line


def referenced_paths(compose: dict[str, Any]) -> set[str]:
    paths: set[str] = set()
    for service in services(compose).values():
        build = service.get("build")
        if isinstance(build, str):
            paths.add(build)
            paths.add(str(Path(build) / "Dockerfile"))
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                paths.add(source)
        env_file = service.get("env_file")
        if env_file:
            paths.update([env_file] if isinstance(env_file, str) else env_file)
    for secret in compose.get("secrets", {}).values():
        paths.add(secret["file"])
    return {os.path.normpath(path) for path in paths}


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    paths = referenced_paths(compose)
    assert "genesis" in paths and "docker/Caddyfile" in paths
    for path in paths - OPERATOR_FILES:
        assert (REPO / path).exists(), path
    assert (REPO / ".env.example").is_file()
    # Operator files are documented, and the secrets never reach an image.
    readme = (REPO / "README.md").read_text()
    dockerignore = (REPO / ".dockerignore").read_text().split()
    for path in paths & OPERATOR_FILES:
        assert path in readme, path
        assert path.split("/")[0] in dockerignore, path
    # The genesis files the init steps read: 1551.json is shipped, private.json is made.
    genesis_files = {
        service["environment"]["GENESIS_FILE"]
        for name, service in services(compose).items()
        if name.startswith("geth-init")
    }
    assert genesis_files == {"1551.json", "private.json"}
    assert (REPO / "genesis/1551.json").is_file()
    assert "genesis/private.json" in readme


def test_no_host_port_publishes_geth_rpc(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for mapping in service.get("ports", []):
            container_port = str(mapping).split(":")[-1].split("/")[0]
            assert container_port not in {"8545", "8546", "8551"}, f"{name}: {mapping}"
            # Whatever is published, it is never the RPC on an explicit host address either.
            assert "8545" not in str(mapping), f"{name}: {mapping}"
    for service in geth_services(compose).values():
        assert "8545" in [str(port) for port in service.get("expose", [])]


def geth_flags(service: dict[str, Any]) -> dict[str, str | None]:
    flags: dict[str, str | None] = {}
    for argument in service["command"]:
        assert argument.startswith("--"), argument
        name, _, value = argument[2:].partition("=")
        flags[name] = interpolation_default(value) if value else None
    return flags


def test_geth_command_lines_use_only_geth_1_13_flags(compose: dict[str, Any]) -> None:
    geths = geth_services(compose)
    assert set(geths) == {"geth-jami", "geth-private"}
    for name, service in geths.items():
        flags = geth_flags(service)
        unknown = set(flags) - GETH_1_13_FLAGS
        assert not unknown, f"{name}: {unknown}"
        apis = set((flags["http.api"] or "").split(","))
        assert apis <= {"eth", "net", "web3"} and not apis & UNSAFE_APIS, name
        assert flags["http.port"] == "8545"
        assert "geth" in (flags["http.vhosts"] or "").split(",")  # the name server's Host
        assert service["networks"]["default"]["aliases"] == ["geth"], name
        # Archive: a crash never rewinds the chain, and old states stay readable.
        assert flags["gcmode"] == "archive", name
        assert flags["syncmode"] == "full", name  # never snap, even for a second sealer
    jami = geth_flags(geths["geth-jami"])
    assert jami["history.transactions"] == "0"  # every receipt stays readable
    assert jami["networkid"] == "1551"
    assert jami["syncmode"] in GETH_SYNCMODES
    assert jami["bootnodes"] == JAMI_BOOTNODE
    assert "mine" not in jami and "unlock" not in jami  # sync only
    private = geth_flags(geths["geth-private"])
    assert {"mine", "unlock", "password", "miner.etherbase", "nodiscover"} <= set(private)
    assert private["password"] == "/run/secrets/sealer_password"
    assert "sealer_password" in geths["geth-private"]["secrets"]


def test_geth_init_script_uses_geth_1_13_commands() -> None:
    script = (REPO / "docker/geth-init.sh").read_text()
    calls = [line.strip() for line in script.splitlines() if line.strip().startswith("geth ")]
    assert calls == [
        'geth --datadir "$datadir" init "$genesis"',
        'geth --datadir "$datadir" account import --password "${SEALER_PASSWORD_FILE:?}" '
        '"$SEALER_KEY_FILE"',
    ]
    for call in calls:
        for word in shlex.split(call):
            if word.startswith("--"):
                assert word[2:] in GETH_1_13_FLAGS, word
    subprocess.run(["sh", "-n", str(REPO / "docker/geth-init.sh")], check=True)
    subprocess.run(["sh", "-n", str(REPO / "docker/dhtnode/entrypoint.sh")], check=True)


def test_bootnode_default_matches_the_genesis_folder(compose: dict[str, Any]) -> None:
    shipped = (REPO / "genesis/1551.bootnodes").read_text().split()
    assert geth_flags(services(compose)["geth-jami"])["bootnodes"] == ",".join(shipped)


def test_name_server_talks_to_geth_and_postgres(compose: dict[str, Any]) -> None:
    for name in ("migrate", "nameserver"):
        service = services(compose)[name]
        environment = service["environment"]
        assert environment["JAMINS_RPC_URL"] == "http://geth:8545"
        assert "@postgres:5432/jamins" in environment["JAMINS_DATABASE_URL"]
        assert environment["JAMINS_SIGNER_KEY_FILE"] == "/run/secrets/signer_key"
        assert service["build"] == "."
        assert all(
            key.removeprefix("JAMINS_").lower() in Settings.model_fields for key in environment
        )
    assert services(compose)["migrate"]["command"] == ["jamins", "migrate"]
    depends = services(compose)["nameserver"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["geth-jami"]["required"] is False
    assert depends["geth-private"]["required"] is False
    assert "signer_key" in services(compose)["nameserver"]["secrets"]
    postgres = services(compose)["postgres"]
    assert postgres["healthcheck"]["test"][0] == "CMD-SHELL"
    assert any(volume.startswith("postgres:") for volume in postgres["volumes"])
    assert services(compose)["dhtnode"]["ports"] == ["4222:4222/udp"]
    caddy = services(compose)["caddy"]
    assert "JAMINS_HOSTNAME" in caddy["environment"]
    assert "{$JAMINS_HOSTNAME}" in (REPO / "docker/Caddyfile").read_text()


def test_env_example_documents_every_setting() -> None:
    example = (REPO / ".env.example").read_text()
    for field in Settings.model_fields:
        assert f"JAMINS_{field.upper()}=" in example, field
    assigned = re.findall(r"^#?([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE)
    assert sorted(name for name in set(assigned) if assigned.count(name) > 1) == []
    compose_text = COMPOSE_FILE.read_text()
    for variable in set(re.findall(r"\$\{([A-Z_]+)", compose_text)):
        assert f"{variable}=" in example, variable


# -- the name server's Dockerfile --------------------------------------------------------


def makefile_install_command() -> list[str]:
    for line in (REPO / "Makefile").read_text().splitlines():
        words = shlex.split(line.strip())
        if words[1:4] == ["-m", "pip", "install"] and "-e" in words:
            return words
    raise AssertionError("no pip install -e in the Makefile")


def dockerfile_install_commands() -> list[list[str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.startswith("RUN "):
            for part in line[4:].split("&&"):
                commands.append(shlex.split(part))
    return commands


def test_dockerfile_installs_like_the_makefile_and_runs_as_non_root() -> None:
    make_words = makefile_install_command()
    # Same command, same options; the project itself instead of its editable test install.
    expected = [*make_words[1:-2], "."] if make_words[-2] == "-e" else None
    assert expected == ["-m", "pip", "install", "--quiet", "."]
    installs = [words for words in dockerfile_install_commands() if "install" in words]
    assert [words[1:] for words in installs] == [
        ["-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        expected,
    ]
    dockerfile = (REPO / "Dockerfile").read_text()
    user_lines = [line for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1] not in ("USER root", "USER 0")
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    for copied in re.findall(r"^COPY (?!--)(\S+)", dockerfile, re.MULTILINE):
        assert (REPO / copied).exists(), copied


@pytest.mark.slow
def test_dockerfile_python_install_builds_a_working_server(tmp_path: Path) -> None:
    """Run the Dockerfile's install on a copy of what it COPYs, into a fresh venv, and use
    the installed console script outside the source tree (contract artifact, migrations)."""
    context = tmp_path / "src"
    context.mkdir()
    dockerfile = (REPO / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, re.MULTILINE):
        for name in copied.split():
            source = REPO / name
            if source.is_dir():
                shutil.copytree(
                    source, context / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(source, context / name)
    prefix = tmp_path / "opt"
    venv.create(prefix, with_pip=True)
    install = next(words for words in dockerfile_install_commands() if words[-1] == ".")
    # The dependencies are this venv's (no download); the project is built and installed
    # exactly as in the image.
    command = [str(prefix / "bin/python"), *install[1:-1], "--no-deps", "."]
    subprocess.run(command, cwd=context, check=True, timeout=600)
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("JAMINS_")},
        "PYTHONPATH": next(path for path in sys.path if path.endswith("site-packages")),
        "JAMINS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    where = subprocess.run(
        [str(prefix / "bin/python"), "-c", "import app, contracts; print(app.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(prefix))
    subprocess.run([str(prefix / "bin/jamins"), "migrate"], cwd=tmp_path, env=env, check=True)
    artifact = subprocess.run(
        [
            str(prefix / "bin/python"),
            "-c",
            "from app.chain.registrar import deployment_data; print(len(deployment_data()))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(artifact.stdout) > 1000


# -- Debian's dhtnode -------------------------------------------------------------------


def msgpack_str(text: str) -> bytes:
    data = text.encode()
    assert len(data) < 32
    return bytes([0xA0 | len(data)]) + data


def opendht_ping(node_id: bytes, tid: int) -> bytes:
    """OpenDHT's ping query: {"a": {"id": node_id}, "q": "ping", "t": tid, "y": "q",
    "v": "RNG1"} in MessagePack."""
    return (
        bytes([0x85])
        + msgpack_str("a")
        + bytes([0x81])
        + msgpack_str("id")
        + b"\xc4\x14"
        + node_id
        + msgpack_str("q")
        + msgpack_str("ping")
        + msgpack_str("t")
        + b"\xce"
        + struct.pack(">I", tid)
        + msgpack_str("y")
        + msgpack_str("q")
        + msgpack_str("v")
        + msgpack_str("RNG1")
    )


def ping_main(port: int) -> None:
    """Run inside the node's network namespace: ping it on loopback, print the answer."""
    tid = 0x4A414D49
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for _ in range(20):  # the node may still be starting
            sock.sendto(opendht_ping(os.urandom(20), tid), ("127.0.0.1", port))
            try:
                answer, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            print(peer[0], peer[1], answer.hex())
            return
    raise SystemExit("no answer")


def ensure_dhtnode() -> str:
    found = shutil.which("dhtnode")
    assert found is not None, "dhtnode is needed: `make test` installs it (apt-get)"
    return found


def test_dhtnode_from_debian_answers_a_ping_on_loopback(tmp_path: Path) -> None:
    ensure_dhtnode()
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip to keep dhtnode on a loopback-only network")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here")
    port = 42220 + os.getpid() % 1000
    # dhtnode has no bind-address option: run it in a fresh network namespace, where only
    # loopback exists, with the image's entrypoint and no bootstrap (nothing leaves).
    script = f"""
set -eu
ip link set lo up
DHT_PORT={port} DHT_BOOTSTRAP= sh {shlex.quote(str(REPO / "docker/dhtnode/entrypoint.sh"))} \
    > {shlex.quote(str(tmp_path / "dhtnode.log"))} 2>&1 &
node=$!
status=0
{shlex.quote(sys.executable)} -c 'from tests.test_compose import ping_main; ping_main({port})' \
    || status=$?
grep -c ':{port:04X} ' /proc/net/udp || true
kill "$node"
wait "$node" || true
exit "$status"
"""
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + (tmp_path / "dhtnode.log").read_text()
    answer_line, listening = result.stdout.splitlines()[:2]
    host, answer_port, payload = answer_line.split()
    assert (host, int(answer_port)) == ("127.0.0.1", port)
    answer = bytes.fromhex(payload)
    # A reply ("y": "r") to our transaction id, carrying the node's own id.
    assert msgpack_str("y") + msgpack_str("r") in answer
    assert b"\xce" + struct.pack(">I", 0x4A414D49) in answer
    assert msgpack_str("id") + b"\xc4\x14" in answer
    assert int(listening) >= 1  # the UDP socket on that port, inside the namespace
