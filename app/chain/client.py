"""The JSON-RPC connection to the chain node: timeouts, Clique headers, batching, and the
translation of node errors into what the writer and indexer can act on.

Each translation below is something geth 1.13.15 (the Jami chain's node) does and anvil
does not, seen on the real binary (tests/test_geth.py):

* a fresh node answers "transaction indexing is in progress" for an unknown transaction
  until its first index run: not yet known (`receipt` → None), and transient otherwise;
* a node that is not an archive answers "missing trie node" for state it no longer keeps:
  `StateUnavailable`, so that callers can decide from something else than that state;
* a batch of more than 1,000 requests is refused as a whole ("batch too large"): batches
  are sent in chunks of at most `BATCH_LIMIT`;
* receipts of blocks before Byzantium carry `root` instead of `status`: derived here;
* a chain on the Jami fork schedule refuses EIP-155 transactions before block 3 ("invalid
  transaction v, r, s values", although its pool keeps them) and cannot run the registrar's
  code before block 5 ("invalid opcode: SHR"): transient (`ChainUnavailable`), so that no
  registration is failed for good because the chain is young;
* `--rpc.txfeecap` (1 ether by default) refuses gas x price above it: `FeeCapExceeded`, an
  operator's setting to fix, which must not fail the registration.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.datastructures import AttributeDict
from web3.exceptions import (
    BadResponseFormat,
    ProviderConnectionError,
    RequestTimedOut,
    TransactionNotFound,
    Web3RPCError,
)
from web3.middleware import ExtraDataToPOAMiddleware
from web3.types import BlockIdentifier

from app.errors import ChainUnavailable
from app.senders import Senders

logger = logging.getLogger(__name__)

T = TypeVar("T")


# geth's default --rpc.batch-request-limit: a longer batch gets one "batch too large" error.
BATCH_LIMIT = 1000
# Raw batches on their way at once; more wait and go together (ChainClient.rpc_batch).
BATCHES_IN_FLIGHT = 2


class ChainRejected(Exception):
    """The node answered, and refused: an RPC error such as "nonce too low"."""


class StateUnavailable(ChainRejected):
    """The node no longer has the state at the block asked for (not an archive node:
    geth keeps the last 128 blocks' states, fewer after a restart)."""


class FeeCapExceeded(ChainRejected):
    """The node's --rpc.txfeecap (geth: 1 ether) refuses gas x price: the operator's gas
    price is at fault, not the transaction's content, so this must not settle it."""


class TxIndexing(ChainUnavailable):
    """The node has not finished indexing transactions: it cannot say yet whether it
    knows one."""


_MISSING_STATE = ("missing trie node", "historical state", "state not available")
# Errors that depend on the chain's (or the node's) condition, not on what was asked: the
# same request succeeds later, so they must never settle a registration.
_TRANSIENT = {
    "invalid transaction v, r, s values": "the chain has not reached its EIP-155 block yet",
    "invalid opcode": "the chain has not reached the fork the registrar's code needs yet",
}


def translate_error(message: str) -> Exception:
    """The exception for a node's RPC error `message` (see the module docstring)."""
    lowered = message.lower()
    if "transaction indexing is in progress" in lowered:
        return TxIndexing("the chain node is still indexing transactions")
    if any(marker in lowered for marker in _MISSING_STATE):
        return StateUnavailable(message)
    if "exceeds the configured cap" in lowered:
        return FeeCapExceeded(
            f"{message}: lower JAMINS_GAS_PRICE_WEI or raise the node's --rpc.txfeecap"
        )
    for marker, meaning in _TRANSIENT.items():
        if marker in lowered:
            return ChainUnavailable(f"{meaning} ({message})")
    return ChainRejected(message)


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


class JsonRpcTransport(Protocol):
    """Sends one JSON-RPC request or batch (each without "jsonrpc" and "id": the transport
    numbers them) and returns the node's decoded answer."""

    async def send(self, payload: dict[str, Any] | list[dict[str, Any]]) -> Any: ...

    async def close(self) -> None: ...


class HttpTransport:
    """JSON-RPC over HTTP on kept-alive connections.

    web3.py's provider opens a TCP connection per request (its connector has
    `force_close=True`) and takes a threading lock through a thread pool before each one:
    together about a millisecond of the event loop's time and a thread hand-off for every
    chain read. The reads that lookups and registrations wait for go through here instead;
    web3 keeps the rest (transactions, receipts, the writer's and provisioning's calls).

    A kept-alive connection the node closed meanwhile (a restart, its idle timeout) fails
    on first use: the request is then sent once more, on a new connection. Every request
    here is a read (or anvil's evm_mine, which the embedded node's clock repeats anyway)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    def _http_session(self) -> aiohttp.ClientSession:
        """The session of this transport, made on first use: on the event loop of its
        client (the runtime's, or provisioning's), which closes it (`close`)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), json_serialize=json.dumps
            )
        return self._session

    def _number(self, call: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": next(self._ids), **call}

    async def send(self, payload: dict[str, Any] | list[dict[str, Any]]) -> Any:
        body = (
            [self._number(call) for call in payload]
            if isinstance(payload, list)
            else self._number(payload)
        )
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await self._post(body)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    # A kept-alive connection the node had closed: once more, afresh.
                    return await self._post(body)
        except TimeoutError as exc:
            raise ChainUnavailable("chain node timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ChainUnavailable() from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # Not a JSON-RPC answer (a proxy's error page): the node is not reachable.
            raise ChainUnavailable("chain node sent a malformed answer") from exc

    async def _post(self, body: Any) -> Any:
        async with self._http_session().post(self.url, json=body) as answer:
            if answer.status != 200:
                # A proxy's error page, or a node that refuses the request as a whole.
                logger.info("chain node answered HTTP %d", answer.status)
                raise ChainUnavailable()
            return json.loads(await answer.read())

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _forget(request: asyncio.Future[Any]) -> None:
    """The end of a request no one waits for any more: its error is not worth a warning."""
    if not request.cancelled():
        request.exception()


class ChainClient:
    """One node connection; every call is bounded and failures become ChainUnavailable."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.w3 = make_web3(url, timeout)
        # The reads lookups and registrations wait for (raw eth_calls, logs, blocks).
        self.transport: JsonRpcTransport = HttpTransport(url, timeout=timeout)
        # Batches waiting for the one on its way (rpc_batch), and the task that sends them.
        self._waiting: list[_Waiting] = []
        self._senders = Senders(BATCHES_IN_FLIGHT)

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await a web3 call; unreachable or slow node → ChainUnavailable, RPC error →
        ChainRejected."""
        # web3's request runs to its own end (aiohttp's timeout bounds it): cancelling it
        # while it waits for web3's process-wide session lock leaves that lock held for
        # ever (web3.py issue #3867). Only this wait is cancelled or timed out.
        request = asyncio.ensure_future(awaitable)
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(request)
        except TimeoutError as exc:
            raise ChainUnavailable("chain node timed out") from exc
        except (aiohttp.ClientError, ProviderConnectionError, RequestTimedOut, OSError) as exc:
            raise ChainUnavailable() from exc
        except (json.JSONDecodeError, BadResponseFormat) as exc:
            # Not a JSON-RPC answer (a proxy's error page): the node is not reachable.
            raise ChainUnavailable("chain node sent a malformed answer") from exc
        except Web3RPCError as exc:
            raise translate_error(_rpc_message(exc)) from exc
        finally:
            if not request.done():
                request.add_done_callback(_forget)

    async def rpc(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC call (no web3 formatting): the `result`, or ChainRejected."""
        response = await self.transport.send({"method": method, "params": params})
        if not _is_answer(response):
            raise ChainUnavailable("chain node sent a malformed answer")
        if "error" in response:
            raise translate_error(_error_text(response["error"]))
        return response.get("result")

    async def rpc_batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Raw JSON-RPC calls; results in order, or ChainRejected.

        Batches asked for while BATCHES_IN_FLIGHT requests are on their way go together
        in the next HTTP request (up to BATCH_LIMIT calls): a burst of registrations, or
        of lookups the answer cache cannot answer, costs the node and the event loop a few
        requests, not one each. More than one in flight, so that one slow answer does not
        hold every other read behind it. A longer list goes alone, in requests of
        BATCH_LIMIT calls, one after the other."""
        if len(calls) > BATCH_LIMIT:
            results: list[Any] = []
            for start in range(0, len(calls), BATCH_LIMIT):
                chunk = calls[start : start + BATCH_LIMIT]
                results += _results(await self._send_batch(chunk))
            return results
        waiting = _Waiting(calls, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._senders.start(self._send_waiting)
        return await waiting.answered

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch: list[_Waiting] = []
                size = 0
                while self._waiting and size + len(self._waiting[0].calls) <= BATCH_LIMIT:
                    waiting = self._waiting.pop(0)
                    if not waiting.answered.done():  # its caller is gone
                        batch.append(waiting)
                        size += len(waiting.calls)
                if batch:
                    await self._answer(batch)
        except BaseException:
            # Cancelled (the loop is closing): no caller waits for ever.
            for waiting in self._waiting:
                if not waiting.answered.done():
                    waiting.answered.set_exception(ChainUnavailable())
            self._waiting.clear()
            raise

    async def _answer(self, batch: list[_Waiting]) -> None:
        try:
            responses = await self._send_batch([call for one in batch for call in one.calls])
        except Exception as exc:
            for waiting in batch:
                if not waiting.answered.done():
                    waiting.answered.set_exception(exc)
            return
        except BaseException:
            for waiting in batch:
                if not waiting.answered.done():
                    waiting.answered.set_exception(ChainUnavailable())
            raise
        start = 0
        for waiting in batch:
            mine = responses[start : start + len(waiting.calls)]
            start += len(waiting.calls)
            if waiting.answered.done():
                continue
            try:
                waiting.answered.set_result(_results(mine))
            except Exception as exc:  # an error answer to one of its own calls
                waiting.answered.set_exception(exc)

    async def _send_batch(self, calls: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
        """One HTTP request of `calls`: their answers, in the order of `calls`."""
        responses = await self.transport.send(
            [{"method": method, "params": params} for method, params in calls]
        )
        if isinstance(responses, dict) and "error" in responses:
            raise translate_error(_error_text(responses["error"]))  # refused as a whole
        if not isinstance(responses, list) or not all(map(_is_answer, responses)):
            raise ChainUnavailable("chain node sent a malformed answer")
        if len(responses) != len(calls):
            # geth answers a batch it refuses as a whole with a one-element array.
            if len(responses) == 1 and "error" in responses[0]:
                raise translate_error(_error_text(responses[0]["error"]))
            raise ChainUnavailable("the node answered a batch partly")
        # JSON-RPC lets a node answer a batch in any order: the ids put it back.
        return sorted(responses, key=_id_order)

    async def chain_id(self) -> int:
        return await self.call(self.w3.eth.chain_id)

    async def block_number(self) -> int:
        """The head's number, over the raw transport: the indexer, the chain watch and the
        readiness check ask it every poll, and web3's request costs several times more."""
        result = await self.rpc("eth_blockNumber", [])
        try:
            return int(result, 16)
        except (TypeError, ValueError) as exc:
            raise ChainUnavailable("chain node sent a malformed answer") from exc

    async def get_block(self, block: BlockIdentifier = "latest") -> Any:
        return await self.call(self.w3.eth.get_block(block))

    async def receipt(self, tx_hash: str) -> Any | None:
        """The transaction's receipt, or None while it is not mined (or not indexed yet).

        A receipt always has `status`: before Byzantium geth gives the state `root`
        instead, and then a failed transaction is one that used all its gas (there was no
        REVERT: every failure consumed the gas limit)."""
        try:
            receipt: Any = await self.call(self.w3.eth.get_transaction_receipt(tx_hash))  # type: ignore[arg-type]
        except TxIndexing:
            return None
        except ChainRejected as exc:
            if isinstance(exc.__cause__, TransactionNotFound):
                return None
            raise
        if receipt.get("status") is None:
            tx = await self.call(self.w3.eth.get_transaction(tx_hash))  # type: ignore[arg-type]
            status = 0 if int(receipt["gasUsed"]) >= int(tx["gas"]) else 1
            receipt = AttributeDict({**receipt, "status": status})
        return receipt

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
        await self.transport.close()
        provider = self.w3.provider
        if isinstance(provider, AsyncHTTPProvider):
            await provider.disconnect()


@dataclass
class _Waiting:
    """A caller's batch of calls, waiting to be sent with the others of the moment."""

    calls: list[tuple[str, list[Any]]]
    answered: asyncio.Future[list[Any]]


def _results(responses: list[dict[str, Any]]) -> list[Any]:
    """The results of one caller's answers, or the exception for its first error."""
    results = []
    for response in responses:
        if "error" in response:
            raise translate_error(_error_text(response["error"]))
        results.append(response.get("result"))
    return results


def _is_answer(response: Any) -> bool:
    """Whether `response` is a JSON-RPC answer: an object with a result or an error. Any
    other JSON (a proxy's status object) must not read as a null result: "no such block",
    "no receipt yet"."""
    return isinstance(response, dict) and ("result" in response or "error" in response)


def _id_order(response: dict[str, Any]) -> int:
    identifier = response.get("id")
    return identifier if isinstance(identifier, int) else -1


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
