"""The Alembic migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import make_sync_engine, migrate
from app.models import Base
from app.settings import Settings
from tests.pg import PostgresServer


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrate_builds_the_models_schema(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database("migrations_check")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)
    migrate(settings)  # a second run is a no-op
    engine = make_sync_engine(settings)
    try:
        with engine.connect() as connection:
            # As `alembic check` with migrations/env.py's options: types compared too.
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
    # Named by the models' convention (0004), which later migrations rely on to alter them.
    assert _constraint_names(settings) == {
        "meta": {"pk_meta"},
        "names": {"pk_names", "uq_names_folded_name"},
        "registrations": {
            "pk_registrations",
            "uq_registrations_claim_addr",
            "uq_registrations_claim_name",
        },
        "indexed_blocks": {"pk_indexed_blocks"},
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrate_backfills_skeletons(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """0003 gives the names already stored their look-alike key, colliding ones included."""
    from alembic import command
    from sqlalchemy import text

    from app.db import alembic_config
    from app.names import name_skeleton

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database("migrations_skeleton")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    command.upgrade(alembic_config(settings), "0002")
    stored = ["paypal", "раураӏ", "élodie", "-rf"]  # noqa: RUF001 (the look-alike is the point)
    engine = make_sync_engine(settings)
    try:
        with engine.begin() as connection:
            for name in stored:
                connection.execute(
                    text(
                        "INSERT INTO names (name, folded_name, addr, owner, pending, updated_at)"
                        " VALUES (:name, :name, :addr, :addr, false, CURRENT_TIMESTAMP)"
                    ),
                    {"name": name, "addr": "0" * 40},
                )
        migrate(settings)
        with engine.connect() as connection:
            rows: dict[str, str] = dict(
                connection.execute(text("SELECT name, skeleton FROM names")).all()
            )
    finally:
        engine.dispose()
    assert rows == {name: name_skeleton(name) for name in stored}
    assert rows["paypal"] == rows["раураӏ"] == "paypal"  # noqa: RUF001


# The tables as 0001-0003 built them before the models had a naming convention.
_UNNAMED_SQLITE_SCHEMA = [
    'CREATE TABLE meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"))',
    "CREATE TABLE names (name VARCHAR(64) NOT NULL, folded_name VARCHAR(128) NOT NULL,"
    " addr VARCHAR(40) NOT NULL, owner VARCHAR(40) NOT NULL, publickey TEXT, signature TEXT,"
    " pending BOOLEAN NOT NULL, block_number BIGINT, updated_at DATETIME NOT NULL,"
    " skeleton TEXT NOT NULL, PRIMARY KEY (name), UNIQUE (folded_name))",
    "CREATE INDEX ix_names_addr ON names (addr)",
    "CREATE INDEX ix_names_block_number ON names (block_number)",
    "CREATE INDEX ix_names_skeleton ON names (skeleton)",
    "CREATE UNIQUE INDEX ix_names_pending_skeleton ON names (skeleton) WHERE pending",
    "CREATE TABLE registrations (id INTEGER NOT NULL, name VARCHAR(64) NOT NULL,"
    " folded_name VARCHAR(128) NOT NULL, addr VARCHAR(40) NOT NULL, owner VARCHAR(40) NOT NULL,"
    " publickey TEXT NOT NULL, signature TEXT NOT NULL, claim_name VARCHAR(128),"
    " claim_addr VARCHAR(40), state VARCHAR(16) NOT NULL, nonce BIGINT, tx_hash VARCHAR(66),"
    " raw_tx TEXT, block BIGINT, reason TEXT, created_at DATETIME NOT NULL,"
    " updated_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (claim_addr), UNIQUE (claim_name))",
    "CREATE INDEX ix_registrations_folded_name ON registrations (folded_name)",
    "CREATE INDEX ix_registrations_state ON registrations (state)",
    "CREATE TABLE indexed_blocks (number BIGINT NOT NULL, hash VARCHAR(66) NOT NULL,"
    " PRIMARY KEY (number))",
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,"
    " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
    "INSERT INTO alembic_version VALUES ('0003')",
]


def _constraint_names(settings: Settings) -> dict[str, set[str | None]]:
    engine = make_sync_engine(settings)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            return {
                table: {
                    inspector.get_pk_constraint(table)["name"],
                    *(unique["name"] for unique in inspector.get_unique_constraints(table)),
                }
                for table in Base.metadata.tables
            }
    finally:
        engine.dispose()


def test_migrate_names_the_constraints_of_an_old_sqlite_database(tmp_path: Path) -> None:
    """0004 on a database built before the convention: rows kept, constraints named, and
    the partial unique index still partial (two failed look-alikes may coexist)."""
    from sqlalchemy import text

    settings = Settings(
        _env_file=None, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'old.sqlite3'}"
    )
    engine = make_sync_engine(settings)
    try:
        with engine.begin() as connection:
            for statement in _UNNAMED_SQLITE_SCHEMA:
                connection.execute(text(statement))
            for name, pending in (("alice", 1), ("a1ice", 0), ("al1ce", 0)):
                connection.execute(
                    text(
                        "INSERT INTO names (name, folded_name, addr, owner, pending, updated_at,"
                        " skeleton) VALUES (:name, :name, :addr, :addr, :pending,"
                        " CURRENT_TIMESTAMP, 'alice')"
                    ),
                    {"name": name, "addr": "0" * 40, "pending": pending},
                )
        assert None in _constraint_names(settings)["names"]
        migrate(settings)
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT count(*) FROM names")).scalar()
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
            partial = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'ix_names_pending_skeleton'")
            ).scalar()
    finally:
        engine.dispose()
    assert kept == 3
    assert differences == []
    assert partial is not None and partial.endswith("WHERE pending")
    assert _constraint_names(settings)["names"] == {"pk_names", "uq_names_folded_name"}


def test_migrate_renames_postgresql_own_constraint_names(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """A PostgreSQL database built before the convention has `names_pkey`-style names
    (0004's downgrade puts them back): upgrading renames them."""
    from alembic import command

    from app.db import alembic_config

    url = postgres.create_database("migrations_rename")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    migrate(settings)
    command.downgrade(alembic_config(settings), "0003")
    assert "names_folded_name_key" in _constraint_names(settings)["names"]
    migrate(settings)
    assert _constraint_names(settings)["names"] == {"pk_names", "uq_names_folded_name"}


def test_migrations_started_together_on_postgresql_all_succeed(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Several processes (workers, two servers on one database) may migrate the same fresh
    database at once: one builds the schema, the others find it built."""
    url = postgres.create_database("migrations_together")
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)
    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def migrate_at_once() -> None:
        start.wait()
        try:
            migrate(settings)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=migrate_at_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert [thread for thread in threads if thread.is_alive()] == []
    assert failures == []


def test_migration_lock_is_not_the_leader_lock() -> None:
    """A running leader holds its advisory lock for good: a migration waiting on the same
    key would hang the next server's start-up (seen: the second of two servers)."""
    from app import db
    from app.workers import leader

    assert db._MIGRATION_LOCK != leader.ADVISORY_KEY
