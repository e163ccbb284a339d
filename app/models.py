"""The SQL tables: the cache of chain records and this server's registration queue."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, MetaData, String, Text, text
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app import names

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


# Every constraint and index gets a predictable name, so a later migration can alter or
# drop it on both backends (PostgreSQL would otherwise name it, SQLite not at all).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _skeleton_of_row(context: DefaultExecutionContext) -> str:
    """The look-alike key of the row being inserted, so that every writer of `names` (the
    registry, the indexer, the writer, imports) stores it without knowing of it."""
    parameters = context.get_current_parameters()  # type: ignore[no-untyped-call]
    return names.name_skeleton(parameters["name"])


class NameRecord(Base):
    """A name as lookups see it: read from the chain, or accepted here and still pending."""

    __tablename__ = "names"
    __table_args__ = (
        # Two registrations that passed the look-alike check at the same instant cannot
        # both be stored: a second pending name with a skeleton is refused (the registry
        # answers 409). Only pending rows: names already on the chain may collide.
        Index(
            "ix_names_pending_skeleton",
            "skeleton",
            unique=True,
            sqlite_where=text("pending"),
            postgresql_where=text("pending"),
        ),
    )

    # The exact on-chain string (the bytes32 key), which is also what was signed.
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Lookups and uniqueness use the fold (app.names.fold).
    folded_name: Mapped[str] = mapped_column(String(128), unique=True)
    # UTS #39 skeleton of the name (app.names.name_skeleton): a registration whose skeleton
    # is already here is taken. Not unique: names on the chain before the rule may collide.
    skeleton: Mapped[str] = mapped_column(Text, index=True, default=_skeleton_of_row)
    addr: Mapped[str] = mapped_column(String(40), index=True)
    owner: Mapped[str] = mapped_column(String(40))
    publickey: Mapped[str | None] = mapped_column(Text)
    signature: Mapped[str | None] = mapped_column(Text)
    # True while this server's registration has not been confirmed on chain.
    pending: Mapped[bool] = mapped_column(default=False)
    # The block of the latest event (or confirmed registration) that wrote this record.
    block_number: Mapped[int | None] = mapped_column(BigInteger, index=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Registration(Base):
    """A registration this server accepted, and what became of it on chain."""

    __tablename__ = "registrations"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    folded_name: Mapped[str] = mapped_column(String(128), index=True)
    addr: Mapped[str] = mapped_column(String(40))
    owner: Mapped[str] = mapped_column(String(40))
    publickey: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    # While pending or confirmed the registration holds its name and its address; the
    # unique constraints make two concurrent acceptances impossible. NULL once failed.
    claim_name: Mapped[str | None] = mapped_column(String(128), unique=True)
    claim_addr: Mapped[str | None] = mapped_column(String(40), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    nonce: Mapped[int | None] = mapped_column(BigInteger)
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    # The signed transaction, kept so that a restart re-broadcasts the very same bytes.
    raw_tx: Mapped[str | None] = mapped_column(Text)
    block: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class IndexedBlock(Base):
    """Hashes of the recently indexed blocks, to notice a reorg and find where it forked."""

    __tablename__ = "indexed_blocks"

    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(66))


class Meta(Base):
    """Small facts the server remembers: the registrar address, the chain id."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


PENDING = "pending"
CONFIRMED = "confirmed"
FAILED = "failed"
