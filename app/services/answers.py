"""The one in-memory answer cache of lookups, and the stamp that keeps it coherent with SQL
and the chain.

It holds ready-to-send bodies of recent hits (names by fold, reverse answers by Jami ID),
keys recently found absent on chain (the negative caches), and the fold of recently seen
raw path segments (so a repeated lookup skips the name policy's per-character checks).

Every write this process makes or sees (a registration accepted or settled, a record the
indexer loaded, a rollback) goes through `changed()`, which forgets the entries it touches
and moves the generation on. A lookup takes a `stamp()` before it reads SQL or the chain,
and what it read is kept only if no change happened since: a read that raced a write never
puts back what the write removed. Another server on the same database changes records this
process does not hear about, so entries also expire after their ttl.

Every map is bounded by bytes (cachetools' `getsizeof`), least recently used first out: a
record registered on the contract directly may carry a public key far larger than a real
one, and a client may send any number of distinct paths.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable

from cachetools import LRUCache, TLRUCache

# What an entry costs beyond its body: the key (at most 128 characters folded), the map's
# slot, the expiry link. Over-estimated on purpose: the bound is a ceiling, not a count.
ENTRY_OVERHEAD_BYTES = 512
# One answer may take at most this share of its map: a single huge record never evicts
# everything else.
_LARGEST_SHARE = 100
# Expiries are spread over the last quarter of the ttl, by key: names first asked
# together (a client's contact list, a benchmark's set) would otherwise all expire at the
# same instant and be read from SQL at once, queueing every other request behind them.
_SPREAD = 0.25


def _spread(key: str) -> float:
    """A fixed fraction in [0, _SPREAD) of the ttl taken off this key's lifetime."""
    return (zlib.crc32(key.encode()) % 1024) / 1024 * _SPREAD


def answer_bytes(answer: dict[str, str]) -> bytes:
    """A JSON answer body as Starlette's JSONResponse would write it."""
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()


def _entry_bytes(body: bytes) -> int:
    return len(body) + ENTRY_OVERHEAD_BYTES


class _Expiring:
    """A byte-bounded LRU map whose entries live `ttl` seconds (less a per-key spread)."""

    def __init__(self, ttl: float, max_bytes: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_body = max_bytes // _LARGEST_SHARE
        self.entries: TLRUCache[str, bytes, float] = TLRUCache(
            max_bytes, self._expires, clock, getsizeof=_entry_bytes
        )

    def _expires(self, key: str, _body: bytes, now: float) -> float:
        return now + self.ttl * (1 - _spread(key))

    def get(self, key: str) -> bytes | None:
        try:
            return self.entries[key]
        except KeyError:
            return None

    def put(self, key: str, body: bytes) -> None:
        if self.ttl > 0 and _entry_bytes(body) <= self.max_body:
            self.entries[key] = body

    def pop(self, key: str) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()


# Folds of raw path segments: a segment longer than any valid name percent-encoded
# (32 bytes, 3 characters each) is never kept, so distinct long paths cost nothing lasting.
_FOLD_MAX_SEGMENT = 3 * 32
_UNSET = object()


def _fold_bytes(folded: str | None) -> int:
    return 2 * _FOLD_MAX_SEGMENT + 4 * len(folded or "") + 100


class Answers:
    """Answer bodies of `GET /name/{name}` by folded name and `GET /addr/{addr}` by ID,
    the names and IDs recently found absent on chain, and the fold of path segments."""

    # About 2 KB an answer with an RSA-4096 key: 64 MB is ~30,000 answers, the hot set of
    # a community's names; anything colder is one SQL read away.
    def __init__(
        self,
        *,
        ttl: float,
        negative_ttl: float = 0,
        max_bytes: int = 64 * 1024 * 1024,
        max_negative_bytes: int = 32 * 1024 * 1024,
        max_fold_bytes: int = 4 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = _Expiring(ttl, max_bytes, clock)
        self.addrs = _Expiring(ttl, max_bytes // 8, clock)
        self.missing_names = _Expiring(negative_ttl, max_negative_bytes, clock)
        self.missing_addrs = _Expiring(negative_ttl, max_negative_bytes, clock)
        self._folds: LRUCache[bytes, str | None] = LRUCache(max_fold_bytes, getsizeof=_fold_bytes)
        self.generation = 0

    # -- reading -------------------------------------------------------------------------

    def stamp(self) -> int:
        """Take before reading SQL or the chain; hand back to keep_* with what was read."""
        return self.generation

    def name_body(self, folded: str) -> bytes | None:
        return self.names.get(folded)

    def addr_body(self, jami_id: str) -> bytes | None:
        return self.addrs.get(jami_id)

    def name_missing(self, folded: str) -> bool:
        return self.missing_names.get(folded) is not None

    def addr_missing(self, jami_id: str) -> bool:
        return self.missing_addrs.get(jami_id) is not None

    def fold(self, segment: bytes, compute: Callable[[bytes], str | None]) -> str | None:
        """The fold of a raw path segment (None: not a valid name), `compute`d once."""
        found = self._folds.get(segment, _UNSET)
        if found is not _UNSET:
            return found  # type: ignore[return-value]
        folded = compute(segment)
        if len(segment) <= _FOLD_MAX_SEGMENT:
            self._folds[segment] = folded
        return folded

    # -- keeping what a lookup read --------------------------------------------------------

    def keep_name(self, folded: str, body: bytes, stamp: int | None) -> None:
        """Keep a name's answer read at `stamp` (None: not to be kept, e.g. a pending
        registration), unless anything changed since."""
        if stamp is not None and stamp == self.generation:
            self.names.put(folded, body)

    def keep_addr(self, jami_id: str, body: bytes, stamp: int | None) -> None:
        if stamp is not None and stamp == self.generation:
            self.addrs.put(jami_id, body)

    def keep_missing_name(self, folded: str, stamp: int) -> None:
        if stamp == self.generation:
            self.missing_names.put(folded, b"-")

    def keep_missing_addr(self, jami_id: str, stamp: int) -> None:
        if stamp == self.generation:
            self.missing_addrs.put(jami_id, b"-")

    # -- the one invalidation entry point --------------------------------------------------

    def changed(self, *, folded_names: Iterable[str] = (), jami_ids: Iterable[str] = ()) -> None:
        """These names (folded) and these Jami IDs changed: forget what is cached of them,
        and refuse to keep anything read before now."""
        self.generation += 1
        any_name = False
        for folded in folded_names:
            any_name = True
            self.names.pop(folded)
            self.missing_names.pop(folded)
        if any_name:
            # The addresses those names pointed at, before and after, are not known here:
            # their reverse answers may have changed too (setAddress, disown), and they
            # are cheap to rebuild.
            self.addrs.clear()
            self.missing_addrs.clear()
        for jami_id in jami_ids:
            self.addrs.pop(jami_id)
            self.missing_addrs.pop(jami_id)
