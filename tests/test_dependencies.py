"""Every package app/ imports is a declared, pinned dependency (not one that happens to
come along with another)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.server import REPO_ROOT


def _imported_top_levels() -> set[str]:
    found: set[str] = set()
    for path in (REPO_ROOT / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"app", "contracts", "migrations"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_app_imports_is_declared_and_pinned() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pinned = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", requirement)
        assert match, f"not pinned: {requirement}"
        pinned[_canonical(match.group(1))] = match.group(2)
    distributions = packages_distributions()
    undeclared = sorted(
        f"{module} ({', '.join(distributions.get(module, ['?']))})"
        for module in _imported_top_levels()
        if not any(_canonical(dist) in pinned for dist in distributions.get(module, []))
    )
    assert undeclared == []
