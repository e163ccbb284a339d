"""What the routes of app/api answer for valid and malformed requests: the tables of cases,
against the application in this process (tests/server.py's InProcessApp on the session's
anvil and an SQLite file). test_api.py speaks real HTTP to real servers on both
databases, a few cases per route; the tables are here, where a case costs a request."""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api import ops, routes
from tests.conftest import unique_name
from tests.jami_keys import JamiAccount, account_pool
from tests.server import InProcessApp

JSON = "application/json"


@pytest.fixture(scope="module")
def account() -> JamiAccount:
    """One account for every refused body: nothing here registers it."""
    return account_pool(1)[0]


def register(http: httpx.Client, name: str, body: Any) -> httpx.Response:
    """POST as jamid does: raw JSON bytes, Content-Type: application/json."""
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    return http.post(f"/name/{name}", content=content, headers={"Content-Type": JSON})


# -- lookups ------------------------------------------------------------------------------

INVALID_NAME_PATHS = [
    pytest.param("/name/ab", id="too-short"),
    pytest.param("/name/" + "a" * 33, id="too-long"),
    pytest.param("/name/" + "%E5%B1%B1" * 11, id="33-bytes"),
    pytest.param("/name/a%2Fbc", id="encoded-slash"),
    pytest.param("/name/abc%2Fowner", id="encoded-slash-before-owner"),
    pytest.param("/name/a/b/c", id="slashes"),
    pytest.param("/name/ab%20c", id="space"),
    pytest.param("/name/abc.d", id="dot"),
    pytest.param("/name/%FFabc", id="bad-utf8"),
    pytest.param("/name/%F0%9F%98%80abc", id="emoji"),
    pytest.param("/name/p%D0%B0ypal", id="mixed-script"),
    pytest.param("/name/abc%E2%80%8Bd", id="zero-width-space"),
    pytest.param("/name/", id="empty"),
    pytest.param("/name/abc/", id="trailing-slash"),
    pytest.param("/name/ab/owner", id="short-owner"),
]


@pytest.mark.parametrize("raw_path", INVALID_NAME_PATHS)
def test_lookup_invalid_name_is_400(app_http: httpx.Client, raw_path: str) -> None:
    answer = app_http.get(raw_path)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid name"}


def test_lookup_no_redirect_on_trailing_slash(app_http: httpx.Client) -> None:
    answer = app_http.get("/name/someone/", follow_redirects=False)
    assert answer.status_code == 400


MALFORMED_ADDRS = [
    pytest.param("a" * 39, id="39-hex"),
    pytest.param("a" * 41, id="41-hex"),
    pytest.param("g" * 40, id="non-hex"),
    pytest.param("jami:", id="prefix-only"),
    pytest.param("sip:" + "a" * 40, id="other-scheme"),
    pytest.param("%20" + "a" * 40, id="leading-space"),
    pytest.param("a" * 40 + "/x", id="slash"),
    pytest.param("a" * 40 + "%0a", id="trailing-newline"),
]


@pytest.mark.parametrize("addr", MALFORMED_ADDRS)
def test_lookup_addr_malformed_is_400(app_http: httpx.Client, addr: str) -> None:
    answer = app_http.get(f"/addr/{addr}")
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid address"}


def test_registration_status_unknown_is_404(app_http: httpx.Client) -> None:
    answer = app_http.get(f"/registrations/{unique_name('never')}")
    assert answer.status_code == 404
    assert answer.json()["error"]


# -- registration bodies ------------------------------------------------------------------


def _with(body: dict[str, str], **changes: Any) -> dict[str, Any]:
    changed: dict[str, Any] = {**body, **changes}
    return {key: value for key, value in changed.items() if value is not None}


MALFORMED_BODIES = [
    pytest.param(lambda body: b"not json", "body is not valid JSON", id="not-json"),
    pytest.param(lambda body: b"", "body is not valid JSON", id="empty"),
    pytest.param(lambda body: b"[]", None, id="array"),
    pytest.param(lambda body: _with(body, addr=None), None, id="no-addr"),
    pytest.param(lambda body: _with(body, publickey=None), None, id="no-publickey"),
    pytest.param(lambda body: _with(body, signature=None), None, id="no-signature"),
    pytest.param(lambda body: _with(body, addr=12), None, id="addr-number"),
    pytest.param(lambda body: _with(body, addr="xyz"), "invalid address", id="addr-bad"),
    pytest.param(lambda body: _with(body, owner="12"), "invalid owner", id="owner-bad"),
    pytest.param(lambda body: _with(body, publickey="!!"), None, id="key-not-base64"),
    pytest.param(
        lambda body: _with(body, publickey=base64.b64encode(b"garbage").decode()),
        None,
        id="key-garbage",
    ),
    pytest.param(lambda body: _with(body, signature="@@"), None, id="sig-not-base64"),
    pytest.param(
        lambda body: _with(body, publickey="A" * 20_000), "request body too large", id="too-large"
    ),
]


@pytest.mark.parametrize(("mutate", "error"), MALFORMED_BODIES)
def test_register_malformed_body_is_400(
    app_http: httpx.Client, account: JamiAccount, mutate: Any, error: str | None
) -> None:
    name = unique_name("bad")
    answer = register(app_http, name, mutate(account.registration_body(name)))
    assert answer.status_code == 400
    body = answer.json()
    assert body["success"] is False
    if error is not None:
        assert body["error"] == error
    assert app_http.get(f"/name/{name}").status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Upper-" + "x", id="ascii-uppercase"),
        pytest.param("ab", id="too-short"),
        pytest.param("e\u0301lodie", id="nfd"),
        pytest.param("a b c", id="space"),
    ],
)
def test_register_invalid_name_is_400(
    app_http: httpx.Client, account: JamiAccount, name: str
) -> None:
    answer = app_http.post(
        "/name/" + httpx.URL(f"http://x/{name}").raw_path.decode()[1:],
        content=json.dumps(account.registration_body(name)),
        headers={"Content-Type": JSON},
    )
    assert answer.status_code == 400
    assert answer.json() == {"success": False, "error": "invalid name"}


# -- the hot path answers registrations as the route would --------------------------------


def _post_to_both(
    app_in_process: InProcessApp, path: str, content: bytes
) -> tuple[httpx.Response, httpx.Response]:
    """The same POST through the whole app (app.api.hot_path answers it) and through the
    app without its hot path (the FastAPI route and the middleware stack)."""
    answers = []
    for stack_only in (False, True):
        with app_in_process.client(stack_only=stack_only) as client:
            answers.append(client.post(path, content=content, headers={"Content-Type": JSON}))
    return answers[0], answers[1]


def _assert_same_answer(hot: httpx.Response, stack: httpx.Response) -> None:
    assert (hot.status_code, hot.content) == (stack.status_code, stack.content)
    assert [item for item in hot.headers.multi_items() if item[0] != "x-request-id"] == [
        item for item in stack.headers.multi_items() if item[0] != "x-request-id"
    ]
    assert hot.headers["x-request-id"] and stack.headers["x-request-id"]


@pytest.mark.parametrize(("mutate", "error"), MALFORMED_BODIES)
def test_refused_registration_answer_is_the_routes_byte_for_byte(
    app_in_process: InProcessApp, account: JamiAccount, mutate: Any, error: str | None
) -> None:
    name = unique_name("same")
    body = mutate(account.registration_body(name))
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    _assert_same_answer(*_post_to_both(app_in_process, f"/name/{name}", content))


@pytest.mark.parametrize(
    ("path", "make_body"),
    [
        pytest.param("/name/ab", lambda account: account.registration_body("ab"), id="short"),
        pytest.param("/name/%FFabc", lambda account: {}, id="bad-utf8"),
        pytest.param("/name/a%2Fbc", lambda account: {}, id="encoded-slash"),
        pytest.param("/name/", lambda account: {}, id="empty"),
        pytest.param(
            "/name/replayed",
            lambda account: account.registration_body("original"),
            id="replayed-signature",
        ),
    ],
)
def test_refused_name_or_proof_answer_is_the_routes_byte_for_byte(
    app_in_process: InProcessApp,
    account: JamiAccount,
    path: str,
    make_body: Callable[[JamiAccount], dict[str, str]],
) -> None:
    content = json.dumps(make_body(account)).encode()
    _assert_same_answer(*_post_to_both(app_in_process, path, content))


def test_accepted_and_taken_answers_are_the_routes_byte_for_byte(
    app_in_process: InProcessApp,
) -> None:
    first, second = account_pool(4)[2:4]
    name = unique_name("same")
    # Accepted by the hot path, then the same registration through the route: both 200.
    hot, stack = _post_to_both(
        app_in_process, f"/name/{name}", json.dumps(first.registration_body(name)).encode()
    )
    assert hot.status_code == 200
    _assert_same_answer(hot, stack)
    # Another ID asks for the same name: 409 both ways.
    hot, stack = _post_to_both(
        app_in_process, f"/name/{name}", json.dumps(second.registration_body(name)).encode()
    )
    assert hot.status_code == 409
    _assert_same_answer(hot, stack)


# -- hostile keys and signatures (test_proofs.py has the full table of keys) --------------


def _pem(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _jami_id(key: PublicKeyTypes) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(der).hexdigest()


def _body_with_key(
    account: JamiAccount, name: str, key: PublicKeyTypes, pem: bytes
) -> dict[str, str]:
    """The account's signature over `name`, with another key whose ID is `addr`."""
    return {
        "addr": _jami_id(key),
        "owner": "0" * 40,
        "signature": account.sign(name),
        "publickey": base64.b64encode(pem).decode(),
    }


def _pem_with_garbage(account: JamiAccount, name: str) -> dict[str, str]:
    body = account.registration_body(name)
    pem = base64.b64decode(body["publickey"]).rstrip(b"\0")
    body["publickey"] = base64.b64encode(pem + b"\nAAAA garbage\n").decode()
    return body


def _huge_key(account: JamiAccount, name: str) -> dict[str, str]:
    # An RSA-16384 modulus (not a real key: no primes needed to be refused for its size).
    modulus = (1 << 16383) | secrets.randbits(16383) | 1
    key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    return _body_with_key(account, name, key, _pem(key))


def _ec_key(account: JamiAccount, name: str) -> dict[str, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    key = private.public_key()
    body = _body_with_key(account, name, key, _pem(key))
    signature = private.sign(name.encode(), ec.ECDSA(hashes.SHA512()))
    body["signature"] = base64.b64encode(signature).decode()
    return body


def _signed_by_another_key(account: JamiAccount, name: str) -> dict[str, str]:
    # The account's key and ID, with a valid signature over the name by someone else.
    body = account.registration_body(name)
    other = account_pool(2)[1].private_key
    forged = other.sign(name.encode(), padding.PKCS1v15(), hashes.SHA512())
    body["signature"] = base64.b64encode(forged).decode()
    return body


def _signature_over_name_with_prefix(account: JamiAccount, name: str) -> dict[str, str]:
    body = account.registration_body(name)
    body["signature"] = account.sign(name + "x")
    return body


def _key_of_another_account(account: JamiAccount, name: str) -> dict[str, str]:
    # Squatting someone else's reverse slot: the signature and key are ours, the ID theirs.
    body = account.registration_body(name)
    body["addr"] = account_pool(2)[1].jami_id
    return body


def _signature_over_another_name(account: JamiAccount, name: str) -> dict[str, str]:
    return account.registration_body(unique_name("orig"))


@pytest.mark.parametrize(
    ("make_body", "status"),
    [
        pytest.param(_pem_with_garbage, 400, id="pem-garbage-after"),
        pytest.param(_huge_key, 400, id="rsa-16384-key"),
        pytest.param(_ec_key, 400, id="ec-key"),
        pytest.param(_signed_by_another_key, 401, id="signature-by-another-key"),
        pytest.param(_signature_over_name_with_prefix, 401, id="signature-over-longer-name"),
        pytest.param(_key_of_another_account, 401, id="key-of-another-account"),
        pytest.param(_signature_over_another_name, 401, id="replayed-signature"),
    ],
)
def test_register_hostile_body_is_refused(
    app_http: httpx.Client,
    account: JamiAccount,
    make_body: Callable[[JamiAccount, str], dict[str, str]],
    status: int,
) -> None:
    name = unique_name("hostile")
    body = make_body(account, name)
    answer = app_http.post(f"/name/{name}", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["success"] is False
    assert app_http.get(f"/name/{name}").status_code == 404
    assert app_http.get(f"/addr/{body['addr']}").status_code == 404


# -- protocol hygiene ---------------------------------------------------------------------


def test_unknown_route_answers_json(app_http: httpx.Client) -> None:
    answer = app_http.get("/nothing/here")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == JSON


def test_put_name_answers_405_allowing_get_and_post(app_http: httpx.Client) -> None:
    answer = app_http.put("/name/x", json={})
    assert answer.status_code == 405
    allowed = {method.strip() for method in answer.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/name/nobody-here", "/addr/" + "ab" * 20])
def test_head_answers_like_get_without_body(app_http: httpx.Client, path: str) -> None:
    got = app_http.get(path)
    head = app_http.head(path)
    assert head.status_code == got.status_code
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


def test_openapi_documents_real_status_codes(app_http: httpx.Client) -> None:
    spec = app_http.get("/openapi.json").json()
    post = spec["paths"]["/name/{name}"]["post"]["responses"]
    assert {"200", "400", "401", "403", "409", "503"} <= set(post)
    assert "422" not in post
    get = spec["paths"]["/name/{name}"]["get"]["responses"]
    assert {"200", "400", "404", "503"} <= set(get)
    assert "422" not in get
    assert "/registrations/{name}" in spec["paths"]
    assert app_http.get("/docs").status_code == 200


# -- how the routes run -------------------------------------------------------------------


def _callables(dependant: Dependant) -> list[Callable[..., Any]]:
    found = [dependant.call] if dependant.call is not None else []
    for dependency in dependant.dependencies:
        found += _callables(dependency)
    return found


def test_no_route_or_dependency_of_ours_runs_in_a_worker_thread() -> None:
    """FastAPI runs a plain `def` endpoint or dependency in a worker thread: a hand-off per
    request, and a thread start per concurrent request in a burst (a burst of 30
    registrations started 29 threads for two one-line dependencies)."""
    ours = [
        route
        for router in (routes.router, ops.router)
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    assert len(ours) >= 10
    in_threads = [
        f"{route.path}: {function.__qualname__}"
        for route in ours
        for function in _callables(route.dependant)
        if not inspect.iscoroutinefunction(function)
    ]
    assert in_threads == []
