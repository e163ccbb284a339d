"""Ready-to-send answers of recent successful lookups, kept coherent with SQL.

Every write this process makes or sees (a registration accepted or settled, a record the
indexer loaded, a rollback) forgets the entries it touches. Another server on the same
database changes records this process does not hear about, so entries also expire after
`ttl` seconds: that bounds how long a record changed elsewhere can be served stale.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable


class _Expiring:
    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            self.entries.pop(key, None)
            return None
        return found[1]

    def put(self, key: str, body: bytes) -> None:
        if self.ttl <= 0:
            return
        self.entries[key] = (time.monotonic() + self.ttl, body)
        self.entries.move_to_end(key)
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


class HotCache:
    """Answer bodies of `GET /name/{name}` by folded name and `GET /addr/{addr}` by ID."""

    # About 2 KB an answer with an RSA-4096 key: 20,000 is ~40 MB, and the hot set of a
    # community's names; anything colder is one SQL read away.
    def __init__(self, ttl: float, max_entries: int = 20_000) -> None:
        self.names = _Expiring(ttl, max_entries)
        self.addrs = _Expiring(ttl, max_entries)

    def forget_names(self, folded_names: Iterable[str]) -> None:
        for folded in folded_names:
            self.names.entries.pop(folded, None)
        # The addresses those names pointed at are not known here: their reverse answers
        # may have changed too (setAddress, disown), and they are cheap to rebuild.
        self.addrs.entries.clear()

    def clear(self) -> None:
        self.names.entries.clear()
        self.addrs.entries.clear()
