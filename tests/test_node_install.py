"""The node tools' install (`make install` runs `npm ci`) leaves a clone's tracked files as
they were: the lock file is complete for every platform anvil ships for."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_lock_file_lists_every_platform_package_of_anvil() -> None:
    # npm writes the packages of other platforms into the lock too; when they are missing,
    # `npm install` adds them (a dirty tree) and `npm ci` refuses the lock.
    lock = json.loads((REPO / "package-lock.json").read_text())
    packages = lock["packages"]
    anvil = packages["node_modules/@foundry-rs/anvil"]
    missing = [
        name
        for name, version in anvil["optionalDependencies"].items()
        if packages.get(f"node_modules/{name}", {}).get("version") != version
    ]
    assert missing == []


def test_npm_ci_accepts_the_lock_file_and_changes_nothing(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    assert npm is not None, "npm is needed (Node.js 20+)"
    for name in ("package.json", "package-lock.json"):
        shutil.copy(REPO / name, tmp_path / name)
    before = (tmp_path / "package-lock.json").read_bytes()
    result = subprocess.run(
        [npm, "ci", "--dry-run", "--no-audit", "--no-fund"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "package-lock.json").read_bytes() == before
