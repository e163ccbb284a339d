"""Engines, sessions and migrations for the SQL cache (SQLite file or PostgreSQL)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    ARRAY,
    Engine,
    String,
    TextClause,
    bindparam,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import migrations
from app.errors import DatabaseUnavailable
from app.models import PENDING, Meta
from app.senders import Senders
from app.settings import Settings

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets lookups read while a registration commits; FULL fsyncs every commit, so
    # an accepted registration survives a power loss, not only a crash.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _engine_options(url: str, settings: Settings) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {}
    return {
        "pool_pre_ping": True,
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_pool_size,
        "pool_timeout": settings.db_pool_timeout,
        "connect_args": {"connect_timeout": settings.db_connect_timeout},
    }


def _prepare_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite") and ":///" in url:
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_sync_engine(settings: Settings) -> Engine:
    """A blocking engine, for migrations and the CLI."""
    url = settings.sqlalchemy_url()
    _prepare_sqlite_dir(url)
    engine = create_engine(url, **_engine_options(url, settings))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _tune_sqlite)
    return engine


def make_async_engine(settings: Settings) -> AsyncEngine:
    """The server's engine."""
    url = settings.async_sqlalchemy_url()
    _prepare_sqlite_dir(url)
    engine = create_async_engine(url, **_engine_options(url, settings))
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _tune_sqlite)
    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["settings"] = settings
    return config


# pg_advisory_lock key that serialises migrations of one PostgreSQL database; not the
# leader lock's key (app.workers.leader.ADVISORY_KEY), which a running server holds for good.
_MIGRATION_LOCK = 0x6A6D6967726174  # "jmigrat"


def migrate(settings: Settings) -> None:
    """Bring the schema to the newest migration (alembic upgrade head).

    On PostgreSQL, processes that migrate one database at once (workers, several servers)
    take turns: the first builds the schema, the others then find nothing to do."""
    url = settings.sqlalchemy_url()
    if not url.startswith("postgresql"):
        command.upgrade(alembic_config(settings), "head")
        return
    engine = make_sync_engine(settings)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            connection.commit()
            try:
                command.upgrade(alembic_config(settings), "head")
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK}
                )
                connection.commit()
    finally:
        engine.dispose()


@asynccontextmanager
async def session_scope(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session whose connection failures surface as DatabaseUnavailable (503)."""
    with _unavailable_on_failure():
        async with sessionmaker() as session:
            yield session


@contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    """Connection failures (not bugs, not constraint violations) as DatabaseUnavailable."""
    try:
        yield
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        logger.warning("database error: %s", exc.__class__.__name__)
        raise DatabaseUnavailable() from exc
    except sqlalchemy.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseUnavailable() from exc
        raise
    except (TimeoutError, sqlalchemy.exc.TimeoutError) as exc:
        # sqlalchemy.exc.TimeoutError (the pool is full) is not the builtin TimeoutError.
        logger.warning("database error: %s", exc.__class__.__name__)
        raise DatabaseUnavailable() from exc


# -- the lookup read path -------------------------------------------------------------


class NameRow(NamedTuple):
    """The columns of a `names` row a lookup needs."""

    name: str
    folded_name: str
    addr: str
    owner: str
    publickey: str | None
    signature: str | None
    pending: bool


# The columns of NameRow, in its order.
_SQL_COLUMNS = "name, folded_name, addr, owner, publickey, signature, pending"


def _name_row(row: Any) -> NameRow:
    return NameRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


class Claims(NamedTuple):
    """What SQL holds against a registration of one fold for one Jami ID."""

    name_addr: str | None  # the address of the names row of this fold
    claim_addr: str | None  # the address a registration claims this fold for
    addr_claim: str | None  # the name a registration claims for this ID
    lookalike: str | None  # a name of another fold with the same UTS #39 skeleton
    pending: int  # registrations still pending (the admission queue)
    pointing: list[NameRow]  # rows whose address is this ID (LookupReader.pointing_at)


class _Query(NamedTuple):
    """One read: its SQL, with `?` for each of `parameters`, run as it is on SQLite's loop
    connection and as a textual statement through the engine (PostgreSQL, or SQLite
    busy); or, when `statement` is given, what gives the statement the engine runs instead
    (the coalesced reads' array statements, PostgreSQL only). Those are textual too: a Core
    statement is built, and its cache key computed, at every read, which for a
    registration's check on PostgreSQL cost more of the loop than the read."""

    sql: str
    parameters: tuple[str, ...]
    statement: Callable[[], Any] | None = None

    def for_engine(self) -> tuple[Any, dict[str, str]]:
        if self.statement is not None:
            return self.statement(), {}
        return _textual(self.sql), {
            f"p{index}": value for index, value in enumerate(self.parameters)
        }


@functools.lru_cache(maxsize=64)
def _textual(sql: str) -> TextClause:
    """`sql` with its `?` placeholders named (p0, p1, ...), as a statement for the engine."""
    counter = itertools.count()
    return text(re.sub(r"\?", lambda _match: f":p{next(counter)}", sql))


def _pointing_at(jami_id: str, limit: int) -> _Query:
    return _Query(
        f"SELECT {_SQL_COLUMNS} FROM names WHERE addr = ?"
        f" ORDER BY {_POINTING_ORDER} LIMIT {int(limit)}",
        (jami_id,),
    )


# Rows pointing at one ID, in a fixed order (answers must not flip): pending rows first.
_POINTING_ORDER = "pending DESC, name"
# PostgreSQL: the rows of several folds in one statement (LookupReader.name); textual, as
# a Core statement is built and its cache key computed at every read.
_NAMES_OF_ANY = text(
    f"SELECT {_SQL_COLUMNS} FROM names WHERE folded_name = ANY(CAST(:folds AS VARCHAR[]))"
).bindparams(bindparam("folds", type_=ARRAY(String)))
# PostgreSQL: the first rows pointing at each of several IDs, in that order, in one
# statement (LookupReader.pointing_at). One index read per ID, as `_pointing_at` is: a
# single `addr = ANY(...)` is planned as a scan of every row while the table has no
# statistics yet (right after a backfill: 13 ms a read at 100k names).
_POINTING_AT_ANY = text(
    "SELECT found.* FROM unnest(CAST(:ids AS VARCHAR[])) AS asked(addr)"
    f" CROSS JOIN LATERAL (SELECT {_SQL_COLUMNS} FROM names WHERE names.addr = asked.addr"
    f" ORDER BY {_POINTING_ORDER} LIMIT :limit) AS found"
    f" ORDER BY found.addr, {_POINTING_ORDER}"  # pending and name are found's alone
).bindparams(bindparam("ids", type_=ARRAY(String)), bindparam("limit"))


class LookupReader:
    """Point reads of the names table for lookups, without an ORM session.

    On PostgreSQL a Core select of the needed columns; with `own_pool` (the server's
    reader) on a pool of its own: READ_CONNECTIONS connections kept open (psycopg prepares
    a statement a connection runs repeatedly), used without a ping first, and no more of
    them under load (a request waits a moment for one rather than open a connection and
    close it again, which cost more than the read). A read that finds its connection
    dropped (a restart of PostgreSQL) is read once more on a new one.

    On SQLite the read runs on the event loop itself, on one stdlib connection per
    process: an indexed point read in WAL mode takes microseconds, less than handing it to
    aiosqlite's thread and back, and a WAL reader does not wait on the writer. Should
    SQLite answer busy (a checkpoint), the read goes the async way instead of blocking the
    loop.
    """

    def __init__(
        self, engine: AsyncEngine, *, own_pool: bool = False, connect_timeout: int = 5
    ) -> None:
        self.engine = engine
        self.own_pool = own_pool
        path = engine.url.database if engine.dialect.name == "sqlite" else None
        self.sqlite_path = path if path and path != ":memory:" else None
        self.connect_timeout = connect_timeout
        self._sqlite: sqlite3.Connection | None = None
        self._read_engine: AsyncEngine | None = None
        # PostgreSQL's name reads and reverse reads (by number of rows), coalesced (see
        # `name` and `pointing_at`).
        postgresql = engine.dialect.name == "postgresql"
        self._names = CoalescedReads(self._names_of) if postgresql else None
        self._pointing: dict[int, CoalescedReads[list[NameRow]]] | None = {} if postgresql else None

    def _reads(self) -> AsyncEngine:
        """The engine reads go through: the server's, or with `own_pool` on PostgreSQL a
        pool of their own (disposed by `dispose`)."""
        if not self.own_pool or self.engine.dialect.name != "postgresql":
            return self.engine
        if self._read_engine is None:
            self._read_engine = create_async_engine(
                self.engine.url,
                pool_size=READ_CONNECTIONS,
                max_overflow=0,
                pool_pre_ping=False,
                pool_timeout=READ_POOL_TIMEOUT,
                connect_args={"connect_timeout": self.connect_timeout},
                # Each statement its own transaction, as a read needs: psycopg otherwise
                # sends a BEGIN before it and the pool a ROLLBACK after, two more round
                # trips per read. (Read committed either way: each statement of a read
                # sees the rows committed when it starts.)
                isolation_level="AUTOCOMMIT",
            )
        return self._read_engine

    def _sqlite_connection(self) -> sqlite3.Connection:
        if self._sqlite is None:
            assert self.sqlite_path is not None
            connection = sqlite3.connect(
                self.sqlite_path,
                # Only ever used from the event loop's thread; the check is for a
                # connection shared between threads, which this is not.
                check_same_thread=False,
                timeout=SQLITE_LOOP_READ_TIMEOUT,
                isolation_level=None,
            )
            connection.execute("PRAGMA query_only=ON")
            # Reads of a large file through a memory map and a bigger page cache, not a
            # pread(2) per page: first lookups of a 100k-name registry touch a few pages
            # each, all over the file (bench/lookups.py `hit`: 0.26x -> 0.36x the raw
            # ceiling, p99 92 -> 15 ms). The mapped pages are the kernel's page cache:
            # they count in the process's RSS, and the kernel reclaims them as it needs.
            connection.execute(f"PRAGMA mmap_size={SQLITE_READ_MMAP_BYTES}")
            connection.execute(f"PRAGMA cache_size=-{SQLITE_READ_CACHE_KIB}")
            self._sqlite = connection
        return self._sqlite

    def _read_sqlite(self, sql: str, parameters: tuple[str, ...]) -> list[tuple[Any, ...]] | None:
        """The rows, or None when SQLite could not answer at once (then read async)."""
        try:
            return self._sqlite_connection().execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            logger.debug("read on the loop failed (%s): reading through the engine", exc)
            self.close()
            return None

    async def _rows(
        self, sql: str, parameters: tuple[str, ...], statement: Callable[[], Any] | None = None
    ) -> list[Any]:
        """The rows of one _Query."""
        return (await self._queries(_Query(sql, parameters, statement)))[0]

    async def _queries(self, *queries: _Query) -> list[list[Any]]:
        """Each query's rows: on SQLite's loop connection, else (PostgreSQL, or SQLite
        busy) on one pooled connection (one checkout for all)."""
        if self.sqlite_path is not None:
            answers = [self._read_sqlite(query.sql, query.parameters) for query in queries]
            if all(rows is not None for rows in answers):
                return [rows for rows in answers if rows is not None]
        with _unavailable_on_failure():
            try:
                return await self._read(queries)
            except sqlalchemy.exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # A connection PostgreSQL dropped: the pool threw every older one away.
                return await self._read(queries)

    async def _read(self, queries: tuple[_Query, ...]) -> list[list[Any]]:
        async with self._reads().connect() as connection:
            return [list(await connection.execute(*query.for_engine())) for query in queries]

    async def name(self, folded: str) -> NameRow | None:
        """The row whose fold is `folded`.

        On PostgreSQL, the folds asked while NAME_READS_IN_FLIGHT reads are on their way
        are read together, in one statement: a round trip and a statement cost the loop
        far more than the rows, and first lookups come many at a time."""
        if self._names is not None:
            return await self._names.get(folded)
        rows = await self._rows(
            f"SELECT {_SQL_COLUMNS} FROM names WHERE folded_name = ? LIMIT 1", (folded,)
        )
        return _name_row(rows[0]) if rows else None

    async def _names_of(self, folded: list[str]) -> dict[str, NameRow]:
        """The rows of these folds (one statement, whatever their number)."""
        rows = await self._rows(
            "",  # PostgreSQL only (`name`): never run on SQLite's loop connection
            (),
            lambda: _NAMES_OF_ANY.params(folds=folded),
        )
        return {row.folded_name: row for row in map(_name_row, rows)}

    async def pointing_at(self, jami_id: str, limit: int) -> list[NameRow]:
        """Up to `limit` rows whose address is `jami_id`, pending first, then by name.

        On PostgreSQL coalesced as `name` is: a reverse lookup not in the answer cache
        is one statement, and a statement costs the loop more than its rows."""
        if self._pointing is None:
            return [_name_row(row) for row in await self._rows(*_pointing_at(jami_id, limit))]
        reads = self._pointing.get(limit)
        if reads is None:
            reads = self._pointing[limit] = CoalescedReads(
                functools.partial(self._pointing_at_any, limit)
            )
        return list(await reads.get(jami_id) or ())

    async def _pointing_at_any(self, limit: int, ids: list[str]) -> dict[str, list[NameRow]]:
        """Up to `limit` rows pointing at each of `ids` (one statement; PostgreSQL only)."""
        rows = await self._rows(
            "",  # PostgreSQL only (`pointing_at`): never run on SQLite's loop connection
            (),
            lambda: _POINTING_AT_ANY.params(ids=ids, limit=limit),
        )
        found: dict[str, list[NameRow]] = {}
        for row in map(_name_row, rows):
            found.setdefault(row.addr, []).append(row)
        return found

    async def claims(self, folded: str, jami_id: str, skeleton: str, limit: int) -> Claims:
        """What SQL holds against registering `folded` for `jami_id`: one statement for
        the name's side, and the rows pointing at the ID (at most `limit`)."""
        scalars, pointing = await self._queries(
            _Query(
                "SELECT (SELECT addr FROM names WHERE folded_name = ?),"
                " (SELECT addr FROM registrations WHERE claim_name = ?),"
                " (SELECT name FROM registrations WHERE claim_addr = ?),"
                " (SELECT name FROM names WHERE skeleton = ? AND folded_name != ? LIMIT 1),"
                " (SELECT count(*) FROM registrations WHERE state = ?)",
                (folded, folded, jami_id, skeleton, folded, PENDING),
            ),
            _pointing_at(jami_id, limit),
        )
        name_addr, claim_addr, addr_claim, lookalike, pending = scalars[0]
        return Claims(
            name_addr,
            claim_addr,
            addr_claim,
            lookalike,
            int(pending or 0),
            [_name_row(row) for row in pointing],
        )

    def close(self) -> None:
        """Close SQLite's loop connection (reopened on the next read)."""
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

    async def dispose(self) -> None:
        """Close every connection of the reads, at shutdown."""
        self.close()
        if self._read_engine is not None:
            await self._read_engine.dispose()
            self._read_engine = None


_Found = TypeVar("_Found")


class CoalescedReads(Generic[_Found]):
    """Point reads by key, the keys asked while `in_flight` reads (NAME_READS_IN_FLIGHT
    unless given) are on their way sent together in the next (at most NAME_READS_LIMIT
    keys each).

    Each read is fresh (nothing is kept between them): a caller gets what SQL held at a
    moment after it asked. A caller that goes away (a cancelled request) leaves the others
    their answers; a failed read fails each of its callers with DatabaseUnavailable."""

    def __init__(
        self,
        read: Callable[[list[str]], Awaitable[dict[str, _Found]]],
        in_flight: int | None = None,
    ) -> None:
        self.read = read
        self._waiting: dict[str, list[asyncio.Future[_Found | None]]] = {}
        self._senders = Senders(NAME_READS_IN_FLIGHT if in_flight is None else in_flight)
        # Reads sent and keys they held, for tests and the benchmark.
        self.reads = 0
        self.keys_read = 0

    async def get(self, key: str) -> _Found | None:
        answer: asyncio.Future[_Found | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(answer)
        self._senders.start(self._send_waiting)
        return await answer

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                keys = list(itertools.islice(self._waiting, NAME_READS_LIMIT))
                batch = {key: self._waiting.pop(key) for key in keys}
                live = [
                    key
                    for key, answers in batch.items()
                    if not all(answer.done() for answer in answers)  # callers all gone
                ]
                if live:
                    await self._answer(live, batch)
        except BaseException as exc:
            # Cancelled (the loop is closing): no caller waits for ever.
            for answers in self._waiting.values():
                _fail_all(answers, exc)
            self._waiting.clear()
            raise

    async def _answer(
        self, keys: list[str], batch: dict[str, list[asyncio.Future[_Found | None]]]
    ) -> None:
        try:
            rows = await self.read(keys)
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, DatabaseUnavailable):
                # A defect, not the database: logged whole here, as no caller sees it.
                logger.exception("read of %d keys failed", len(keys))
            for answers in batch.values():
                _fail_all(answers, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.reads += 1
        self.keys_read += len(keys)
        for key, answers in batch.items():
            for answer in answers:
                if not answer.done():
                    answer.set_result(rows.get(key))


def _fail_all(answers: list[asyncio.Future[Any]], cause: BaseException) -> None:
    for answer in answers:
        if not answer.done():
            # One exception per caller: each raises it with a traceback of its own.
            unavailable = DatabaseUnavailable()
            unavailable.__cause__ = cause
            answer.set_exception(unavailable)


# Name reads on their way at once on PostgreSQL, and the folds one of them holds at most.
# One: the keys asked meanwhile wait for it and go together in the next, and a statement
# costs the loop more than its rows (bench/lookups.py --db postgresql, 32 connections:
# `hit` 4,921 req/s with two on their way, 5,488 with one, p99 8.7 -> 8.0 ms).
NAME_READS_IN_FLIGHT = 1
NAME_READS_LIMIT = 256

# PostgreSQL connections of the lookups' reads (LookupReader), and how long a read waits
# for one of them before the request is answered 503.
READ_CONNECTIONS = 8
READ_POOL_TIMEOUT = 5.0
# The loop's SQLite read connection: bytes of the file mapped, KiB of page cache.
SQLITE_READ_MMAP_BYTES = 1 << 30
SQLITE_READ_CACHE_KIB = 32 * 1024
# A read on the event loop waits at most this long for a lock before going async.
SQLITE_LOOP_READ_TIMEOUT = 0.005


async def get_meta(session: AsyncSession, key: str) -> str | None:
    return await session.scalar(select(Meta.value).where(Meta.key == key))


async def set_meta(session: AsyncSession, key: str, value: str) -> None:
    row = await session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    else:
        row.value = value
