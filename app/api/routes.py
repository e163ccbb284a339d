"""The JamiNS routes (PROTOCOL.md §1) and the registration status extension."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import ValidationError

from app import names
from app.api.schemas import (
    AddrAnswer,
    NameAnswer,
    OwnerAnswer,
    PublicKeyAnswer,
    RegisterAnswer,
    RegistrationStatus,
    SignatureAnswer,
    errors,
)
from app.errors import BadRequest, InvalidAddress, InvalidName, NotFound
from app.runtime import server_state
from app.services.registry import NameService, RegistrationRequest

MAX_BODY_BYTES = 16 * 1024  # a real RSA-4096 registration is 1884 bytes

router = APIRouter()


# Dependencies are coroutines: FastAPI runs a plain `def` in a worker thread, a thread
# hand-off (and, in a burst, a thread start) per request for a few attribute reads.


async def get_service(request: Request) -> NameService:
    return server_state(request.app).started().service


ServiceDep = Annotated[NameService, Depends(get_service)]


def _name_from_raw_path(request: Request, base: str, suffix: str = "") -> str:
    """The name segment, percent-decoded from the raw path.

    Starlette routes on the decoded path, where `a%2Fowner` would read as `a/owner`; the
    raw bytes keep an encoded slash inside the name, where the name policy refuses it.
    """
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    segment = raw.split(b"?", 1)[0].removeprefix(base.encode())
    if suffix:
        segment = segment.removesuffix(suffix.encode())
    try:
        return names.decode_path_segment(segment)
    except names.BadName as exc:
        raise InvalidName() from exc


async def lookup_name_param(request: Request) -> str:
    return _name_from_raw_path(request, "/name/")


async def registration_name_param(request: Request) -> str:
    return _name_from_raw_path(request, "/registrations/")


async def addr_param(request: Request) -> str:
    """The Jami ID segment from the raw path: Starlette's route pattern ends in `$`, which
    matches before a trailing newline, so the decoded path parameter would drop a `%0a`."""
    try:
        return _name_from_raw_path(request, "/addr/")
    except InvalidName as exc:
        raise InvalidAddress() from exc


# Declared for OpenAPI ("Try it out"); the routes read the name from the raw path.
NamePath = Annotated[str, Path(description="The name, percent-encoded UTF-8, any case.")]


@router.get(
    "/name/{name}/owner",
    response_model=OwnerAnswer,
    responses=errors(400, 404, 503),
    summary="The Ethereum owner of a name",
)
async def get_owner(name: NamePath, request: Request, service: ServiceDep) -> OwnerAnswer:
    record = await service.lookup_name(_name_from_raw_path(request, "/name/", "/owner"))
    return OwnerAnswer(name=record.name, owner="0x" + record.owner)


@router.get(
    "/name/{name}/publickey",
    response_model=PublicKeyAnswer,
    responses=errors(400, 404, 503),
    summary="The public key a name was registered with",
)
async def get_publickey(name: NamePath, request: Request, service: ServiceDep) -> PublicKeyAnswer:
    record = await service.lookup_name(_name_from_raw_path(request, "/name/", "/publickey"))
    if record.publickey is None:
        raise NotFound("no public key for this name")
    return PublicKeyAnswer(name=record.name, publickey=record.publickey)


@router.get(
    "/name/{name}/signature",
    response_model=SignatureAnswer,
    responses=errors(400, 404, 503),
    summary="The signature a name was registered with",
)
async def get_signature(name: NamePath, request: Request, service: ServiceDep) -> SignatureAnswer:
    record = await service.lookup_name(_name_from_raw_path(request, "/name/", "/signature"))
    if record.signature is None:
        raise NotFound("no signature for this name")
    return SignatureAnswer(name=record.name, signature=record.signature)


@router.get(
    "/name/{name:path}",
    response_model=NameAnswer,
    response_model_exclude_none=True,
    responses=errors(400, 404, 503),
    summary="Look a name up (case-insensitive)",
)
async def get_name(
    name: str, service: ServiceDep, raw_name: Annotated[str, Depends(lookup_name_param)]
) -> Response:
    return Response(await service.name_body(raw_name), media_type="application/json")


@router.post(
    "/name/{name:path}",
    response_model=RegisterAnswer,
    responses=errors(400, 401, 403, 409, 503, registration=True),
    summary="Register a name for a Jami ID",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RegistrationRequest.model_json_schema()}},
        }
    },
)
async def post_name(
    name: str,
    request: Request,
    service: ServiceDep,
    raw_name: Annotated[str, Depends(lookup_name_param)],
) -> RegisterAnswer:
    # app.api.hot_path answers registrations itself, through accept_registration too:
    # this runs for the paths it hands on, whose raw form does not start with /name/ (an
    # encoded slash: `/name%2Fabc` routes here and is refused as a name).
    await accept_registration(
        service,
        raw_name,
        declared_length=request.headers.get("content-length"),
        chunks=request.stream(),
        client=request.client.host if request.client else None,
    )
    return RegisterAnswer()


async def accept_registration(
    service: NameService,
    raw_name: str,
    *,
    declared_length: str | None,
    chunks: AsyncIterator[bytes],
    client: str | None,
) -> None:
    """The work of POST /name/NAME once the name is decoded: read the body (`chunks`,
    `declared_length` its Content-Length), parse it and register; raises what to answer."""
    body = await _read_body(declared_length, chunks)
    try:
        registration = RegistrationRequest.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(_first_problem(exc)) from exc
    await service.register(raw_name, registration, client=client)


@router.get(
    "/addr/{addr:path}",
    response_model=AddrAnswer,
    responses=errors(400, 404, 503),
    summary="Reverse lookup: the name of a Jami ID",
)
async def get_addr(
    addr: str, service: ServiceDep, raw_addr: Annotated[str, Depends(addr_param)]
) -> Response:
    return Response(await service.addr_body(raw_addr), media_type="application/json")


@router.get(
    "/registrations/{name:path}",
    response_model=RegistrationStatus,
    responses=errors(400, 404, 503),
    summary="What became of a registration this server accepted",
)
async def get_registration(
    name: str,
    service: ServiceDep,
    raw_name: Annotated[str, Depends(registration_name_param)],
) -> RegistrationStatus:
    return await service.registration_status(raw_name)


async def _read_body(declared: str | None, chunks: AsyncIterator[bytes]) -> bytes:
    """The request body, refused (400, never 413: clients read 413 as "taken") past
    MAX_BODY_BYTES."""
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise BadRequest("request body too large")
    body: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest("request body too large")
        body.append(chunk)
    return b"".join(body)


def _first_problem(exc: ValidationError) -> str:
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem.get("loc", ()))
    if problem.get("type") == "json_invalid":
        return "body is not valid JSON"
    return f"invalid body: {where} {problem.get('msg', '')}".strip()


@router.get("/healthz", summary="Liveness, with the chain and registrar served")
async def healthz(service: ServiceDep) -> dict[str, object]:
    return service.describe()
