"""The JSON-RPC connection to the chain node: timeouts, Clique headers, error translation."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    BadResponseFormat,
    ProviderConnectionError,
    RequestTimedOut,
    TransactionNotFound,
    Web3RPCError,
)
from web3.middleware import ExtraDataToPOAMiddleware
from web3.types import BlockIdentifier, RPCEndpoint

from app.errors import ChainUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ChainRejected(Exception):
    """The node answered, and refused: an RPC error such as "nonce too low"."""


class ChainIdMismatch(RuntimeError):
    """The node serves another chain than the one configured."""


def make_web3(url: str, timeout: float) -> AsyncWeb3[AsyncHTTPProvider]:
    """An AsyncWeb3 on `url` that accepts Clique headers and gives up after `timeout` s."""
    provider = AsyncHTTPProvider(
        url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
        # Retrying is the caller's decision: a lookup must answer within its bound.
        exception_retry_configuration=None,
    )
    w3 = AsyncWeb3(provider)
    # Clique puts the signer's seal in a 97-byte (or longer) extraData, which web3.py
    # refuses unless this middleware moves it aside.
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


class ChainClient:
    """One node connection; every call is bounded and failures become ChainUnavailable."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.w3 = make_web3(url, timeout)

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await a web3 call; unreachable or slow node → ChainUnavailable, RPC error →
        ChainRejected."""
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except TimeoutError as exc:
            raise ChainUnavailable("chain node timed out") from exc
        except (aiohttp.ClientError, ProviderConnectionError, RequestTimedOut, OSError) as exc:
            raise ChainUnavailable() from exc
        except (json.JSONDecodeError, BadResponseFormat) as exc:
            # Not a JSON-RPC answer (a proxy's error page): the node is not reachable.
            raise ChainUnavailable("chain node sent a malformed answer") from exc
        except Web3RPCError as exc:
            raise ChainRejected(_rpc_message(exc)) from exc

    async def rpc(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC call (no web3 formatting): the `result`, or ChainRejected."""
        response = await self.call(self.w3.provider.make_request(RPCEndpoint(method), params))
        if "error" in response:
            raise ChainRejected(_error_text(response["error"]))
        return response.get("result")

    async def rpc_batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Raw JSON-RPC calls in one HTTP request; results in order, or ChainRejected."""
        if not calls:
            return []
        batch = [(RPCEndpoint(method), params) for method, params in calls]
        responses = await self.call(self.w3.provider.make_batch_request(batch))
        if not isinstance(responses, list):  # the node refused the batch as a whole
            raise ChainRejected(_error_text(responses.get("error")))
        results = []
        for response in responses:
            if "error" in response:
                raise ChainRejected(_error_text(response["error"]))
            results.append(response.get("result"))
        if len(results) != len(calls):
            raise ChainUnavailable("the node answered a batch partly")
        return results

    async def chain_id(self) -> int:
        return await self.call(self.w3.eth.chain_id)

    async def block_number(self) -> int:
        return await self.call(self.w3.eth.block_number)

    async def get_block(self, block: BlockIdentifier = "latest") -> Any:
        return await self.call(self.w3.eth.get_block(block))

    async def receipt(self, tx_hash: str) -> Any | None:
        """The transaction's receipt, or None while it is not mined."""
        try:
            return await self.call(self.w3.eth.get_transaction_receipt(tx_hash))  # type: ignore[arg-type]
        except ChainRejected as exc:
            if isinstance(exc.__cause__, TransactionNotFound):
                return None
            raise

    async def transaction_known(self, tx_hash: str) -> bool:
        """Whether the node holds the transaction, in its pool or in a block."""
        try:
            await self.call(self.w3.eth.get_transaction(tx_hash))  # type: ignore[arg-type]
        except ChainRejected as exc:
            if isinstance(exc.__cause__, TransactionNotFound):
                return False
            raise
        return True

    async def check_chain_id(self, expected: int) -> None:
        actual = await self.chain_id()
        if actual != expected:
            raise ChainIdMismatch(
                f"the node at {self.url} serves chain id {actual}, not the configured "
                f"{expected} (JAMINS_CHAIN_ID)"
            )

    async def close(self) -> None:
        provider = self.w3.provider
        if isinstance(provider, AsyncHTTPProvider):
            await provider.disconnect()


def _error_text(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(error)


def _rpc_message(exc: Web3RPCError) -> str:
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict):
        error = response.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(exc)
