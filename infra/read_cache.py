"""Answers to repeated reads of the embedded index, valid until its next write.

Viewers and worklists repeat the same searches; on chDB each costs a few
milliseconds of engine time however small the answer. In the embedded
deployment one process owns the index and every write goes through its
`ClickHouseStore`, so a generation counter bumped on each write tells
exactly when a stored answer may have changed: an answer is kept under the
generation it was read at, and only if no write started or finished while
it was being read. A ClickHouse server has writers elsewhere (projectors in
other processes), so the store uses no cache there.

Bounded by entries, rows per answer and an estimate of bytes; callers get
fresh row dicts, never the cached ones (they annotate rows in place). Besides
statement results it keeps whole answers built from them (`CachedReads.memo`:
a search's DICOM JSON), weighed by the caller.

A front-end worker reads the index through the owner (infra.proxy_index); its
cache `follow`s the owner's write counter in shared memory (infra.owner_state)
instead of counting writes itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

#: CHRONICLE_READ_CACHE=0 turns the cache off (benchmarks measure both ways).
READ_CACHE_ENV = "CHRONICLE_READ_CACHE"

Rows = list[dict[str, Any]]


class ReadCache:
    def __init__(
        self,
        *,
        max_entries: int = 256,
        max_rows: int = 2000,
        max_bytes: int = 32 << 20,
        follow: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self._entries: OrderedDict[Hashable, tuple[Rows, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        self._writing = 0
        self._bytes = 0
        self._max_entries = max_entries
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._follow = follow
        self._followed = -1
        self.hits = 0
        self.misses = 0

    def write_started(self) -> None:
        with self._lock:
            self._writing += 1
            self._invalidate()

    def write_finished(self) -> None:
        with self._lock:
            self._writing -= 1
            self._invalidate()

    def read(
        self, key: Hashable, run: Callable[[], Rows], weigh: Callable[[Rows], int] | None = None
    ) -> Rows:
        with self._lock:
            self._sync()
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return [dict(row) for row in found[0]]
            self.misses += 1
            generation = None if self._writing else self._generation
        rows = run()
        if generation is not None and len(rows) <= self._max_rows:
            self._keep(key, rows, generation, (weigh or _estimate)(rows))
        return rows

    def _keep(self, key: Hashable, rows: Rows, generation: int, size: int) -> None:
        with self._lock:
            self._sync()
            # One answer may take a sixteenth of the budget: a 10,000-match
            # C-FIND page does not push out every other kept answer.
            if generation != self._generation or self._writing or size > self._max_bytes // 16:
                return
            self._entries[key] = ([dict(row) for row in rows], size)
            self._bytes += size
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def _sync(self) -> None:
        """With `follow`: the owner's (write counter, writes in progress) decide."""
        if self._follow is None:
            return
        writes, in_progress = self._follow()
        if writes != self._followed:
            self._followed = writes
            self._invalidate()
        self._writing = in_progress

    def _invalidate(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._bytes = 0


def _estimate(rows: Rows) -> int:
    size = 0
    for row in rows:
        size += 64
        for value in row.values():
            size += len(value) if isinstance(value, str | bytes) else 16
    return size


class CachedReads:
    """Statements and whole answers kept in a ReadCache (None: nothing kept),
    for the stores that read the embedded index (ClickHouseStore in the owner,
    OwnerProjectionStore in its workers)."""

    def __init__(self, cache: ReadCache | None) -> None:
        self.cache = cache
        #: Set in a thread building a memo: its statements are not kept apart
        #: from the answer they make (the answer is kept, and is all that is read).
        self._building = threading.local()

    def statement(
        self, sql: str, parameters: Mapping[str, Any] | None, run: Callable[[], Rows]
    ) -> Rows:
        """`run()`'s rows for this statement, kept unless a memo is being built."""
        if self.cache is None or getattr(self._building, "active", False):
            return run()
        key = _statement_key(sql, parameters)
        return run() if key is None else self.cache.read(key, run)

    def memo(self, key: Hashable, build: Callable[[], Rows], weigh: Callable[[Rows], int]) -> Rows:
        """`build()`, kept like a statement's rows until the next write (fresh
        top-level dicts per call); built every time without a cache."""
        if self.cache is None:
            return build()

        def building() -> Rows:
            self._building.active = True
            try:
                return build()
            finally:
                self._building.active = False

        return self.cache.read(("memo", key), building, weigh)


def _statement_key(sql: str, parameters: Mapping[str, Any] | None) -> Hashable | None:
    """(sql, parameters) as a dict key; None when a value cannot be one."""
    frozen = tuple(sorted((k, _frozen(v)) for k, v in (parameters or {}).items()))
    try:
        hash(frozen)
    except TypeError:
        return None
    return (sql, frozen)


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value
