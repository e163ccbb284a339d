"""/docs works offline: its assets come from this server, a real headless Chromium renders
every operation, at the root and under JAMINS_PATH_PREFIX."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.chain.anvil import AnvilNode
from tests.conftest import deployed_server
from tests.server import ServerProcess

PREFIX = "/jami"
OPERATIONS = [
    "/name/{name}/owner",
    "/name/{name}/publickey",
    "/name/{name}/signature",
    "/name/{name}",
    "/addr/{addr}",
    "/registrations/{name}",
    "/healthz",
]


@pytest.fixture(scope="module")
def prefixed_server(
    anvil: AnvilNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with deployed_server(
        anvil, tmp_path_factory.mktemp("docs-server"), JAMINS_PATH_PREFIX=PREFIX
    ) as process:
        yield process


@pytest.fixture
def client(prefixed_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=prefixed_server.url, timeout=30) as http:
        yield http


@pytest.mark.parametrize("suffix", ["owner", "publickey", "signature"])
def test_openapi_declares_the_name_parameter(client: httpx.Client, suffix: str) -> None:
    operation = client.get("/openapi.json").json()["paths"][f"/name/{{name}}/{suffix}"]["get"]
    parameters = {(p["name"], p["in"], p["required"]) for p in operation.get("parameters", [])}
    assert ("name", "path", True) in parameters


@pytest.mark.parametrize("page", ["/docs", "/redoc", f"{PREFIX}/docs", f"{PREFIX}/redoc"])
def test_docs_pages_load_nothing_from_another_host(client: httpx.Client, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200
    referenced = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", html.text)
    urls = [url for pair in referenced for url in pair if url]
    assert urls, html.text
    assert [url for url in urls if "//" in url] == []
    base = page.rsplit("/", 1)[0] + "/"
    for url in urls:
        fetched = client.get(base + url)
        assert fetched.status_code == 200, url
        assert fetched.content


def chromium() -> str:
    found = shutil.which("chromium")
    assert found is not None, "chromium is needed: `make test` installs it (apt-get)"
    return found


def render(url: str, profile: Path) -> str:
    """The DOM a real headless Chromium has built after loading `url` and its scripts."""
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            # Let the page's scripts fetch the schema and draw before the DOM is dumped.
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("prefix", ["", PREFIX], ids=["root", "prefix"])
def test_docs_page_renders_every_operation_in_headless_chromium(
    prefixed_server: ServerProcess, prefix: str, tmp_path: Path
) -> None:
    dom = render(f"{prefixed_server.url}{prefix}/docs", tmp_path / "profile")
    shown = set(re.findall(r'data-path="([^"]+)"', dom))
    assert shown >= set(OPERATIONS), dom[-3000:]
    # The schema came from the same prefix the page was served under.
    log = prefixed_server.log_tail(200_000)
    assert re.search(rf'"GET {prefix}/openapi\.json HTTP/1\.1" 200', log), log[-3000:]
    if prefix:
        assert httpx.get(f"{prefixed_server.url}{prefix}/openapi.json").status_code == 200
