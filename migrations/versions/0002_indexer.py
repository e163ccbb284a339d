"""indexer: block hashes, names by block

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 08:21:19.602299
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "indexed_blocks",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=66), nullable=False),
        sa.PrimaryKeyConstraint("number"),
    )
    with op.batch_alter_table("names", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_names_block_number"), ["block_number"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("names", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_names_block_number"))

    op.drop_table("indexed_blocks")
