"""Alembic environment: migrates the database named by the jamins settings."""

from __future__ import annotations

from alembic import context

from app.db import make_sync_engine
from app.models import Base
from app.settings import Settings

settings = context.config.attributes.get("settings") or Settings.from_environment()
engine = make_sync_engine(settings)
try:
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            # A column whose type changed in the models is a difference, not silence.
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
