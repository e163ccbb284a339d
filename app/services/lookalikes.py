"""No two names alike: a name that looks like a taken one (same UTS #39 skeleton) is taken.

The taken look-alike comes from SQL (`LookupReader.claims`, in the one read a registration
makes before it is accepted), which holds every name this server accepted and every name
it has seen on the chain (the indexer follows the registrar's events; lookups fill on
read). The chain itself cannot be asked: the contract finds a name by its exact bytes, not
by what it looks like. A name written on the chain by someone else and not yet indexed is
therefore not seen here, for the few seconds until the indexer catches up.

Two look-alike registrations checked at the same instant both pass this check; the unique
index over the skeletons of pending names (app/models.py) then refuses the second insert,
which the registry answers as taken.
"""

from __future__ import annotations

import logging

from app.errors import NameTaken

logger = logging.getLogger(__name__)


def refuse_lookalike(name: str, lookalike: str | None) -> None:
    """Raise NameTaken when `lookalike`, a taken name of another fold with the same
    skeleton as `name`, exists."""
    if lookalike is not None:
        logger.info("registration of %r refused: looks like %r", name, lookalike)
        raise NameTaken()
