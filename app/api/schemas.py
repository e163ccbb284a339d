"""Response bodies, as documented in OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# One definition of the registration status, shared with `jamins status`.
from app.services.records import RegistrationStatus as RegistrationStatus


class NameAnswer(BaseModel):
    name: str = Field(description="The registered name, byte for byte as signed.")
    addr: str = Field(description="The Jami ID: 0x + 40 lowercase hex.")
    publickey: str | None = Field(default=None, description="As received at registration.")
    signature: str | None = Field(default=None, description="As received at registration.")


class AddrAnswer(BaseModel):
    name: str


class OwnerAnswer(BaseModel):
    name: str
    owner: str = Field(description="Ethereum owner: 0x + 40 lowercase hex (zero when none).")


class PublicKeyAnswer(BaseModel):
    name: str
    publickey: str


class SignatureAnswer(BaseModel):
    name: str
    signature: str


class RegisterAnswer(BaseModel):
    success: Literal[True] = True


class ErrorAnswer(BaseModel):
    error: str


class RegistrationErrorAnswer(BaseModel):
    success: Literal[False] = False
    error: str
    name: str | None = Field(default=None, description="With 403: the address's name.")
    addr: str | None = Field(default=None, description="With 403: the address.")


def errors(*codes: int, registration: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these status codes."""
    meaning = {
        400: "Invalid name, address or body",
        401: "The key does not hash to addr, or the signature is not over this name",
        403: "This address already has another name",
        404: "Not registered (a Jami client reads any 4xx but 400 as 'free')",
        409: "The name belongs to another address",
        503: "Chain node or database unavailable: retry later (never a 4xx, which "
        "clients read as 'free')",
    }
    model = RegistrationErrorAnswer if registration else ErrorAnswer
    return {code: {"model": model, "description": meaning[code]} for code in codes}
