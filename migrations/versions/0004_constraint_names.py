"""constraint names: every primary key and unique constraint named by the convention

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 06:00:00.000000

app/models.py names constraints by a convention (NAMING_CONVENTION), which Alembic also
applies to the tables 0001 and 0002 create from now on; databases built before it have
them unnamed. PostgreSQL had named them itself (`names_pkey`, `names_folded_name_key`):
they are renamed. SQLite cannot rename a constraint: a table with an unnamed one is
rebuilt (batch mode) with the convention, the partial unique index of 0003 taken off first
and put back after, since a rebuilt table may not keep its WHERE clause.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models import NAMING_CONVENTION

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# (table, PostgreSQL's own name, the convention's name)
_RENAMES = [
    ("meta", "meta_pkey", "pk_meta"),
    ("names", "names_pkey", "pk_names"),
    ("names", "names_folded_name_key", "uq_names_folded_name"),
    ("registrations", "registrations_pkey", "pk_registrations"),
    ("registrations", "registrations_claim_addr_key", "uq_registrations_claim_addr"),
    ("registrations", "registrations_claim_name_key", "uq_registrations_claim_name"),
    ("indexed_blocks", "indexed_blocks_pkey", "pk_indexed_blocks"),
]


def _rename(pairs: list[tuple[str, str, str]]) -> None:
    """Rename those of `pairs` the database has (a database first built after the
    convention, whose 0001 already used it, has none)."""
    connection = op.get_bind()
    for table, old, new in pairs:
        exists = connection.execute(
            sa.text(
                "SELECT 1 FROM pg_constraint WHERE conname = :name"
                " AND conrelid = to_regclass(:table)"
            ),
            {"name": old, "table": table},
        ).first()
        if exists is not None:
            op.execute(sa.text(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{old}" TO "{new}"'))


def _unnamed_on_sqlite(table: str) -> bool:
    inspector = sa.inspect(op.get_bind())
    names = [inspector.get_pk_constraint(table)["name"]]
    names += [unique["name"] for unique in inspector.get_unique_constraints(table)]
    return None in names


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        _rename(_RENAMES)
        return
    tables = [
        table
        for table in ("meta", "names", "registrations", "indexed_blocks")
        if _unnamed_on_sqlite(table)
    ]
    if "names" in tables:
        op.drop_index("ix_names_pending_skeleton", table_name="names")
    for table in tables:
        # Nothing to alter: rebuilt from the reflected table, which the convention names.
        with op.batch_alter_table(table, recreate="always", naming_convention=NAMING_CONVENTION):
            pass
    if "names" in tables:
        op.create_index(
            "ix_names_pending_skeleton",
            "names",
            ["skeleton"],
            unique=True,
            sqlite_where=sa.text("pending"),
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        _rename([(table, new, old) for table, old, new in _RENAMES])
    # SQLite: the names stay; nothing older reads them.
