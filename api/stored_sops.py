"""Which SOP Instance UIDs the projections may hold a receipt of, per process.

A study search that need not wait (api.pending_studies) asks, of every
pending InstanceStored, whether its SOP Instance UID was stored before under
another study (the instance would move). Asked of receipt_by_sop for every
search, that was a statement through the index owner per search: during the
soak (145 C-STORE/s) 10.5 ms at the median and 94 ms at the p99 of a search
whose server time was 17 ms. A new instance, nearly every one, has no
receipt at all. A Bloom filter of the UIDs with a receipt says "certainly
none" of it without a statement; only the UIDs it may hold (a real re-send,
or about 1 % of new ones) are asked by SQL as before.

The filter is built once per process from receipt_by_sop (the MD5 of every
UID, a page at a time on a thread of its own: at a million receipts 2.4 MB
of bits and ~12 MB more resident; until then every UID is asked) and
follows the log: before it answers
for the rows at a projector position it adds the InstanceStored events up to
there. Every receipt the projections hold at that position is therefore in
it; it may hold more, which only costs a statement.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping

import numpy as np
import orjson

from infra.ports import ProjectionStore, covers
from infra.sqlite_log import SqliteEventLog
from schemas import codec
from schemas.events import InstanceStored

log = logging.getLogger("chronicle.stored_sops")

#: Hash functions per UID and bits per expected UID: about 1 % false positives.
HASHES = 7
BITS_PER_UID = 9.6
#: Room for this many UIDs at least; a filter past its room is built again,
#: twice as large, on its thread (it answers meanwhile, a little less sharply).
FLOOR = 1 << 16
#: Past this many events to follow at once, building afresh costs less.
FOLLOW_MAX = 20_000
RETRY_SECONDS = 30.0
#: Answers kept at most (a few seconds of ingest); then forgotten at once.
ANSWERS_MAX = 50_000
#: The build reads the UIDs a page at a time in key order, pausing between
#: pages: one statement for a million UIDs held the index owner's interpreter
#: (and every search it served) for a second while it made the list, and
#: large temporaries left the heap grown (below, Bloom.add_hashes).
PAGE = 16_384
PAGE_PAUSE = 0.01
_COUNT_SQL = "SELECT count() FROM receipt_by_sop"
_PAGE_SQL = (
    "SELECT count(), max(sop_instance_uid), groupArray(reinterpretAsUInt64(MD5(sop_instance_uid)))"
    " FROM (SELECT sop_instance_uid FROM receipt_by_sop WHERE sop_instance_uid > {after:String}"
    " ORDER BY sop_instance_uid LIMIT {page:UInt32})"
)


def uid_hash(uid: str) -> int:
    """ClickHouse's reinterpretAsUInt64(MD5(uid)) in Python."""
    return int.from_bytes(hashlib.md5(uid.encode()).digest()[:8], "little")


class Bloom:
    """A Bloom filter of 64-bit hashes (double hashing over their two halves)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(FLOOR, capacity)
        self.size = int(self.capacity * BITS_PER_UID) | 7
        self.count = 0
        self._bits = bytearray(self.size // 8 + 1)

    def add_hashes(self, hashes: np.ndarray) -> None:
        """A page of hashes at once. In pages, not all at once: glibc keeps
        the heap a freed temporary of tens of MB grew (the owner kept 60 MB
        after building a million UIDs' filter in one go)."""
        bits = np.frombuffer(self._bits, dtype=np.uint8)
        h = hashes.astype(np.uint64, copy=False)
        low, high = h & np.uint64(0xFFFFFFFF), (h >> np.uint64(32)) | np.uint64(1)
        for i in range(HASHES):
            places = (low + np.uint64(i) * high) % np.uint64(self.size)
            masks = np.left_shift(np.uint8(1), (places & np.uint64(7)).astype(np.uint8))
            np.bitwise_or.at(bits, (places >> np.uint64(3)).astype(np.intp), masks)
        self.count += len(h)

    def _places(self, h: int) -> list[int]:
        low, high = h & 0xFFFFFFFF, (h >> 32) | 1
        return [(low + i * high) % self.size for i in range(HASHES)]

    def add(self, uid: str) -> None:
        for place in self._places(uid_hash(uid)):
            self._bits[place >> 3] |= 1 << (place & 7)
        self.count += 1

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, str):
            return False
        bits = self._bits
        return all(bits[p >> 3] >> (p & 7) & 1 for p in self._places(uid_hash(uid)))


class StoredSops:
    """The filter of one process over one log and index (see the module)."""

    def __init__(self, event_log: SqliteEventLog, index: ProjectionStore) -> None:
        self._log, self._index = event_log, index
        self._lock = threading.Lock()
        self._bloom: Bloom | None = None
        self._position: dict[int, int] = {}
        self._building = False
        self._not_before = 0.0
        #: The filter's answers since it last changed: every search in the
        #: second before the next projector batch asks of the same pending UIDs
        #: (~200 at 200 C-STORE/s), and an MD5 and seven probes each cost
        #: ~10 us of Python.
        self._answers: dict[str, bool] = {}

    def may_hold(self, uids: Collection[str], position: Mapping[int, int]) -> set[str]:
        """The UIDs among `uids` that may have a receipt in the rows at
        `position`: all of them until the filter is built (`prepare`) or when
        the log cannot be followed."""
        with self._lock:
            bloom = self._bloom
            if bloom is None or not self._follow(bloom, position):
                return set(uids)
            answers = self._answers
            if len(answers) > ANSWERS_MAX:
                answers.clear()
            held: set[str] = set()
            for uid in uids:
                found = answers.get(uid)
                if found is None:
                    found = answers[uid] = uid in bloom
                if found:
                    held.add(uid)
            return held

    def prepare(self, checkpoint: Callable[[], Mapping[int, int]]) -> None:
        """Start building the filter on a thread of its own, when it is not
        built (or is full). `checkpoint`: where the projections stand, asked
        only then (a lower bound of what the build's statements read)."""
        with self._lock:
            bloom = self._bloom
            if bloom is not None and bloom.count <= bloom.capacity:
                return
            if self._building or time.monotonic() < self._not_before:
                return
            self._building = True
            start = dict(checkpoint())
        threading.Thread(target=self._build, args=(start,), daemon=True).start()

    def build(self, start: dict[int, int]) -> None:
        """Build the filter from receipt_by_sop, which holds every receipt up
        to `start` at least (rows added while it pages are of later events:
        followed from the log), and follow the log from there."""
        [(total,)] = self._index.query(_COUNT_SQL)
        bloom = Bloom(2 * int(total))
        after = ""
        while True:
            [(count, last, page)] = self._index.query(_PAGE_SQL, {"after": after, "page": PAGE})
            bloom.add_hashes(np.array(page, dtype=np.uint64))
            if int(count) < PAGE:
                break
            after = str(last)
            time.sleep(PAGE_PAUSE)
        with self._lock:
            self._bloom, self._position = bloom, start
            self._answers.clear()

    def _build(self, start: dict[int, int]) -> None:
        try:
            self.build(start)
        except Exception as exc:  # searches ask SQL meanwhile; try again later
            log.warning("stored SOP filter not built: %s", exc)
            self._not_before = time.monotonic() + RETRY_SECONDS
        finally:
            self._building = False

    def _follow(self, bloom: Bloom, position: Mapping[int, int]) -> bool:
        """Add the events from the filter's position up to `position` (lock held)."""
        if covers(self._position, position):
            return True
        left = sum(max(0, o - self._position.get(p, 0)) for p, o in position.items())
        if left > FOLLOW_MAX:
            self._bloom = None  # built afresh (the next search's `prepare`)
            return False
        while not covers(self._position, position):
            records = self._log.read(self._position, min(left, 1000))
            wanted = [r for r in records if r.offset < position.get(r.partition, 0)]
            if not wanted:
                return False
            for record in wanted:
                uid = _stored_uid(record.value)
                if uid is _UNREADABLE:
                    return False
                if uid is not None:
                    bloom.add(uid)
                    self._answers.pop(uid, None)
                self._position[record.partition] = record.offset + 1
        return True


#: What `_stored_uid` answers for an event it cannot read.
_UNREADABLE = "\0unreadable"


def _stored_uid(value: bytes) -> str | None:
    """The SOP Instance UID an event stores, None when it stores none."""
    try:
        if codec.peek_type(value) != InstanceStored.TYPE:
            return None
        uid = orjson.loads(value)["payload"]["sop_instance_uid"]
        return uid if isinstance(uid, str) else _UNREADABLE
    except (codec.DecodeError, orjson.JSONDecodeError, KeyError, TypeError):
        return _UNREADABLE


_FILTERS: weakref.WeakKeyDictionary[SqliteEventLog, StoredSops] = weakref.WeakKeyDictionary()
_FILTERS_LOCK = threading.Lock()


def stored_sops_for(event_log: SqliteEventLog, index: ProjectionStore) -> StoredSops:
    """The process's filter over this log (one per log object)."""
    with _FILTERS_LOCK:
        found = _FILTERS.get(event_log)
        if found is None:
            found = _FILTERS[event_log] = StoredSops(event_log, index)
        return found
