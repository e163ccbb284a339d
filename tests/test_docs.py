"""The project's own documents: a clone holds everything the README and code point at."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

from app import errors
from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "docs" / "PROTOCOL.md"


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name]


def test_repository_points_at_no_file_outside_it() -> None:
    # A user on a clone has nothing beside it: every document and test datum is in here.
    # Spelt in pieces so that this line does not match itself.
    outside = re.compile(r"\.\./" + "shared" + "|" + "shared" + "/spec")
    offenders = []
    for path in tracked_files():
        if not path.is_file() or path.suffix not in {".md", ".py", ".txt", ".toml", ".yml", ""}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_protocol_document_lists_every_route_the_server_answers(tmp_path: Path) -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    app = create_app(Settings(data_dir=tmp_path, _env_file=None))
    missing = [f"`GET {path}`" for path in app.openapi()["paths"] if f"{path}`" not in text]
    assert missing == []


def test_protocol_document_abi_matches_the_contract_artifact() -> None:
    # The ABI block in docs/PROTOCOL.md is what the built contract really exposes.
    text = PROTOCOL.read_text(encoding="utf-8")
    block = re.search(r"```solidity\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/PROTOCOL.md has no ```solidity ABI block"
    documented = set()
    for line in block.group(1).splitlines():
        found = re.match(r"\s*(function|event) (\w+)\(([^)]*)\)", line)
        if found:
            params = [part.split()[0] for part in found.group(3).split(",") if part.strip()]
            documented.add(f"{found.group(1)} {found.group(2)}({','.join(params)})")
    artifact = json.loads((REPO / "contracts" / "Registrar.json").read_text())
    built = {
        f"{entry['type']} {entry['name']}({','.join(p['type'] for p in entry['inputs'])})"
        for entry in artifact["abi"]
        if entry["type"] in ("function", "event")
    }
    assert documented == built


@pytest.mark.parametrize(
    "needle",
    [
        pytest.param("Retry-After", id="transient-503"),
        pytest.param("RSASSA-PKCS1-v1_5", id="signature-scheme"),
        pytest.param("SubjectPublicKeyInfo", id="jami-id-hash"),
        pytest.param("README.md#name-policy", id="policy-link"),
        pytest.param("tests/data/captured-requests.txt", id="capture-link"),
    ],
)
def test_protocol_document_covers(needle: str) -> None:
    assert needle in PROTOCOL.read_text(encoding="utf-8")


def test_protocol_document_links_resolve() -> None:
    # Relative links of docs/PROTOCOL.md: files exist, README anchors are headings.
    text = PROTOCOL.read_text(encoding="utf-8")
    readme_anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", text)
    assert ("../README.md", "name-policy") in links
    for path, anchor in links:
        assert (PROTOCOL.parent / path).resolve().is_file(), path
        if anchor and path.endswith("README.md"):
            assert anchor in readme_anchors, anchor


def _error_classes() -> dict[str, type[errors.JaminsError]]:
    found: dict[str, type[errors.JaminsError]] = {}
    pending: list[type[errors.JaminsError]] = [errors.JaminsError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def answered_error_texts() -> dict[str, str]:
    """The fixed error texts a client can receive, read from the code: an error of
    app/errors.py made without a detail answers its class's message; one made with a
    string literal answers that literal. Details built at run time (f-strings, a node's
    own wording) and the CLI are left out. Returns text -> where it is made."""
    classes = _error_classes()
    texts: dict[str, str] = {}
    for path in sorted((REPO / "app").rglob("*.py")):
        if path.name in ("cli.py", "cli_data.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "app.errors"
            for alias in node.names
            if alias.name in classes
        }
        where = str(path.relative_to(REPO))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if not (isinstance(func, ast.Name) and func.id in imported):
                continue
            args = node.args
            if not args:
                texts[classes[func.id].message] = f"{where}:{node.lineno}"
            elif isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                texts[args[0].value] = f"{where}:{node.lineno}"
        # Bodies written by hand (middlewares answering before any route runs).
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "error"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        texts[value.value] = f"{where}:{node.lineno}"
    return texts


def test_answered_error_texts_are_found_in_the_code() -> None:
    # Guards the test below against reading nothing: a few texts every server answers.
    texts = answered_error_texts()
    for text in ("name not registered", "invalid name", "registration pending on chain"):
        assert text in texts


def test_protocol_document_names_every_error_text_the_server_answers() -> None:
    # A client author reads the error bodies in docs/PROTOCOL.md; a text the code answers
    # but the document never mentions means a case the document forgot.
    document = " ".join(PROTOCOL.read_text(encoding="utf-8").split())
    missing = {
        text: where for text, where in answered_error_texts().items() if f'"{text}"' not in document
    }
    assert missing == {}


def test_protocol_document_names_only_real_settings() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    known = {f"JAMINS_{field.upper()}" for field in Settings.model_fields}
    named = set(re.findall(r"JAMINS_[A-Z0-9_]+", text))
    assert named - known == set()
