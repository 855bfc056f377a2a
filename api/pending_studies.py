"""Read-your-writes for a study search without waiting, when nothing pending can change it.

A search waits until the projections cover the log end it saw (DESIGN.md,
read-your-writes). Under a steady C-STORE load that wait is a projector batch
and a half (~100-300 ms here) on every search, while the search itself takes
a few milliseconds. Most searches cannot be changed by the few events not yet
projected: a modality storing into its own study does not change which
studies match a name or a date, nor what those studies' answers say.

So before waiting, a study search answered from the study memory looks at the
events between the projector's position and the log end. It goes ahead at
once when every one of them is an InstanceStored and:

* an instance it moves away from another study (its SOP Instance UID stored
  there before, `receipt_by_sop`) leaves a study that does not match now
  (losing an instance only narrows a study: it cannot start to match). Only
  the UIDs a per-process filter may hold are looked up (api.stored_sops).
* the studies the events store into keep the memory's rows when they match
  neither now nor with the event's own attributes and the study's
  modalities and SOP classes widened by every pending instance (each event
  in turn is the study's newest, so each one's attributes are checked: no
  state in between may match either); the rows of the others are made as
  the projector will make them (api.pending_patch), for this search alone.

Anything else waits as before: another event type that changes studies, a
sidecar (metadata in the blob store), a name or time that is not ASCII (the
memory's lowered and normalised values come from ClickHouse), more than
PENDING_MAX events, a search the memory does not answer, a log other than the
embedded one (reading a Kafka log per search costs more than the wait).
The answer is then the one the search would have given after its wait, or
one of a later log end.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from api.pending_patch import Pending, derived, patched
from api.pending_tally import StudyTallies, follow_in_background, tallies_for
from api.query_model import Level, Query
from api.roles import ProjectionFeed
from api.stored_sops import StoredSops, stored_sops_for
from api.study_memory import memory_for
from api.study_memory_match import Check, matches, predicates
from api.study_snapshot import Snapshot, StudyRow
from infra.errors import ChronicleError
from infra.ports import EventLog, LogRecord, ProjectionStore, covers
from infra.sqlite_log import PARTITION, SqliteEventLog
from projections.rows import rows_for
from schemas import codec
from schemas.events import InstanceStored, StorageCommitmentReported, StorageCommitmentRequested

log = logging.getLogger("chronicle.pending")

#: Past this many pending events the wait is cheaper than reading them (each
#: process decodes each event once, ~0.3 ms, and keeps it: DECODED_MAX).
PENDING_MAX = 1024
#: Pending events kept decoded per process (a few seconds of ingest).
DECODED_MAX = 4096
#: Events that change no study table.
_IGNORED = frozenset({StorageCommitmentRequested.TYPE, StorageCommitmentReported.TYPE})
_MOVED_SQL = (
    "SELECT DISTINCT sop_instance_uid, study_instance_uid FROM receipt_by_sop"
    " WHERE sop_instance_uid IN {uids:Array(String)}"
)


def without_waiting(
    event_log: EventLog | None,
    projector: ProjectionFeed | None,
    index: ProjectionStore,
    query: Query,
) -> Snapshot | None:
    """The study memory's rows to answer the study search `query` from now,
    without a read-your-writes wait: they cover the log end, or no event short
    of it can change the answer. None: wait, then search as usual."""
    if query.level is not Level.STUDY or projector is None:
        return None
    if not isinstance(event_log, SqliteEventLog):
        return None
    memory = memory_for(index)
    checks = predicates(query) if memory is not None else None
    if memory is None or checks is None:
        return None
    tallies = tallies_for(event_log)
    if tallies is not None:
        tallies.touch()
    try:
        snapshot = memory.latest(projector.checkpoint)
        if snapshot is None or snapshot.position is None:
            return None
        position = snapshot.position
        stored = stored_sops_for(event_log, index)
        stored.prepare(projector.checkpoint)  # built before it is needed
        target = event_log.end()
        if covers(position, target):
            return snapshot
        pending = sum(max(0, o - position.get(p, 0)) for p, o in target.items())
        if pending > PENDING_MAX:
            return None
        events = _DECODED.between(event_log, position.get(PARTITION, 0), target[PARTITION])
        if events is None:
            return None
        changed = _changed(snapshot, checks, events)
        if changed is None or _left_studies_match(index, stored, snapshot, checks, events):
            return None
        if not changed:
            return snapshot
        wanted = sorted(changed)
        known = tallies.current(wanted, position.get(PARTITION, 0), events) if tallies else None
        return patched(index, snapshot, events, wanted, known)
    except ChronicleError as exc:  # the wait decides, and says what failed
        log.debug("pending events not checked: %s", exc)
        return None


def _changed(snapshot: Snapshot, checks: Sequence[Check], events: list[Pending]) -> set[str] | None:
    """The studies pending events may change in the search's answer (each
    one's rows are then made afresh), or None when one cannot be told."""
    by_study: dict[str, list[Pending]] = {}
    for event in events:
        by_study.setdefault(event.study, []).append(event)
    changed: set[str] = set()
    for study, mine in by_study.items():
        current = snapshot.by_uid.get(study)
        if current is not None and matches(current, checks):
            changed.add(study)
            continue
        mods = set(current.modalities) if current else set()
        classes = set(current.sop_classes) if current else set()
        mods.update(event.modality for event in mine)
        classes.update(event.sop_class for event in mine)
        # Events with the same attributes make the same candidate row: each
        # distinct one is checked (a study's instances nearly always agree).
        distinct = {event.attributes_key: event.attributes for event in mine}
        for attributes in distinct.values():
            candidate = _candidate(attributes, mods, classes)
            if candidate is None:
                return None
            if matches(candidate, checks):
                changed.add(study)
                break
    return changed


class _Decoded:
    """Pending events as `_stored` reads them, kept per log record: every search
    in the second or so before the next batch reads the same ones (decoding
    an event and deriving its rows costs ~0.3 ms of Python)."""

    def __init__(self, bound: int = DECODED_MAX) -> None:
        self._bound = bound
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, int, int], tuple[Pending, ...] | None] = OrderedDict()

    def between(self, event_log: SqliteEventLog, start: int, stop: int) -> list[Pending] | None:
        """The events at offsets [start, stop): those not kept yet are read
        (the log is read from the first of them on, not from `start`)."""
        where = str(event_log.path)
        with self._lock:
            kept = [self._kept.get((where, PARTITION, o), _UNREAD) for o in range(start, stop)]
        first = next((n for n, found in enumerate(kept) if found is _UNREAD), len(kept))
        if any(found is None for found in kept[:first]):
            return None
        events = [event for found in kept[:first] for event in found]
        if first == len(kept):
            return events
        read = event_log.read({PARTITION: start + first}, stop - start - first)
        records = [r for r in read if r.offset < stop]
        if len(records) != stop - start - first:
            return None
        rest = self.events(where, records)
        return None if rest is None else events + rest

    def events(self, where: str, records: list[LogRecord]) -> list[Pending] | None:
        events: list[Pending] = []
        for record in records:
            key = (where, record.partition, record.offset)
            with self._lock:
                found = self._kept.get(key, _UNREAD)
            if found is _UNREAD:
                found = _stored(record)
                with self._lock:
                    self._kept[key] = found
                    while len(self._kept) > self._bound:
                        self._kept.popitem(last=False)
            if found is None:
                return None
            events += found
        return events


#: Not read yet (None is kept for an event that is not simple).
_UNREAD: Any = object()


def _stored(record: LogRecord) -> tuple[Pending, ...] | None:
    """A pending InstanceStored as the search and the patch read it; nothing
    for an event that changes no study; None for one that is not that simple."""
    try:
        if codec.peek_type(record.value) in _IGNORED:
            return ()
        envelope = codec.decode(record.value)
    except codec.DecodeError:
        return None
    payload = envelope.payload
    if not isinstance(payload, InstanceStored) or payload.sidecar or payload.frames_sidecar:
        return None
    rows = rows_for(record, envelope, None).tables
    series = rows["series"][0]
    attributes = dict(rows["study"][0])
    return (
        Pending(
            payload.study_instance_uid,
            payload.series_instance_uid,
            payload.sop_instance_uid,
            str(series["modality"]),
            payload.sop_class_uid,
            record.version,
            attributes,
            _attributes_key(attributes),
        ),
    )


def _attributes_key(attributes: dict[str, Any]) -> bytes:
    """What a search checks of a study row: all but its version (the event's)."""
    checked = {name: value for name, value in attributes.items() if name != "version"}
    return orjson.dumps(checked, option=orjson.OPT_SORT_KEYS, default=str)


_DECODED = _Decoded()


def follow_pending(
    event_log: EventLog | None, projector: ProjectionFeed | None, index: ProjectionStore
) -> StudyTallies | None:
    """Start this serving process's study tallies (api.pending_tally) where
    searches may go ahead without waiting: an embedded log, a projector feed."""
    if not isinstance(event_log, SqliteEventLog) or projector is None:
        return None
    return follow_in_background(event_log, index, projector.checkpoint, _DECODED)


def _left_studies_match(
    index: ProjectionStore,
    stored: StoredSops,
    snapshot: Snapshot,
    checks: Sequence[Check],
    events: list[Pending],
) -> bool:
    """Whether an instance moves away from a study that matches now. Only the
    UIDs with a receipt in the snapshot's rows can move (a receipt made after
    them is a pending event, whose own study was checked): those the filter
    may hold are asked by SQL."""
    going = {event.sop: event.study for event in events}
    position = snapshot.position or {}
    asked = stored.may_hold(going, position) if going else set()
    if not asked:
        return False
    for sop, study in index.query(_MOVED_SQL, {"uids": sorted(asked)}):
        if str(study) != going[str(sop)]:
            left = snapshot.by_uid.get(str(study))
            if left is not None and matches(left, checks):
                return True
    return False


def _candidate(
    attributes: dict[str, Any], modalities: set[str], classes: set[str]
) -> StudyRow | None:
    """The study's row as this event would leave it, or None when its values
    are not ones Python derives as ClickHouse does (non-ASCII names, times)."""
    found = derived(attributes)
    if found is None:
        return None
    return StudyRow(
        {
            **found,
            "answer": "",
            "n_series": 1,
            "n_instances": 1,
            "modalities": sorted(modalities),
            "sop_classes": sorted(classes),
        }
    )
