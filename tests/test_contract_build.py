"""contracts/Registrar.json is exactly what contracts/build.mjs makes from Registrar.sol."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "contracts" / "build.mjs"
ARTIFACT = REPO_ROOT / "contracts" / "Registrar.json"


def test_build_matches_committed_artifact(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js to rebuild contracts/Registrar.json")
    if not (REPO_ROOT / "node_modules" / "solc").is_dir():
        pytest.fail(f"node_modules/solc is missing: run `npm ci` in {REPO_ROOT}")

    out = tmp_path / "Registrar.json"
    result = subprocess.run(
        [node, str(BUILD_SCRIPT), "--out", str(out)],
        cwd=tmp_path,  # the script must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"build.mjs failed:\n{result.stderr}"
    assert out.read_bytes() == ARTIFACT.read_bytes(), (
        "contracts/Registrar.json is stale: run `node contracts/build.mjs` and commit it"
    )
