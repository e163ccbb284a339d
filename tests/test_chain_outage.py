"""The chain node goes away: known names keep resolving from SQL, everything the server
cannot know is a 503 (never a 404, which Jami apps read as "free"), and it recovers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.chain.anvil import AnvilNode
from tests.conftest import ChainNode, funded_key, unique_name
from tests.geth import GethNode
from tests.jami_keys import make_account
from tests.server import ServerProcess


@pytest.fixture(params=["anvil", "geth"])
def own_node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChainNode]:
    """A node of this test's own that keeps its chain (and port) across a restart."""
    node: ChainNode
    if request.param == "anvil":
        node = AnvilNode(
            binary=request.getfixturevalue("anvil_binary"), state_file=tmp_path / "state.json"
        )
    else:
        node = GethNode(tmp_path / "geth", binary=request.getfixturevalue("geth_binary"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_chain_outage_serves_known_names_and_503_for_the_rest(
    own_node: ChainNode, tmp_path: Path
) -> None:
    server = ServerProcess(
        data_dir=tmp_path / "server",
        env={
            "JAMINS_RPC_URL": own_node.url,
            "JAMINS_CHAIN_ID": str(own_node.chain_id),
            "JAMINS_DEPLOY": "true",
            "JAMINS_SIGNER_KEY": funded_key(own_node),
            "JAMINS_RPC_TIMEOUT": "2",
            "JAMINS_RECEIPT_POLL_SECONDS": "0.2",
        },
    )
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            known, account = unique_name("known"), make_account()
            assert http.post(f"/name/{known}", json=account.registration_body(known)).json() == {
                "success": True
            }
            assert server.wait_settled(known)["state"] == "confirmed"

            own_node.stop()

            assert http.get(f"/name/{known.upper()}").json()["name"] == known
            assert http.get(f"/addr/{account.jami_id}").json() == {"name": known}
            for path in (f"/name/{unique_name('unknown')}", f"/addr/{secrets.token_hex(20)}"):
                answer = http.get(path)
                assert answer.status_code == 503, path
                assert answer.headers["retry-after"]
                assert answer.json() == {"error": "chain node unavailable"}
            newcomer, other = unique_name("later"), make_account()
            answer = http.post(f"/name/{newcomer}", json=other.registration_body(newcomer))
            assert answer.status_code == 503
            assert answer.json() == {"success": False, "error": "chain node unavailable"}

            own_node.start()  # same port, same saved state

            assert http.get(f"/name/{unique_name('unknown')}").status_code == 404
            answer = http.post(f"/name/{newcomer}", json=other.registration_body(newcomer))
            assert answer.status_code == 200
            assert server.wait_settled(newcomer)["state"] == "confirmed"
    finally:
        server.stop()
