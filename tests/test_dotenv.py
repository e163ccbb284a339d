"""`.env` files: an operator's settings reach `jamins`, never the test suite; `~` expands;
the example file starts the embedded default as it is."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.cli_runner import run_jamins
from tests.server import REPO_ROOT, free_port

PUBLIC_REGISTRAR = "0xe53cb2ace8707526a5050bec7bcf979c57f8b44f"


def jamins_env(home: Path, **extra: str) -> dict[str, str]:
    """A `jamins` process run from outside the repository (cwd elsewhere), this tree's code."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(REPO_ROOT), **extra}


def test_settings_of_the_suite_ignore_a_dotenv_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        f"JAMINS_CONTRACT_ADDRESS={PUBLIC_REGISTRAR}\nJAMINS_PATH_PREFIX=/leaked\n"
    )
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=tmp_path)
    assert settings.contract_address is None
    assert settings.path_prefix == ""


def test_commands_the_suite_runs_ignore_a_dotenv_an_operator_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = tmp_path / "poison.sqlite3"
    (tmp_path / ".env").write_text(f"JAMINS_DATABASE_URL=sqlite:///{poison}\n")
    command = [sys.executable, "-m", "app", "migrate", "--data-dir", str(tmp_path / "data")]

    # How the suite runs commands in this process (tests/cli_runner.py).
    monkeypatch.chdir(tmp_path)
    in_process = run_jamins("migrate", "--data-dir", str(tmp_path / "in-process"))
    assert in_process.returncode == 0, in_process.stderr
    assert not poison.exists()
    assert (tmp_path / "in-process" / "jamins.sqlite3").is_file()

    # How the suite runs command processes (tests/server.py, the real-process tests).
    suite = subprocess.run(
        command,
        cwd=tmp_path,
        env=jamins_env(tmp_path, JAMINS_ENV_FILE=""),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert suite.returncode == 0, suite.stderr
    assert not poison.exists()
    assert (tmp_path / "data" / "jamins.sqlite3").is_file()

    # An operator's `jamins` still reads the .env of its working directory.
    operator = subprocess.run(
        command, cwd=tmp_path, env=jamins_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert operator.returncode == 0, operator.stderr
    assert poison.is_file()


@pytest.mark.parametrize("field", ["data_dir", "signer_key_file", "ssl_certfile", "ssl_keyfile"])
def test_settings_expand_home_in_paths(
    field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No shell expands `~` in a .env file: a literal ./~ folder would get a chain and a key.
    monkeypatch.setenv("HOME", str(tmp_path))
    dotenv = tmp_path / "settings.env"
    dotenv.write_text(f"JAMINS_{field.upper()}=~/jamins/{field}\n")
    settings = Settings(_env_file=dotenv)
    assert getattr(settings, field) == tmp_path / "jamins" / field


def test_settings_expand_home_in_an_sqlite_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings(database_url="sqlite:///~/names/jamins.sqlite3")
    assert settings.sqlite_path() == tmp_path / "names" / "jamins.sqlite3"
    assert settings.async_sqlalchemy_url() == f"sqlite+aiosqlite:///{tmp_path}/names/jamins.sqlite3"


@pytest.fixture
def example_server(
    tmp_path: Path, anvil_binary: str
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """`jamins serve` on the embedded default, from a folder whose .env is .env.example."""
    shutil.copy(REPO_ROOT / ".env.example", tmp_path / ".env")
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=jamins_env(
                tmp_path,
                JAMINS_ANVIL_PATH=anvil_binary,
                JAMINS_DATA_DIR=str(tmp_path / "data"),
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", log_path, process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_example_dotenv_starts_the_embedded_default(
    example_server: tuple[str, Path, subprocess.Popen[bytes]],
) -> None:
    # The compose steps copy .env.example to .env; `make serve` in that clone must still run.
    url, log_path, process = example_server
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            health = httpx.get(url + "/healthz", timeout=2)
            if health.status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        pytest.fail("server did not start:\n" + log_path.read_text(errors="replace")[-3000:])
    assert health.json()["registrar"] != PUBLIC_REGISTRAR
    assert health.json()["registrations"] == "enabled"


def test_the_settings_file_is_the_one_named_when_the_command_runs(tmp_path: Path) -> None:
    """JAMINS_ENV_FILE is read when a command reads its settings, not when app.settings was
    imported: a process that imported the application earlier (tests/warm.py's fork server,
    this test process) still reads the file its own environment names."""
    dotenv = tmp_path / "operator.env"
    dotenv.write_text("JAMINS_WORKERS=0\n")
    done = run_jamins("serve", "--port", str(free_port()), env={"JAMINS_ENV_FILE": str(dotenv)})
    assert done.returncode == 2, done
    assert "JAMINS_WORKERS=0" in done.stderr
