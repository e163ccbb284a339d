"""The compose stack's Caddyfile, run by Debian's real caddy on loopback in front of a real
jamins: operator routes stay private with JAMINS_PATH_PREFIX or without it, the API passes.

The site block is the repository's, unchanged; the test only adds global options (its own
ports, Caddy's internal CA instead of Let's Encrypt, no admin endpoint), binds the site to
127.0.0.1 and points `nameserver:8080` at the test's server.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.chain.anvil import AnvilNode
from tests.conftest import deployed_server
from tests.server import REPO_ROOT, free_port

CADDYFILE = REPO_ROOT / "docker" / "Caddyfile"
PREFIX = "/jami"
BLOCKED_BODY = {"error": "not found"}


@pytest.fixture(scope="module")
def upstream(anvil: AnvilNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """jamins with the API also under PREFIX, as behind a prefixed compose stack."""
    with deployed_server(
        anvil, tmp_path_factory.mktemp("caddy-upstream"), JAMINS_PATH_PREFIX=PREFIX
    ) as process:
        yield f"127.0.0.1:{process.port}"


class Caddy:
    def __init__(self, root: Path, upstream: str, prefix: str | None) -> None:
        self.root = root
        self.http_port = free_port()
        self.https_port = free_port()
        site = CADDYFILE.read_text()
        assert "nameserver:8080" in site
        site = site.replace("nameserver:8080", upstream)
        # The site block's first line: listen on loopback only.
        site = site.replace("{$JAMINS_HOSTNAME} {\n", "{$JAMINS_HOSTNAME} {\n\tbind 127.0.0.1\n", 1)
        assert "bind 127.0.0.1" in site
        config = root / "Caddyfile"
        config.write_text(
            "{\n"
            "\tadmin off\n"
            f"\thttp_port {self.http_port}\n"
            f"\thttps_port {self.https_port}\n"
            "\tlocal_certs\n"
            "\tskip_install_trust\n"
            "}\n\n" + site
        )
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(root),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "JAMINS_HOSTNAME": "127.0.0.1",
        }
        if prefix is not None:
            env["JAMINS_PATH_PREFIX"] = prefix
        caddy = shutil.which("caddy")
        assert caddy is not None, "caddy is needed: `make test` installs it (apt-get)"
        self.log = open(root / "caddy.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [caddy, "run", "--config", str(config), "--adapter", "caddyfile"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def ca(self) -> Path:
        return self.root / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.root / "caddy.log").read_text()
            try:
                httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1)
                if self.ca.is_file():
                    httpx.get(
                        f"https://127.0.0.1:{self.https_port}/healthz",
                        verify=ssl.create_default_context(cafile=self.ca),
                        timeout=2,
                    )
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("caddy did not answer:\n" + (self.root / "caddy.log").read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(params=[None, PREFIX], ids=["no-prefix", "prefix"])
def caddy(
    request: pytest.FixtureRequest, upstream: str, tmp_path: Path
) -> Iterator[tuple[Caddy, str]]:
    running = Caddy(tmp_path, upstream, request.param)
    try:
        running.wait()
        yield running, request.param or ""
    finally:
        running.stop()


def get(caddy: Caddy, scheme: str, path: str) -> httpx.Response:
    port = caddy.http_port if scheme == "http" else caddy.https_port
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=caddy.ca) if scheme == "https" else False
    )
    return httpx.get(f"{scheme}://127.0.0.1:{port}{path}", verify=verify, timeout=10)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_caddy_keeps_operator_routes_private_and_passes_the_api(
    caddy: tuple[Caddy, str], scheme: str
) -> None:
    proxy, prefix = caddy
    roots = ["", prefix] if prefix else [""]
    for root in roots:
        for route in ("metrics", "readyz"):
            for spelling in (
                route,
                route.capitalize(),
                "%" + format(ord(route[0]), "x") + route[1:],
            ):
                path = f"{root}/{spelling}"
                answer = get(proxy, scheme, path)
                assert answer.status_code == 404, (path, answer.text[:200])
                assert "jamins_" not in answer.text and "head_block" not in answer.text, path
        health = get(proxy, scheme, f"{root}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        # A name called "metrics" is a lookup like any other, not an operator route.
        lookup = get(proxy, scheme, f"{root}/name/metrics")
        assert lookup.json() == {"error": "name not registered"}
