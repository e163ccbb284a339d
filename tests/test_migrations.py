"""The Alembic migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

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
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


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
