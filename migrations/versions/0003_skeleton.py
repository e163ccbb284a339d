"""names.skeleton: the UTS #39 look-alike key of every name, indexed

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 20:30:00.000000

Existing rows are backfilled with app.names.name_skeleton, the function new rows get it
from (app/models.py). Names that already collide keep their rows: the index is not unique,
except among pending rows (ix_names_pending_skeleton), where it stops two look-alike
registrations accepted at the same instant.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.names import name_skeleton

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BATCH = 5000

_names = sa.table("names", sa.column("name", sa.String()), sa.column("skeleton", sa.Text()))


def upgrade() -> None:
    with op.batch_alter_table("names", schema=None) as batch_op:
        batch_op.add_column(sa.Column("skeleton", sa.Text(), nullable=True))

    connection = op.get_bind()
    after = ""
    update = (
        _names.update()
        .where(_names.c.name == sa.bindparam("row_name"))
        .values(skeleton=sa.bindparam("row_skeleton"))
    )
    while True:
        batch = (
            connection.execute(
                sa.select(_names.c.name)
                .where(_names.c.name > after)
                .order_by(_names.c.name)
                .limit(_BATCH)
            )
            .scalars()
            .all()
        )
        if not batch:
            break
        connection.execute(
            update, [{"row_name": n, "row_skeleton": name_skeleton(n)} for n in batch]
        )
        after = batch[-1]

    with op.batch_alter_table("names", schema=None) as batch_op:
        batch_op.alter_column("skeleton", existing_type=sa.Text(), nullable=False)
        batch_op.create_index(batch_op.f("ix_names_skeleton"), ["skeleton"], unique=False)
        batch_op.create_index(
            "ix_names_pending_skeleton",
            ["skeleton"],
            unique=True,
            sqlite_where=sa.text("pending"),
            postgresql_where=sa.text("pending"),
        )


def downgrade() -> None:
    with op.batch_alter_table("names", schema=None) as batch_op:
        batch_op.drop_index("ix_names_pending_skeleton")
        batch_op.drop_index(batch_op.f("ix_names_skeleton"))
        batch_op.drop_column("skeleton")
