"""Study searches answered from memory: each process keeps study_stats' rows.

A study search at a million instances cost ~12 ms of CPU on this machine, most
of it not the match itself: chDB's charge per statement and per returned row,
and, in a worker process, the hop to the owner and back. A study row is small
(10,000 studies hold ~10 MiB as Python objects), so every process keeps the
live table, sorted in the answer order, and answers QIDO-RS /studies and
C-FIND at STUDY level from it:

* Freshness follows the index's count of the writes that may change
  study_stats (`study_generation`; `generation`, the count of all writes,
  where a store keeps no such count). After such a write the next search
  reads the rows whose version is at least the newest one it holds
  (`version` grows with every projector batch, and a replay writes every row
  at the log's length), so a refresh reads what the batches since wrote, not
  the table. The same statement counts the
  table's studies: a new study written below that version (a Kafka group
  member's count of events drops when it gives up partitions) makes the
  counts differ, and every row is read again. A search runs after its
  read-your-writes wait, so the rows it needs are in the table by then; or,
  from the newest rows held, when no event still pending can change its
  answer (`latest`, api.pending_studies).
* Matching mirrors `api.query_sql` rule for rule. What SQL computes and Python
  could compute differently (`lowerUTF8`, a stored time's normal form) is read
  from SQL, as columns of the refresh; a PN value with non-ASCII letters
  (lowered by ClickHouse on the SQL side) goes to SQL. `conditions()` still
  builds the SQL conditions, so a query SQL refuses is refused the same way.
  A Hypothesis test holds both to the same answers.
* Candidates come from the cheapest index the query allows (UID or exact
  value -> dict, a date range -> a slice of the sorted rows, a name -> one
  regular expression over every name joined) and every condition is checked
  on each candidate.

Only where `generation` exists (chDB embedded, and its workers): a ClickHouse
server has writers this process does not see. CHRONICLE_STUDY_MEMORY=0 turns
it off.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from api.query_model import Level, Query
from api.query_sql import Params, _tm_sql, conditions
from api.study_memory_match import candidates, matches, predicates
from api.study_snapshot import Snapshot, StudyRow
from infra.ports import ProjectionStore

log = logging.getLogger("chronicle.study_memory")
MEMORY_ENV = "CHRONICLE_STUDY_MEMORY"
#: Past this many studies a refresh's re-sort costs more than a statement.
MAX_STUDIES = 300_000
#: How often an idle refresher looks whether its memory is still wanted.
REFRESHER_IDLE_SECONDS = 5.0

#: PN columns held lowered (`lowerUTF8`) and TM columns held in normal form
#: (`_tm_sql`): values SQL derives, which Python could derive differently.
PN_COLUMNS = ("patient_name", "referring_physician_name")
TM_COLUMNS = ("patient_birth_time", "study_time")
_PLAIN = (
    "study_instance_uid", "version", "answer", "n_series", "n_instances", "modalities",
    "sop_classes", "patient_id", "issuer_of_patient_id", "patient_birth_date",
    "patient_birth_time", "patient_sex", "study_date", "study_time", "accession_number",
    "study_id", "study_description",
)  # fmt: skip
#: Those values as SQL columns (also api.pending_patch's).
DERIVED_COLUMNS = [f"lowerUTF8({c}) AS {c}_lower" for c in PN_COLUMNS] + [
    f"{_tm_sql(c)} AS {c}_tm" for c in TM_COLUMNS
]
REFRESH_SQL = (
    f"SELECT {', '.join(_PLAIN)}, "
    + ", ".join([*(f"{c}_norm" for c in PN_COLUMNS), *DERIVED_COLUMNS])
    + ", (SELECT count() FROM study_stats FINAL) AS total"
    + " FROM study_stats WHERE version >= {since:UInt64}"
)


class StudyMemory:
    """One process's copy of study_stats for one store, refreshed by write generation."""

    def __init__(self, index: ProjectionStore) -> None:
        self._index = weakref.ref(index)
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        #: Where the projections stand (api.pending_studies): read before each
        #: refresh, so a snapshot covers at least that position.
        self._position_of: Callable[[], dict[int, int]] | None = None
        self._wanted = threading.Event()
        self._refresher: threading.Thread | None = None
        self._refresher_lock = threading.Lock()

    def search(
        self, query: Query, snapshot: Snapshot | None = None
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """(rows as the SQL study search returns them, more follow?), or None:
        this query (or this store) is one for SQL. From `snapshot` when given,
        else from the rows at the store's current write generation."""
        found = self.search_rows(query, snapshot)
        if found is None:
            return None
        page, more = found
        return [row.answer_row() for row in page], more

    def search_rows(
        self, query: Query, snapshot: Snapshot | None = None
    ) -> tuple[list[StudyRow], bool] | None:
        """`search`'s page as the memory's own rows (no dict per row: a JSON
        page keys its kept answers by a row's packed answer and version)."""
        if query.level is not Level.STUDY:
            return None
        conditions(query, Params())  # refuses what SQL would refuse, the same way
        checks = predicates(query)
        if checks is None:
            return None
        snapshot = snapshot if snapshot is not None else self._current()
        if snapshot is None:
            return None
        found: list[StudyRow] = []
        wanted = query.offset + query.limit + 1
        for row in candidates(snapshot, query):
            if matches(row, checks):
                found.append(row)
                if len(found) == wanted:
                    break
        page = found[query.offset :]
        return page[: query.limit], len(page) > query.limit

    def latest(self, position_of: Callable[[], dict[int, int]]) -> Snapshot | None:
        """The newest rows held, at once, with the projector position they cover
        (`position_of` is asked before every refresh), or None before the first
        refresh that knew it. When the store changed since, a refresh starts on
        a thread of its own: a search need not wait for it (api.pending_studies)."""
        self._position_of = position_of
        index = self._index()
        snapshot = self._snapshot
        clock = _clock(index) if index is not None else None
        if clock is None or index is None or snapshot is None:
            return None
        if snapshot.generation == clock:
            # Nothing written to study_stats since these rows were read: they
            # cover where the projections stand now (read between two looks
            # at the clock: a write that started in between moves it).
            position = self._position()
            if position is not None and _clock(index) == clock:
                snapshot.position = position
        else:
            self._wake_refresher()
        return snapshot if snapshot.position is not None else None

    def _wake_refresher(self) -> None:
        """Ask the refresher thread for a refresh, starting it the first time.
        One thread for the process's life: a thread started per refresh made
        the search that started it wait until the new thread first ran (under
        a C-STORE load, milliseconds behind the busy threads)."""
        self._wanted.set()
        if self._refresher is None:
            with self._refresher_lock:  # not self._lock: a refresh may hold it
                if self._refresher is None:
                    self._refresher = threading.Thread(
                        target=_refresh_while_wanted,
                        args=(weakref.ref(self), self._wanted),
                        name="study-memory",
                        daemon=True,
                    )
                    self._refresher.start()

    def _refresh(self) -> bool:
        """One background refresh; False once the store is gone."""
        if self._index() is None:
            return False
        try:
            self._current()
        except Exception as exc:  # the next search that needs it refreshes (and says)
            log.debug("study memory not refreshed in the background: %s", exc)
        return True

    def warm(self) -> None:
        """Load the rows and build every index now, not in the first searches
        (at a million instances ~0.3 s per process, the p99 of those searches)."""
        snapshot = self._current()
        if snapshot is not None:
            snapshot.build_indexes()

    def _current(self) -> Snapshot | None:
        index = self._index()
        generation = _clock(index) if index is not None else None
        if index is None or generation is None:
            return None
        snapshot = self._snapshot
        if snapshot is not None and snapshot.generation == generation:
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.generation == generation:
                return snapshot
            since = snapshot.newest_version if snapshot is not None else 0
            position = self._position()
            rows = _newest(index.query_dicts(REFRESH_SQL, {"since": since}))
            fresh = Snapshot.updated(snapshot, rows, generation)
            if snapshot is not None and (not rows or int(rows[0]["total"]) != len(fresh)):
                # A study written below the newest version held (a group member
                # that gave up partitions counts fewer events), or a table
                # swapped under us: read every row again.
                rows = _newest(index.query_dicts(REFRESH_SQL, {"since": 0}))
                fresh = Snapshot.updated(None, rows, generation)
            if len(fresh) > MAX_STUDIES:
                return None
            fresh.position = position
            self._snapshot = fresh
            return fresh

    def _position(self) -> dict[int, int] | None:
        try:
            return self._position_of() if self._position_of is not None else None
        except Exception as exc:  # no position: searches wait as before
            log.debug("projection position unknown: %s", exc)
            return None


def _refresh_while_wanted(memory: weakref.ref[StudyMemory], wanted: threading.Event) -> None:
    """The refresher's loop: a refresh each time one is wanted, until the
    memory or its store is gone (the loop holds neither in between)."""
    while True:
        wanted.wait(REFRESHER_IDLE_SECONDS)
        current = memory()
        if current is None:
            return
        if not wanted.is_set():
            continue
        wanted.clear()
        if not current._refresh():
            return
        del current


def _newest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each study's newest row among `rows`. The refresh reads without FINAL
    (which merged every row of the table, ~8 ms at 10,000 studies, with every
    projector batch, in each process): a study written by several batches
    since the last refresh may have a row from each, and the newest is the
    one FINAL keeps (the rows not read are older than every row read)."""
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        held = newest.get(row["study_instance_uid"])
        if held is None or int(row["version"]) > int(held["version"]):
            newest[row["study_instance_uid"]] = row
    return list(newest.values()) if len(newest) < len(rows) else rows


def _clock(index: ProjectionStore) -> int | None:
    """The count of the store's writes that may change study_stats, or its
    count of all writes where it keeps none of its own."""
    study = getattr(index, "study_generation", None)
    return study if study is not None else getattr(index, "generation", None)


def warm_in_background(index: ProjectionStore) -> None:
    """Warm the store's study memory on a thread of its own (a serving process's start)."""

    def warm() -> None:
        memory = memory_for(index)
        try:
            if memory is not None:
                memory.warm()
        except Exception as exc:  # the first search loads it instead
            log.warning("study memory not warmed (%s); the first search loads it", exc)

    threading.Thread(target=warm, name="study-memory", daemon=True).start()


def memory_for(index: ProjectionStore) -> StudyMemory | None:
    """The store's study memory, or None where it cannot follow the store's writes."""
    if os.environ.get(MEMORY_ENV, "1") == "0" or getattr(index, "generation", None) is None:
        return None
    with _MEMORIES_LOCK:
        try:
            memory = _MEMORIES.get(index)
            if memory is None:
                memory = _MEMORIES[index] = StudyMemory(index)
        except TypeError:  # an unhashable store: nothing to key the memory by
            return None
    return memory


_MEMORIES: weakref.WeakKeyDictionary[Any, StudyMemory] = weakref.WeakKeyDictionary()
_MEMORIES_LOCK = threading.Lock()
