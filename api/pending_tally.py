"""Each study the log stores into, its instances' newest versions kept as the log goes on.

A study search that pending events change makes those studies' rows itself
(api.pending_patch). It read what the index holds of them with two
statements through the index owner, per search: under the soak those took
27-190 ms while the projector's batches kept the owner's chDB busy, and
these ~1.5 % of searches made the QIDO p99.

So each serving process follows the log on a thread of its own. For every
study an event stores into, it reads once what the index holds (the same two
statements, off any search's path) and from then on counts each event
itself, the newest version winning as in the patch: an event the index
already held counts once. A tally at offset `at` is therefore the log's state
of that study up to `at`, exactly. A search whose snapshot position is at or
before every tally it needs counts its own pending events on copies of
them (the events past `at`; the others count once) and needs no statement;
any other search patches by SQL as before.

The thread also decodes each event before any search asks for it
(pending_studies._Decoded), so searches no longer pay for that either.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from api.pending_patch import (
    NO_ATTRIBUTES,
    Attributes,
    Known,
    Pending,
    Version,
    count_event,
    index_attributes,
    index_versions,
)
from infra.ports import ProjectionStore
from infra.priority import lower_this_thread
from infra.sqlite_log import PARTITION, SqliteEventLog

log = logging.getLogger("chronicle.pending")

#: How often the thread looks for new events.
FOLLOW_SECONDS = 0.05
#: Studies kept (the ones stored into last); a modality stores into one at a time.
MAX_STUDIES = 64
#: Studies first read per round: the rest are read in the next rounds.
READS_PER_ROUND = 4
#: A tally is read only when the projections are at most this far behind
#: the tallies (the events in between are counted from the log), and the
#: tallies farther behind the log end start again there.
MAX_BEHIND = 1024
RETRY_SECONDS = 5.0
#: The thread follows only while searches came this recently: decoding every
#: event in every process costs C-STORE throughput when nobody searches
#: (~0.3 ms an event; the scale suite's C-STORE ratio fell to 1.15x with it).
IDLE_SECONDS = 30.0


class Decoder(Protocol):
    def between(self, event_log: SqliteEventLog, start: int, stop: int) -> list[Pending] | None:
        """The events at offsets [start, stop), or None when one is not simple."""


@dataclass
class Tally:
    """One study: the newest version of every instance it ever held, and its
    newest attributes, with every event before its tallies' `at` counted."""

    study: str
    versions: dict[str, Version] = field(default_factory=dict)
    attributes: Attributes = NO_ATTRIBUTES

    def count(self, events: Iterable[Pending]) -> None:
        for event in events:
            self.attributes = count_event(self.study, self.versions, self.attributes, event)

    def copy(self) -> Tally:
        return Tally(self.study, dict(self.versions), self.attributes)


class StudyTallies:
    """The tallies of one process's log, every one counted up to offset `at`;
    `advance` is the following thread's step (the only one that moves `at`)."""

    def __init__(self, event_log: SqliteEventLog, index: ProjectionStore, decoded: Decoder) -> None:
        self._log, self._index, self._decoded = event_log, index, decoded
        self._lock = threading.Lock()
        self._tallies: OrderedDict[str, Tally] = OrderedDict()
        self._unread: OrderedDict[str, None] = OrderedDict()
        self.at: int | None = None
        #: Not wanted until the first search: a process that only stores (a
        #: modality's burst right after start) decodes nothing for nobody.
        self.asked = -IDLE_SECONDS

    def touch(self) -> None:
        """A search may need the tallies: follow the log (again)."""
        self.asked = time.monotonic()

    def wanted(self) -> bool:
        """Whether a search came lately (`touch`); no before the first."""
        return time.monotonic() - self.asked < IDLE_SECONDS

    def advance(self, checkpoint: Mapping[int, int]) -> None:
        """Count the events up to the log end, then read the studies new among them.
        Too far behind (an idle spell, a backlog) the tallies start again there."""
        stop = self._log.end().get(PARTITION, 0)
        start = checkpoint.get(PARTITION, 0) if self.at is None else self.at
        if stop - start > MAX_BEHIND:
            self._count(None, stop)
        elif stop > start:
            events = self._decoded.between(self._log, start, stop)
            self._count(events, stop)
        for study in list(self._unread)[:READS_PER_ROUND]:
            self._read(study, checkpoint)

    def current(
        self, studies: Sequence[str], position: int, pending: Sequence[Pending]
    ) -> Known | None:
        """The studies' instances and attributes with `pending` (every event
        from the search's snapshot `position` to its log end) counted too, or
        None when a tally is missing or the tallies start after `position`."""
        with self._lock:
            if self.at is None or self.at < position:
                return None
            found = [self._tallies.get(study) for study in studies]
            if any(tally is None for tally in found):
                return None
            copies = [tally.copy() for tally in found if tally is not None]
        versions: dict[str, Version] = {}
        attributes: dict[str, Attributes] = {}
        for tally in copies:
            tally.count(pending)
            for sop, version in tally.versions.items():
                held = versions.get(sop)
                if held is None or version.version > held.version:
                    versions[sop] = version
            attributes[tally.study] = tally.attributes
        return versions, attributes

    def studies(self) -> list[str]:
        with self._lock:
            return list(self._tallies)

    def _count(self, events: list[Pending] | None, stop: int) -> None:
        with self._lock:
            if events is None:  # an event that is not simple: start again from here
                self._tallies.clear()
                self._unread.clear()
            else:
                for tally in self._tallies.values():
                    tally.count(events)
                for event in events:
                    if event.study in self._tallies:
                        self._tallies.move_to_end(event.study)
                    else:
                        self._unread[event.study] = None
                        self._unread.move_to_end(event.study)
                while len(self._unread) > MAX_STUDIES:
                    self._unread.popitem(last=False)
            self.at = stop

    def _read(self, study: str, checkpoint: Mapping[int, int]) -> None:
        """Read what the index holds of `study` (at `checkpoint` at least) and
        count the events from there to the tallies' offset."""
        at, start = self.at or 0, checkpoint.get(PARTITION, 0)
        with self._lock:
            self._unread.pop(study, None)
        if at - start > MAX_BEHIND:
            return
        tally = Tally(study)
        tally.versions = index_versions(self._index, [study], [])
        tally.attributes = index_attributes(self._index, [study]).get(study, NO_ATTRIBUTES)
        events = self._decoded.between(self._log, start, at) if at > start else []
        if events is None:
            return
        tally.count(events)
        with self._lock:
            self._tallies[study] = tally
            while len(self._tallies) > MAX_STUDIES:
                self._tallies.popitem(last=False)


_TALLIES: weakref.WeakKeyDictionary[SqliteEventLog, StudyTallies] = weakref.WeakKeyDictionary()
_TALLIES_LOCK = threading.Lock()


def tallies_for(event_log: SqliteEventLog) -> StudyTallies | None:
    """The tallies this process keeps of `event_log`, if it follows it."""
    with _TALLIES_LOCK:
        return _TALLIES.get(event_log)


def register(tallies: StudyTallies, event_log: SqliteEventLog) -> None:
    with _TALLIES_LOCK:
        _TALLIES[event_log] = tallies


def follow_in_background(
    event_log: SqliteEventLog,
    index: ProjectionStore,
    checkpoint: Callable[[], Mapping[int, int]],
    decoded: Decoder,
) -> StudyTallies:
    """Start following `event_log` on a thread of its own (a serving process's start)."""
    tallies = StudyTallies(event_log, index, decoded)
    register(tallies, event_log)

    def follow() -> None:
        lower_this_thread()  # background work: searches and stores go first
        while True:
            try:
                if tallies.wanted():
                    tallies.advance(checkpoint())
            except Exception as exc:  # searches patch by SQL meanwhile
                log.warning("pending-study tallies paused: %s", exc)
                time.sleep(RETRY_SECONDS)
            time.sleep(FOLLOW_SECONDS)

    threading.Thread(target=follow, name="study-tallies", daemon=True).start()
    return tallies
