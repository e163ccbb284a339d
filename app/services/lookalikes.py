"""No two names alike: is a name that looks like this one (same UTS #39 skeleton) taken?

The answer comes from SQL, which holds every name this server accepted and every name it
has seen on the chain (the indexer follows the registrar's events; lookups fill on read).
The chain itself cannot be asked: the contract finds a name by its exact bytes, not by what
it looks like. A name written on the chain by someone else and not yet indexed is therefore
not seen here, for the few seconds until the indexer catches up.

Two look-alike registrations checked at the same instant both pass this check; the unique
index over the skeletons of pending names (app/models.py) then refuses the second insert,
which the registry answers as taken.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import names
from app.db import session_scope
from app.models import NameRecord

logger = logging.getLogger(__name__)


async def lookalike_taken(sessionmaker: async_sessionmaker[AsyncSession], name: str) -> str | None:
    """The taken name that looks like `name` but is another name (another fold), or None."""
    key = names.name_skeleton(name)
    folded = names.fold(name)
    async with session_scope(sessionmaker) as session:
        found = await session.scalar(
            select(NameRecord.name)
            .where(NameRecord.skeleton == key, NameRecord.folded_name != folded)
            .limit(1)
        )
    if found is not None:
        logger.info("registration of %r refused: looks like %r", name, found)
    return found
