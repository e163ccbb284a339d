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
    """Bounded by entries and by bytes: a record registered on the contract directly may
    carry a public key far larger than any real one."""

    def __init__(self, ttl: float, max_entries: int, max_bytes: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            self.pop(key)
            return None
        return found[1]

    def put(self, key: str, body: bytes) -> None:
        if self.ttl <= 0 or len(body) > self.max_bytes // 100:
            return
        self.pop(key)
        self.entries[key] = (time.monotonic() + self.ttl, body)
        self.size += len(key) + len(body)
        while len(self.entries) > self.max_entries or self.size > self.max_bytes:
            old_key, (_, old_body) = self.entries.popitem(last=False)
            self.size -= len(old_key) + len(old_body)

    def pop(self, key: str) -> None:
        found = self.entries.pop(key, None)
        if found is not None:
            self.size -= len(key) + len(found[1])

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0


class HotCache:
    """Answer bodies of `GET /name/{name}` by folded name and `GET /addr/{addr}` by ID."""

    # About 2 KB an answer with an RSA-4096 key: 20,000 is ~40 MB, and the hot set of a
    # community's names; anything colder is one SQL read away.
    def __init__(
        self, ttl: float, max_entries: int = 20_000, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.names = _Expiring(ttl, max_entries, max_bytes)
        self.addrs = _Expiring(ttl, max_entries, max_bytes // 8)

    def forget_names(self, folded_names: Iterable[str]) -> None:
        for folded in folded_names:
            self.names.pop(folded)
        # The addresses those names pointed at are not known here: their reverse answers
        # may have changed too (setAddress, disown), and they are cheap to rebuild.
        self.addrs.clear()

    def clear(self) -> None:
        self.names.clear()
        self.addrs.clear()
