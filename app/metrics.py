"""Operations: Prometheus metrics and the readiness checks; nothing here decides anything.

The app's `Metrics` is built with the app; the values of the running server (cache
outcomes, the writer's state, the indexer's progress) are read when /metrics is scraped,
through `live()`, from the runtime the lifespan opened (anything `Observed`: this module
names what it reads and imports no wiring). The chain head and the pending registrations
are refreshed at each scrape; the balance gauges are set by the balance watch
(app.services.balance) through `record_balance`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.chain.client import ChainClient, ChainRejected
from app.errors import ServiceUnavailable
from app.models import PENDING, Registration
from app.services.balance import REGISTRATION_GAS, BalanceReading
from app.services.registry import NameService
from app.settings import Settings
from app.workers.background import Background
from app.workers.chain_watch import ChainWatch
from app.workers.supervisor import Supervisor

logger = logging.getLogger(__name__)

# A method is any token a client sends: label only these, the rest as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


class Observed(Protocol):
    """What the metrics and readiness checks read of a running server (app.runtime.Runtime)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]: ...
    @property
    def client(self) -> ChainClient: ...
    @property
    def service(self) -> NameService: ...
    @property
    def supervisor(self) -> Supervisor: ...
    @property
    def background(self) -> Background | None: ...
    @property
    def chain_watch(self) -> ChainWatch | None: ...


class Metrics:
    """The app's metric registry (one per app, so several apps in a process never clash)."""

    def __init__(self, live: Callable[[], Observed | None]) -> None:
        # The running server's state, read at scrape time; None before it started.
        self.live = live
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
        self.registry.register(LiveCollector(live))

    def record_balance(self, reading: BalanceReading | None) -> None:
        """A balance check's reading (None: the node did not answer it)."""
        if reading is None:
            self.chain_up.set(0)
            return
        self.chain_up.set(1)
        self.balance.set(reading.balance_wei)
        self.gas_price.set(reading.gas_price_wei)
        self.registrations_left.set(math.inf if reading.covered is None else reading.covered)
        self.registrations_paused.set(1 if reading.paused else 0)

    def exposition(self) -> bytes:
        """The /metrics body. Under `--workers N` (PROMETHEUS_MULTIPROC_DIR set by `jamins
        serve`) counters, histograms and gauges are merged from every worker's files; the
        live values (LiveCollector) are the answering worker's."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(LiveCollector(self.live))
        return generate_latest(registry)


class LiveCollector(Collector):
    """Values read from the running server at scrape time (none before it started)."""

    def __init__(self, live: Callable[[], Observed | None]) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        observed = self.live()
        cache = CounterMetricFamily(
            "jamins_cache_lookups",
            "Lookups by kind (name, addr) and how they were answered: hit (SQL), "
            "negative_hit (known free), miss (read from the chain).",
            labels=["kind", "result"],
        )
        if observed is not None:
            for (kind, result), count in sorted(observed.service.cache_counts.items()):
                cache.add_metric([kind, result], count)
        yield cache

        background = observed.background if observed is not None else None
        writer_state = GaugeMetricFamily(
            "jamins_tx_writer_state",
            "1 for the transaction writer's current state (none: no writer on this server).",
            labels=["state"],
        )
        writer = background.writer if background is not None else None
        writer_state.add_metric(
            [writer_state_label(writer.state if writer is not None else None)], 1
        )
        yield writer_state

        indexer = background.indexer if background is not None else None
        lag = GaugeMetricFamily(
            "jamins_indexer_lag_blocks", "Blocks the indexer is behind the chain head."
        )
        lag.add_metric([], indexer.lag if indexer is not None else 0)
        yield lag
        if indexer is not None and indexer.indexed_block is not None:
            block = GaugeMetricFamily("jamins_indexer_block", "The last block indexed.")
            block.add_metric([], indexer.indexed_block)
            yield block


WRITER_STATES = ("starting", "running", "waiting", "failing")


def writer_state_label(state: str | None) -> str:
    """The writer's state (None: no writer) as one of a fixed set of label values: its
    "waiting for ..." carries node error text, which would make a new time series per
    message."""
    if state is None:
        return "none"
    if state.startswith("waiting"):
        return "waiting"
    return state if state in WRITER_STATES else "other"


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


async def check_database(observed: Observed) -> str:
    try:
        async with (
            asyncio.timeout(observed.settings.db_pool_timeout),
            observed.sessionmaker() as session,
        ):
            await session.execute(text("SELECT 1"))
    except TimeoutError:
        return "database timed out"
    except Exception as exc:  # any driver error means "not ready", never a 500
        return f"database unreachable: {type(exc).__name__}"
    return "ok"


async def check_chain(observed: Observed, metrics: Metrics) -> tuple[str, int | None]:
    """("ok" or why not, the head block when the node answered)."""
    settings = observed.settings
    try:
        chain_id = await observed.client.chain_id()
        head = await observed.client.block_number()
    except (ServiceUnavailable, ChainRejected) as exc:
        metrics.chain_up.set(0)
        return f"chain node unreachable: {exc}", None
    metrics.chain_up.set(1)
    metrics.chain_head.set(head)
    if chain_id != settings.chain_id:
        return f"the node serves chain id {chain_id}, not {settings.chain_id}", head
    watch = observed.chain_watch
    if watch is not None and watch.problem is not None:
        return watch.problem, head
    return "ok", head


def check_background(observed: Observed) -> str:
    """ "ok", or each background loop that is not running (it is being restarted)."""
    problems = observed.supervisor.problems()
    if not problems:
        return "ok"
    return "; ".join(f"{name} {why}" for name, why in sorted(problems.items()))


async def readiness(observed: Observed, metrics: Metrics) -> Readiness:
    """Database answers, chain node answers with the configured chain id, indexer lag
    within `ready_max_lag_blocks`, every background loop running, the writer not stuck."""
    settings = observed.settings
    database, (chain, head) = await asyncio.gather(
        check_database(observed), check_chain(observed, metrics)
    )
    background = observed.background
    indexer = background.indexer if background is not None else None
    lag = indexer.lag if indexer is not None else 0
    indexer_check = "ok"
    if lag > settings.ready_max_lag_blocks:
        indexer_check = f"{lag} blocks behind (more than {settings.ready_max_lag_blocks})"
    # A writer that cannot make progress leaves accepted registrations unsent.
    writer = background.writer if background is not None else None
    checks = {
        "database": database,
        "chain": chain,
        "indexer": indexer_check,
        "background": check_background(observed),
        "writer": (writer.problem() if writer is not None else None) or "ok",
    }
    ready = all(value == "ok" for value in checks.values())
    return Readiness(ready=ready, checks=checks, head_block=head, indexer_lag=lag)


async def refresh_metrics(observed: Observed, metrics: Metrics) -> None:
    """Update the gauges that need a query: chain head and pending registrations."""
    await check_chain(observed, metrics)
    try:
        async with (
            asyncio.timeout(observed.settings.db_pool_timeout),
            observed.sessionmaker() as session,
        ):
            pending = await session.scalar(
                select(func.count()).select_from(Registration).where(Registration.state == PENDING)
            )
        metrics.pending.set(pending or 0)
    except Exception as exc:  # a scrape shows stale values rather than failing
        logger.warning("could not count pending registrations: %s", type(exc).__name__)
