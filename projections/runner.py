"""The projector: follow the log in batches, insert rows, checkpoint.

The checkpoint (a Position) is written to the projection store after the rows
it covers. A crash between the two re-applies a batch on restart, which the
idempotent tables absorb: each event's effect lands exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from infra.errors import ChronicleError
from infra.ports import BlobStore, EventLog, LogRecord, Position, ProjectionStore, covers
from projections import stats
from projections.conflicts import receipt_by_sop_rows
from projections.rows import Row, Rows, rows_for
from schemas import codec
from schemas.events import InstanceStored

log = logging.getLogger("chronicle.projector")

IDLE_POLL_SECONDS = 0.02
#: After a partial batch, how long new events may gather before the next
#: insert when no reader is waiting (readers never wait this long: they poke).
GATHER_SECONDS = 1.0
ERROR_BACKOFF_SECONDS = 1.0


#: Tables whose rows replace each other by key (ReplacingMergeTree ORDER BY).
REPLACING_KEYS: dict[str, tuple[str, ...]] = {
    "patient": ("patient_id", "issuer_of_patient_id"),
    "study": ("study_instance_uid",),
    "series": ("series_instance_uid",),
    "instance": ("sop_instance_uid",),
}


def newest_per_key(table: str, rows: list[Row]) -> list[Row]:
    """One row per key within a batch: the one ReplacingMergeTree would keep.

    Every instance of a study writes the study's row again; inserting 100 rows
    where the table keeps one made each part 100 times larger than needed and
    left FINAL that much more to merge at query time."""
    key = REPLACING_KEYS.get(table)
    if key is None or len(rows) < 2:
        return rows
    newest: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        k = tuple(row[c] for c in key)
        kept = newest.get(k)
        if kept is None or row["version"] >= kept["version"]:
            newest[k] = row
    return list(newest.values())


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
    ) -> None:
        self._log = event_log
        self._index = index
        self._blobs = blobs
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

    # -- position -----------------------------------------------------------

    def checkpoint(self) -> dict[int, int]:
        if not self._loaded:
            rows = self._index.query(
                f"SELECT partition, next_offset FROM checkpoint{self._suffix} FINAL "
                "WHERE projector = {name:String}",
                {"name": self._name},
            )
            with self._cond:
                self._position = {int(p): int(o) for p, o in rows}
                self._loaded = True
        with self._cond:
            return dict(self._position)

    def reload(self) -> None:
        """Forget the cached position (the checkpoint table was swapped by replay)."""
        with self._cond:
            self._loaded = False

    def lag(self) -> int:
        end = self._log.end()
        position = self.checkpoint()
        return sum(max(0, o - position.get(p, 0)) for p, o in end.items())

    # -- work ---------------------------------------------------------------

    def run_once(self) -> int:
        """Project one batch; return how many events it consumed."""
        start = self.checkpoint()
        records = self._log.read(start, self._batch)
        if not records:
            return 0
        rows = Rows()
        after = dict(start)
        for record in records:
            self._project(record, rows)
            after[record.partition] = record.offset + 1
        touched = self._touched_studies(rows)
        for table, table_rows in rows.tables.items():
            self._insert(table, newest_per_key(table, table_rows))
        if touched:
            stats.refresh(self._index, self._suffix, touched, version=sum(after.values()))
        self._insert(
            "checkpoint",
            [
                {"projector": self._name, "partition": p, "next_offset": o, "version": o}
                for p, o in after.items()
                if start.get(p) != o
            ],
        )
        with self._cond:
            self._position = after
            self._cond.notify_all()
        return len(records)

    def _touched_studies(self, rows: Rows) -> set[str]:
        """Studies whose statistics this batch changes: those its instances are in
        now and, for a newer version naming another study, the one it leaves."""
        instances = rows.tables.get("instance", [])
        if not self._stats or not instances:
            return set()
        now = {str(row["study_instance_uid"]) for row in instances}
        before = stats.studies_of(
            self._index, self._suffix, (str(row["sop_instance_uid"]) for row in instances)
        )
        return now | before

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
        if isinstance(payload, InstanceStored) and payload.sidecar and self._blobs is not None:
            with self._blobs.get(payload.sidecar.key) as fh:
                metadata = orjson.loads(fh.read())
        for produced in (
            rows_for(record, envelope, metadata),
            receipt_by_sop_rows(record, envelope),
        ):
            for table, table_rows in produced.tables.items():
                for row in table_rows:
                    rows.add(table, row)

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

    def poke(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.run_once()
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
                self._wake.wait(self._gather if n else IDLE_POLL_SECONDS)
                self._wake.clear()

    def wait(self, target: Position, timeout: float) -> bool:
        """Block until the checkpoint covers `target`; False on timeout."""
        deadline = time.monotonic() + timeout
        self.checkpoint()
        with self._cond:
            while not covers(self._position, target):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._cond.wait(min(remaining, IDLE_POLL_SECONDS))
        return True
