"""What a Jami app does, against `jamins serve` on its embedded default (no configuration):
availability checks while the user types, registration, lookups in another case,
reverse lookup, server restarts."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.jami_keys import make_account
from tests.server import ServerProcess


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_jami_app_flow_on_embedded_default(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir=data_dir)  # no JAMINS_* variable at all
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            # The availability check while typing "Alice".
            for typed in ("A", "Al"):
                assert http.get(f"/name/{typed}").status_code == 400
            for typed in ("Ali", "Alic", "Alice"):
                assert http.get(f"/name/{typed}").status_code == 404

            alice = make_account()
            answer = http.post(
                "/name/alice",
                json=alice.registration_body("alice"),
                headers={"Content-Type": "application/json"},
            )
            assert answer.json() == {"success": True}
            assert http.get("/name/Alice").json()["addr"] == "0x" + alice.jami_id
            assert http.get(f"/addr/{alice.jami_id}").json() == {"name": "alice"}
            assert server.wait_settled("alice")["state"] == "confirmed"

        server.restart()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/name/ALICE").json()["name"] == "alice"
            assert http.get(f"/addr/jami:{alice.jami_id}").json() == {"name": "alice"}

        # The chain kept it too: with the SQL cache gone, a lookup reads it back from the
        # embedded node's saved state, and the registrar is found again, not redeployed.
        server.stop()
        for cache_file in data_dir.glob("jamins.sqlite3*"):
            cache_file.unlink()
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            found = http.get("/name/Alice").json()
            assert found == {
                "name": "alice",
                "addr": "0x" + alice.jami_id,
                "publickey": alice.publickey_b64,
                "signature": alice.sign("alice"),
            }
            # Nonces go on after the restarts: a new registration still confirms.
            bob = make_account()
            assert http.post("/name/bob", json=bob.registration_body("bob")).status_code == 200
            assert server.wait_settled("bob")["state"] == "confirmed"
    finally:
        # uvicorn shuts down cleanly, then re-raises SIGTERM so its exit status says so.
        assert server.stop() in (0, -15)
    assert "Application shutdown complete" in server.log_tail(20_000)
    assert _processes_mentioning(str(data_dir)) == []  # the embedded node stopped too
