"""Operations: Prometheus metrics, the readiness checks, and the signer-balance watch.

Everything here reads the state the lifespan built (`app.state`); `ops_lifespan` starts the
balance watch after the main lifespan and stops it before. Counters the service keeps
(cache outcomes) and the state of the writer and indexer are read when /metrics is
scraped; the chain head and the pending registrations are refreshed then too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.chain.client import ChainClient, ChainRejected
from app.errors import ServiceUnavailable
from app.models import PENDING, Registration
from app.settings import Settings
from app.workers.supervisor import Supervisor
from app.workers.writer import GasPolicy, current_gas_price

logger = logging.getLogger(__name__)

REGISTRATION_GAS = 1_400_000  # what one registration with an RSA-4096 key costs
# A method is any token a client sends: label only these, the rest as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


class Metrics:
    """The app's metric registry (one per app, so several apps in a process never clash)."""

    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "jamins_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "jamins_http_request_duration_seconds",
            "Time to answer a request, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.chain_head = Gauge(
            "jamins_chain_head_block",
            "The chain node's latest block.",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.chain_up = Gauge(
            "jamins_chain_up",
            "1 when the chain node answered the last scrape or balance check.",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.pending = Gauge(
            "jamins_registrations_pending",
            "Registrations accepted and not yet confirmed or failed.",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.balance = Gauge(
            "jamins_signer_balance_wei",
            "The signer account's balance.",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.gas_price = Gauge(
            "jamins_gas_price_wei",
            "Gas price of registrations.",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.registrations_left = Gauge(
            "jamins_signer_registrations_left",
            f"Registrations the balance still pays for ({REGISTRATION_GAS} gas each).",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.registrations_paused = Gauge(
            "jamins_registrations_paused",
            "1 while registrations answer 503 because the signer cannot pay for one more.",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.registry.register(LiveCollector(app))


def exposition(app: FastAPI) -> bytes:
    """The /metrics body. Under `--workers N` (PROMETHEUS_MULTIPROC_DIR set by `jamins
    serve`) counters, histograms and gauges are merged from every worker's files; the
    live values (LiveCollector) are the answering worker's."""
    metrics: Metrics = app.state.metrics
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(metrics.registry)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(LiveCollector(app))
    return generate_latest(registry)


class LiveCollector(Collector):
    """Values read from the running service at scrape time."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        service = getattr(self.app.state, "service", None)
        cache = CounterMetricFamily(
            "jamins_cache_lookups",
            "Lookups by kind (name, addr) and how they were answered: hit (SQL), "
            "negative_hit (known free), miss (read from the chain).",
            labels=["kind", "result"],
        )
        for (kind, result), count in sorted(getattr(service, "cache_counts", {}).items()):
            cache.add_metric([kind, result], count)
        yield cache

        writer_state = GaugeMetricFamily(
            "jamins_tx_writer_state",
            "1 for the transaction writer's current state (none: no writer on this server).",
            labels=["state"],
        )
        writer = current_writer(self.app)
        writer_state.add_metric([writer_state_label(writer)], 1)
        yield writer_state

        indexer = current_indexer(self.app)
        lag = GaugeMetricFamily(
            "jamins_indexer_lag_blocks", "Blocks the indexer is behind the chain head."
        )
        lag.add_metric([], indexer_lag(indexer))
        yield lag
        indexed = getattr(indexer, "indexed_block", None)
        if indexed is not None:
            block = GaugeMetricFamily("jamins_indexer_block", "The last block indexed.")
            block.add_metric([], indexed)
            yield block


WRITER_STATES = ("starting", "running", "waiting", "failing")


def writer_state_label(writer: Any | None) -> str:
    """The writer's state as one of a fixed set of label values: its "waiting for ..."
    carries node error text, which would make a new time series per message."""
    if writer is None:
        return "none"
    state = str(getattr(writer, "state", ""))
    if state.startswith("waiting"):
        return "waiting"
    return state if state in WRITER_STATES else "other"


def current_writer(app: FastAPI) -> Any | None:
    """The transaction writer running in this server, if any."""
    runtime = getattr(app.state, "runtime", None)
    return getattr(getattr(runtime, "background", None), "writer", None)


def current_indexer(app: FastAPI) -> Any | None:
    """The event indexer running in this server (the leader's), if any."""
    runtime = getattr(app.state, "runtime", None)
    return getattr(getattr(runtime, "background", None), "indexer", None)


def indexer_lag(indexer: Any | None) -> int:
    """head_block - indexed_block; 0 without an indexer or before it saw the head."""
    indexed = getattr(indexer, "indexed_block", None)
    head = getattr(indexer, "head_block", None)
    if indexed is None or head is None:
        return 0
    return max(0, int(head) - int(indexed))


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            if method not in _METHODS:
                method = "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


# -- readiness and scrape-time refresh -------------------------------------------------


@dataclass
class Readiness:
    ready: bool
    checks: dict[str, str]
    head_block: int | None
    indexer_lag: int

    def body(self) -> dict[str, object]:
        return {
            "status": "ready" if self.ready else "not ready",
            "checks": self.checks,
            "head_block": self.head_block,
            "indexer_lag": self.indexer_lag,
        }


async def check_database(app: FastAPI, timeout: float) -> str:
    service = getattr(app.state, "service", None)
    if service is None:
        return "not started"
    try:
        async with asyncio.timeout(timeout), service.sessionmaker() as session:
            await session.execute(text("SELECT 1"))
    except TimeoutError:
        return "database timed out"
    except Exception as exc:  # any driver error means "not ready", never a 500
        return f"database unreachable: {type(exc).__name__}"
    return "ok"


async def check_chain(app: FastAPI, settings: Settings) -> tuple[str, int | None]:
    """("ok" or why not, the head block when the node answered)."""
    client: ChainClient | None = getattr(getattr(app.state, "runtime", None), "client", None)
    metrics: Metrics = app.state.metrics
    if client is None:
        return "not started", None
    try:
        chain_id = await client.chain_id()
        head = await client.block_number()
    except (ServiceUnavailable, ChainRejected) as exc:
        metrics.chain_up.set(0)
        return f"chain node unreachable: {exc}", None
    metrics.chain_up.set(1)
    metrics.chain_head.set(head)
    if chain_id != settings.chain_id:
        return f"the node serves chain id {chain_id}, not {settings.chain_id}", head
    watch = getattr(getattr(app.state, "runtime", None), "chain_watch", None)
    if watch is not None and watch.problem is not None:
        return str(watch.problem), head
    return "ok", head


def check_background(app: FastAPI) -> str:
    """ "ok", or each background loop that is not running (it is being restarted)."""
    supervisor: Supervisor | None = getattr(getattr(app.state, "runtime", None), "supervisor", None)
    if supervisor is None:
        return "not started"
    problems = supervisor.problems()
    if not problems:
        return "ok"
    return "; ".join(f"{name} {why}" for name, why in sorted(problems.items()))


async def readiness(app: FastAPI, settings: Settings) -> Readiness:
    """Database answers, chain node answers with the configured chain id, indexer lag
    within `ready_max_lag_blocks`."""
    database, (chain, head) = await asyncio.gather(
        check_database(app, settings.db_pool_timeout), check_chain(app, settings)
    )
    lag = indexer_lag(current_indexer(app))
    indexer = "ok"
    if lag > settings.ready_max_lag_blocks:
        indexer = f"{lag} blocks behind (more than {settings.ready_max_lag_blocks})"
    checks = {
        "database": database,
        "chain": chain,
        "indexer": indexer,
        "background": check_background(app),
    }
    # A writer that cannot make progress leaves accepted registrations unsent.
    problem = getattr(current_writer(app), "problem", None)
    writer_problem = problem() if callable(problem) else None
    checks["writer"] = writer_problem or "ok"
    ready = all(value == "ok" for value in checks.values())
    return Readiness(ready=ready, checks=checks, head_block=head, indexer_lag=lag)


async def refresh_metrics(app: FastAPI, settings: Settings) -> None:
    """Update the gauges that need a query: chain head and pending registrations."""
    metrics: Metrics = app.state.metrics
    await check_chain(app, settings)
    service = getattr(app.state, "service", None)
    if service is None:
        return
    try:
        async with asyncio.timeout(settings.db_pool_timeout), service.sessionmaker() as session:
            pending = await session.scalar(
                select(func.count()).select_from(Registration).where(Registration.state == PENDING)
            )
        metrics.pending.set(pending or 0)
    except Exception as exc:  # a scrape shows stale values rather than failing
        logger.warning("could not count pending registrations: %s", type(exc).__name__)


# -- the balance watch ------------------------------------------------------------------


def registrations_covered(balance_wei: int, gas_price_wei: int) -> int | None:
    """How many registrations the balance pays for; None when gas is free."""
    if gas_price_wei <= 0:
        return None
    return balance_wei // (REGISTRATION_GAS * gas_price_wei)


class BalanceWatch:
    """Checks the signer's balance every `interval` s: warns below `warn_below`
    registrations, and pauses registrations (503) when it cannot pay for one more."""

    def __init__(
        self,
        *,
        app: FastAPI,
        client: ChainClient,
        signer_address: str,
        policy: GasPolicy,
        interval: float,
        warn_below: int,
    ) -> None:
        self.app = app
        self.client = client
        self.signer_address = signer_address
        self.policy = policy
        self.interval = interval
        self.warn_below = warn_below

    async def check(self) -> int | None:
        """One check; returns the registrations the balance still covers (None: unlimited)."""
        metrics: Metrics = self.app.state.metrics
        service = self.app.state.service
        balance = int(await self.client.call(self.client.w3.eth.get_balance(self.signer_address)))  # type: ignore[arg-type]
        gas_price = await current_gas_price(self.client, self.policy)
        covered = registrations_covered(balance, gas_price)
        metrics.chain_up.set(1)
        metrics.balance.set(balance)
        metrics.gas_price.set(gas_price)
        metrics.registrations_left.set(math.inf if covered is None else covered)
        if covered is not None and covered < 1:
            if service.registrations_paused is None:
                logger.error(
                    "signer %s has %d wei: not enough for one registration at gas price %d; "
                    "registrations answer 503 until it is funded",
                    self.signer_address,
                    balance,
                    gas_price,
                )
            service.registrations_paused = (
                "the server's balance cannot pay for a registration; try again later"
            )
            metrics.registrations_paused.set(1)
            return covered
        if service.registrations_paused is not None:
            logger.info("signer %s funded again: registrations resume", self.signer_address)
        service.registrations_paused = None
        metrics.registrations_paused.set(0)
        if covered is not None and covered < self.warn_below:
            logger.warning(
                "low balance: signer %s has %d wei, enough for %d more registrations at gas "
                "price %d",
                self.signer_address,
                balance,
                covered,
                gas_price,
            )
        return covered

    async def run(self) -> None:
        """Check until cancelled; a chain outage only skips a check."""
        while True:
            try:
                await self.check()
            except (ServiceUnavailable, ChainRejected) as exc:
                self.app.state.metrics.chain_up.set(0)
                logger.warning("balance check skipped: %s", exc)
            await asyncio.sleep(self.interval)


@contextlib.asynccontextmanager
async def ops_lifespan(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    """Runs the balance watch while the app serves (when it has a signer)."""
    runtime = getattr(app.state, "runtime", None)
    client: ChainClient | None = getattr(runtime, "client", None)
    signer_address: str | None = getattr(app.state, "signer_address", None)
    supervisor = Supervisor()
    parent: Supervisor | None = getattr(runtime, "supervisor", None)
    if parent is not None:
        parent.adopt(supervisor)
    if client is not None and signer_address is not None:
        watch = BalanceWatch(
            app=app,
            client=client,
            signer_address=signer_address,
            policy=GasPolicy(settings.chain_id, settings.gas_price_wei),
            interval=settings.balance_check_seconds,
            warn_below=settings.low_balance_registrations,
        )
        supervisor.start("balance-watch", watch.run)
    try:
        yield
    finally:
        await supervisor.stop()
        if parent is not None:
            parent.disown(supervisor)
