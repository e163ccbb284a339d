"""The error tree: each error carries its HTTP status and body; one handler renders them.

Status codes follow docs/PROTOCOL.md §1.1: a Jami client reads 401-499 on a
lookup as "this name is free" and 403/409 on a registration as "taken", so every
transient failure is a 503, never a 4xx.
"""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse

RETRY_AFTER_SECONDS = 5


class JaminsError(Exception):
    """Base of every error the API answers with; `status_code` and `body()` say how."""

    status_code: ClassVar[int] = 500
    message: ClassVar[str] = "internal error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.message
        super().__init__(self.detail)

    def body(self) -> dict[str, Any]:
        return {"error": self.detail}

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(JaminsError):
    status_code = 400
    message = "bad request"


class InvalidName(BadRequest):
    message = "invalid name"

    def body(self) -> dict[str, Any]:
        # Clients match on this exact text; the reason goes to the log only.
        return {"error": self.message}


class InvalidAddress(BadRequest):
    message = "invalid address"

    def body(self) -> dict[str, Any]:
        return {"error": self.message}


class ProofRejected(JaminsError):
    """The public key does not hash to addr, or the signature is not over this name."""

    status_code = 401
    message = "proof rejected"


class NameTaken(JaminsError):
    status_code = 409
    message = "name already taken"


class AddressHasName(JaminsError):
    """The Jami ID already owns another name (one name per address)."""

    status_code = 403
    message = "address already has a name"

    def __init__(self, *, name: str, addr: str) -> None:
        super().__init__()
        self.name = name
        self.addr = addr

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "name": self.name, "addr": "0x" + self.addr}


class NotFound(JaminsError):
    status_code = 404
    message = "not found"


class NameNotRegistered(NotFound):
    message = "name not registered"


class AddressNotRegistered(NotFound):
    message = "address not registered"


class RegistrationNotFound(NotFound):
    message = "this server never accepted a registration for this name"


class ServiceUnavailable(JaminsError):
    """A transient failure: the client must see an error, never "free" or "taken"."""

    status_code = 503
    message = "service unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}


class ChainUnavailable(ServiceUnavailable):
    message = "chain node unavailable"


class RegistrationPending(ServiceUnavailable):
    """The name's registration is not on chain yet, on a registrar others write too:
    another account may still take it first, so no answer can be given that will stay
    true (a client keeps a 200 forever, and reads a 404 as "free")."""

    message = "registration pending on chain"


class DatabaseUnavailable(ServiceUnavailable):
    message = "database unavailable"


class RegistrationsDisabled(ServiceUnavailable):
    message = "this server has no signer key: registrations are disabled"


class RegistrationsThrottled(ServiceUnavailable):
    """Admission control (app.services.admission): a 503, because a 429 reads as "taken"."""

    message = "too many registrations"

    def __init__(self, detail: str | None = None, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def error_response(exc: JaminsError, method: str) -> JSONResponse:
    """The answer to a request of `method` that failed with `exc`; registration answers
    (POST) also carry `"success": false`."""
    body = exc.body()
    if method == "POST":
        body = {"success": False, **body}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers())


async def handle_jamins_error(request: Request, exc: Exception) -> JSONResponse:
    """Render any JaminsError (the app's exception handler)."""
    assert isinstance(exc, JaminsError)
    return error_response(exc, request.method)
