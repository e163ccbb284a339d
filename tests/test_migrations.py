"""The Alembic migrations build exactly the schema the models declare, on both backends."""

from __future__ import annotations

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
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=url)  # type: ignore[call-arg]
    migrate(settings)
    migrate(settings)  # a second run is a no-op
    engine = make_sync_engine(settings)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
