"""The projector: follow the log in batches, insert rows, checkpoint.

The checkpoint (a Position) is written to the projection store after the rows
it covers. A crash between the two re-applies a batch on restart, which the
idempotent tables absorb: each event's effect lands exactly once.

Several projectors may share one projection store, each projecting the
partitions a Kafka consumer group gives it (`partitions`, infra/kafka_group.py).
Each partition's checkpoint row is then written by whichever projector owns the
partition, and a projector reads the others' rows from the store: after a
rebalance (a partition that arrives starts from its row, which its previous
owner wrote before handing it back) and for read-your-writes (`wait()`, `lag()`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import orjson

from infra import priority
from infra.errors import ChronicleError, Invalid
from infra.owner_state import OwnerState
from infra.ports import BlobStore, EventLog, LogRecord, Position, ProjectionStore, covers
from projections import documents, members, stats
from projections.conflicts import receipt_by_sop_rows
from projections.partitions import PartitionReader, PartitionSource
from projections.rows import Row, Rows, rows_for
from projections.written import LEVEL_TABLES, REPLACING_KEYS, LastWritten, newest_per_key
from schemas import codec
from schemas.events import InstanceStored

log = logging.getLogger("chronicle.projector")

IDLE_POLL_SECONDS = 0.02
#: How often other projectors' checkpoint rows are re-read while a reader waits.
CHECKPOINT_POLL_SECONDS = 0.02
#: After a partial batch, how long new events may gather before the next
#: insert when no reader is waiting (readers never wait this long: they poke).
GATHER_SECONDS = 1.0
#: How often the background loop of a lone projector on chDB stores its
#: checkpoint row while events keep coming (see `_save_checkpoint`).
CHECKPOINT_SECONDS = 1.0
ERROR_BACKOFF_SECONDS = 1.0
#: A batch's table inserts run this many at a time (the store's client pool is 4).
INSERT_THREADS = 4


class Projector:
    def __init__(
        self,
        event_log: EventLog,
        index: ProjectionStore,
        *,
        blobs: BlobStore | None = None,
        batch: int = 1000,
        name: str = "levels",
        suffix: str = "",
        gather_seconds: float = GATHER_SECONDS,
        stats: bool = True,
        partitions: PartitionSource | None = None,
    ) -> None:
        self._log = event_log
        #: None: every partition (the embedded log, chDB, a lone projector).
        self._partitions = partitions
        self._read_partitions: PartitionReader | None = None
        if partitions is not None:
            self._read_partitions = getattr(event_log, "read_partitions", None)
            if self._read_partitions is None:
                raise Invalid(f"{type(event_log).__name__} cannot read some partitions only")
        #: The group generation the last batch ran under (a change: re-read checkpoints).
        self._generation: int | None = None
        self._refreshed_at = 0.0
        self._index = index
        self._blobs = blobs
        #: The owner's workers read the checkpoint here (infra.owner_state).
        self.published: OwnerState | None = None
        self._batch = batch
        self._name = name
        self._suffix = suffix
        self._gather = gather_seconds
        #: Recompute study and series statistics per batch (replay does it once at the end).
        self._stats = stats
        self._position: dict[int, int] = {}
        self._loaded = False
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0
        self.last_error = ""
        self._pool: ThreadPoolExecutor | None = None
        self._written = LastWritten({t: REPLACING_KEYS[t] for t in LEVEL_TABLES})
        self._clock = documents.DocumentClock()
        self._clock_loaded = False
        #: Series waiting for their /metadata document. Only a projector that
        #: owns every partition builds documents: its one clock orders every
        #: mark and document (in a group, marks alone keep readers right).
        self._quiet = documents.QuietSeries() if partitions is None else None
        #: Positions projected but not yet stored as checkpoint rows (`_save_checkpoint`).
        self._unsaved: dict[int, int] = {}
        self._saved_at = time.monotonic()
        #: Set by the background loop when readers share this object's position.
        self._coalescing = False

    def _inserter(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # The background loop's inserters keep up like the loop itself;
            # a command projecting in the foreground (replay) keeps its priority.
            background = threading.current_thread() is self._thread
            self._pool = ThreadPoolExecutor(
                INSERT_THREADS,
                thread_name_prefix=f"insert-{self._name}",
                initializer=priority.lower_this_thread if background else None,
            )
        return self._pool

    def _side_by_side(self, *calls: Callable[[], None]) -> None:
        list(self._inserter().map(lambda call: call(), calls))

    # -- position -----------------------------------------------------------

    def checkpoint(self) -> dict[int, int]:
        """Where the projections stand. In a group that includes the other members'
        checkpoint rows: this projector covers only the partitions it owns."""
        if self._loaded and self._partitions is not None:
            self._refresh(CHECKPOINT_POLL_SECONDS)
        return self._current()

    def _current(self) -> dict[int, int]:
        if not self._loaded:
            stored = self._stored()
            with self._cond:
                self._position = stored
                self._loaded = True
                self._publish()
        with self._cond:
            return dict(self._position)

    def _publish(self) -> None:
        """Called with `_cond` held, whenever the position moved."""
        if self.published is not None:
            self.published.publish_checkpoint(self._position)

    def _stored(self) -> dict[int, int]:
        rows = self._index.query(
            f"SELECT partition, next_offset FROM checkpoint{self._suffix} FINAL "
            "WHERE projector = {name:String}",
            {"name": self._name},
        )
        return {int(p): int(o) for p, o in rows}

    def _refresh(self, max_age: float = 0.0) -> None:
        """Take in the stored checkpoint rows that are ahead: other projectors wrote them."""
        now = time.monotonic()
        if now - self._refreshed_at < max_age:
            return
        self._refreshed_at = now
        stored = self._stored()
        with self._cond:
            for p, o in stored.items():
                if o > self._position.get(p, 0):
                    self._position[p] = o
            self._loaded = True
            self._publish()
            self._cond.notify_all()

    def reload(self) -> None:
        """Forget the cached position (the checkpoint table was swapped by replay)."""
        with self._cond:
            self._loaded = False
            self._unsaved.clear()
            self._written.forget()
            self._clock_loaded = False
            if self._quiet is not None:
                self._quiet.forget()  # replay built every document

    def forget_written(self) -> None:
        """Rows were written to the tables by other means (replay's SQL): what
        this projector wrote last is no longer what the tables say."""
        self._written.forget()

    def lag(self) -> int:
        end = self._log.end()
        position = self.checkpoint()
        return sum(max(0, o - position.get(p, 0)) for p, o in end.items())

    # -- work ---------------------------------------------------------------

    def run_once(self) -> int:
        """Project one batch; return how many events it consumed."""
        if self._partitions is None:
            return self._project_batch(None)
        with self._partitions.held() as assignment:
            if assignment.generation != self._generation:
                # A rebalance: a partition that arrived may have moved on under
                # another projector, whose checkpoint row says where.
                self._current()
                self._refresh()
                self._written.forget()
                self._generation = assignment.generation
            if not assignment.partitions:
                return 0
            return self._project_batch(assignment.partitions)

    def _project_batch(self, owned: frozenset[int] | None) -> int:
        start = self._current()
        if owned is None:
            records = self._log.read(start, self._batch)
        else:
            assert self._read_partitions is not None
            records = self._read_partitions(start, owned, self._batch)
        if not records:
            return 0
        rows, advanced = self.rows_of(records)
        self.write(records, rows, start, advanced)
        return len(records)

    def rows_of(self, records: list[LogRecord]) -> tuple[Rows, dict[int, int]]:
        """The batch's rows, and the next offset per partition it covers."""
        rows = Rows()
        advanced: dict[int, int] = {}
        for record in records:
            self._project(record, rows)
            advanced[record.partition] = record.offset + 1
        return rows, advanced

    def write(
        self, records: list[LogRecord], rows: Rows, start: Position, advanced: dict[int, int]
    ) -> None:
        """Insert a batch's rows (and statistics), then its checkpoint."""
        touched, fresh, places = self._touched_studies(rows, records)
        # One insert per table, side by side: each is a few milliseconds of
        # chDB work with the interpreter lock released, and readers waiting
        # for this batch wait for the slowest rather than for their sum.
        newest = {table: newest_per_key(table, r) for table, r in rows.tables.items()}
        inserts = {table: self._written.changed(table, r) for table, r in newest.items()}
        if touched and not fresh:  # instances may have moved: hide the places left
            left = members.tombstones(newest["instance"], rows.tables["instance_member"], places)
            inserts["instance_member"] = [*inserts["instance_member"], *left]
        touched_series = documents.series_of(inserts.get("instance_member", []))
        quiet = self._quiet
        unmarked = [s for s in touched_series if quiet is None or not quiet.waiting(s)]
        if unmarked:
            inserts["series_metadata"] = documents.stale_marks(unmarked, self._document_version())
        pool = self._inserter()
        # A study's events sit in one partition; its statistics' version grows
        # with every batch that touches it, under any owner (a new owner's
        # position includes the old owner's last checkpoint).
        version = sum({**start, **advanced}.values())
        planned = None
        if touched and fresh:  # reads rows the inserts do not write: side by side
            instances, studies = rows.tables["instance"], newest.get("study", [])
            args = (self._index, self._suffix, instances, studies, version)
            planned = pool.submit(stats.fresh_rows, *args)
        list(pool.map(lambda one: self._insert(*one), inserts.items()))
        for table, written in inserts.items():
            self._written.remember(table, written)
        if touched:
            # Written only once every row is in: a batch that failed part-way is
            # projected again, and must then find its SOP Instance UIDs in
            # receipt_by_sop (a full refresh) or no statistics of its own.
            found = planned.result() if planned is not None else None
            if found is None:
                stats.refresh(self._index, self._suffix, touched, version, self._side_by_side)
            else:
                stats.write(self._index, self._suffix, *found, self._side_by_side)
        with self._cond:
            self._unsaved.update(advanced)
        self._save_checkpoint(force=not self._coalescing)
        with self._cond:
            for p, o in advanced.items():
                self._position[p] = max(o, self._position.get(p, 0))
            self._publish()
            self._cond.notify_all()
        if quiet is not None:
            quiet.touch(touched_series)

    def _save_checkpoint(self, *, force: bool = True) -> None:
        """Store the checkpoint rows of what was projected: after every batch, or
        while coalescing at most every CHECKPOINT_SECONDS (and when idle or
        stopping). Readers wait on the position held here, which moves once a
        batch's rows are in; the stored row is only where a restart resumes, and
        a restart that re-projects a second of events changes nothing (the
        tables are idempotent, and the SOP Instance UIDs a batch finds already
        in receipt_by_sop make its statistics a full refresh). One insert fewer
        per batch: each costs milliseconds of chDB whatever its size."""
        with self._cond:
            if not self._unsaved:
                return
            if not force and time.monotonic() - self._saved_at < CHECKPOINT_SECONDS:
                return
            unsaved = dict(self._unsaved)
        self._insert(
            "checkpoint",
            [
                {"projector": self._name, "partition": p, "next_offset": o, "version": o}
                for p, o in unsaved.items()
            ],
        )
        with self._cond:
            for p, o in unsaved.items():
                if self._unsaved.get(p) == o:
                    del self._unsaved[p]
            self._saved_at = time.monotonic()

    def build_documents(self, everything: bool = False) -> int:
        """Build the /metadata documents of the series quiet long enough (all
        touched ones with `everything`); return how many series were due."""
        if self._quiet is None:
            return 0
        due = self._quiet.due(float("inf") if everything else None)
        if due:
            try:
                documents.build(self._index, self._suffix, due, self._document_version())
            except BaseException:
                self._quiet.retry(due)
                raise
        return len(due)

    def _document_version(self) -> int:
        if not self._clock_loaded:
            self._clock.at_least(documents.newest_version(self._index, self._suffix))
            self._clock_loaded = True
        return self._clock.next()

    def _touched_studies(
        self, rows: Rows, records: list[LogRecord]
    ) -> tuple[set[str], bool, set[members.Place]]:
        """Studies whose statistics this batch changes: those its instances are in
        now and, for a newer version naming another study, the one it leaves.

        And whether the batch is fresh, i.e. only adds: every instance a first
        version (no earlier place, none twice), live, from a log of one
        partition (versions then order every event). Fresh statistics are
        computed from the current rows plus the batch (stats.fresh_rows).
        And the places the batch's instances were stored at before it."""
        instances = rows.tables.get("instance", [])
        if not self._stats or not instances:
            return set(), False, set()
        now = {str(row["study_instance_uid"]) for row in instances}
        sops = [str(row["sop_instance_uid"]) for row in instances]
        places = members.places_of(self._index, self._suffix, sops)
        before = {study for _, study, _ in places}
        fresh = (
            not before
            and len(set(sops)) == len(sops)
            and not any(row["hidden"] for row in instances)
            and {record.partition for record in records} | set(self._position) <= {0}
        )
        return now | before, fresh, places

    def run_until(self, target: Position, progress: Callable[[int], None] | None = None) -> None:
        """Project until the checkpoint covers `target` (replay, tests)."""
        while not covers(self.checkpoint(), target):
            n = self.run_once()
            if n == 0:
                break
            if progress:
                progress(n)

    def _project(self, record: LogRecord, rows: Rows) -> None:
        try:
            envelope = codec.decode(record.value)
        except codec.DecodeError as exc:
            # The log is the record: never drop it, but a projector must not
            # stall forever on one event it cannot read either.
            self.skipped += 1
            log.error(
                "skipping unreadable event at %s:%s: %s", record.partition, record.offset, exc
            )
            return
        metadata = None
        payload = envelope.payload
        if isinstance(payload, InstanceStored) and self._blobs is not None:
            if payload.sidecar:
                metadata = self._sidecar(payload.sidecar.key)
            if payload.frames_sidecar:
                table = self._sidecar(payload.frames_sidecar.key)
                frames = [[(int(o), int(n)) for o, n in f] for f in table]
                envelope = replace(envelope, payload=replace(payload, frames=frames))
        for produced in (
            rows_for(record, envelope, metadata),
            receipt_by_sop_rows(record, envelope),
        ):
            for table, table_rows in produced.tables.items():
                for row in table_rows:
                    rows.add(table, row)

    def _sidecar(self, key: str) -> Any:
        """A JSON document an event left in the blob store (metadata, frame table)."""
        assert self._blobs is not None
        with self._blobs.get(key) as fh:
            return orjson.loads(fh.read())

    def _insert(self, table: str, rows: list[Row]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        data: list[list[Any]] = [[row[c] for c in columns] for row in rows]
        self._index.insert(f"{table}{self._suffix}", data, columns)

    # -- the background thread ---------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"projector-{self._name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._coalescing = False
        try:
            self._save_checkpoint()
        except ChronicleError as exc:  # the rows are in: a restart re-projects them
            log.warning("could not store the checkpoint on stopping: %s", exc)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def poke(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        priority.lower_this_thread()  # searches and stores go first (infra.priority)
        # Readers in other processes (a Kafka group, api processes on a
        # ClickHouse server) wait on the stored rows; on chDB every reader
        # shares this object's position (api.workers reads it via OwnerState).
        shared = getattr(self._index, "generation", None) is not None
        self._coalescing = self._partitions is None and shared
        while not self._stop.is_set():
            try:
                n = self.run_once()
                if n == 0:
                    self._save_checkpoint()
                if n < self._batch:
                    self.build_documents()
                self.last_error = ""
            except ChronicleError as exc:
                self.last_error = str(exc)
                log.error("projection failed, retrying: %s", exc)
                self._stop.wait(ERROR_BACKOFF_SECONDS)
                continue
            except Exception as exc:  # keep following the log; say what happened
                self.last_error = repr(exc)
                log.exception("projection failed unexpectedly, retrying")
                self._stop.wait(ERROR_BACKOFF_SECONDS)
                continue
            if n < self._batch:
                # Caught up. Each chDB insert costs milliseconds of CPU whatever
                # its size, so while nobody is waiting to read, let events
                # gather for a while; a reader's wait() pokes us at once.
                pause = self._gather if n else IDLE_POLL_SECONDS
                due = self._quiet.next_due() if self._quiet is not None else None
                self._wake.wait(pause if due is None else min(pause, due))
                self._wake.clear()

    def wait(self, target: Position, timeout: float) -> bool:
        """Block until the checkpoint covers `target`; False on timeout.

        In a group, partitions other projectors own are covered by their
        checkpoint rows, re-read while waiting (as api.roles.CheckpointWatcher does)."""
        deadline = time.monotonic() + timeout
        self.checkpoint()
        while True:
            with self._cond:
                if covers(self._position, target):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._cond.wait(min(remaining, IDLE_POLL_SECONDS))
            if self._partitions is not None:
                self._refresh(CHECKPOINT_POLL_SECONDS)
