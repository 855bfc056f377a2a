"""The storage commitment reactor: decide and report each N-ACTION (PS3.4 Annex J).

The N-ACTION handler only appends a `StorageCommitmentRequested` event and
answers success. This reactor follows the log with its own checkpoint (row
"commitment" of the `checkpoint` table), and for each request:

1. classifies it against what the log says about its Transaction UID (the
   `storage_commitment` projection, plus what this process did since it
   started): already answered -> nothing; the transaction was reported
   before this request -> every item fails with 0x0131 (duplicate
   transaction UID); an earlier request of it was still pending when this
   one came (the SCU retried) -> absorbed: that request's one report answers
   both, nothing more is sent; otherwise -> decided;
2. decides: waits for projections to cover the log end the request saw
   (read-your-writes), then commits an item only when its instance is live
   in the `instance` projection (FINAL, hidden = 0) with the same SOP class
   and its blob re-hashes to the recorded sha256;
3. sends the N-EVENT-REPORT through a `Courier`: on the request's own
   association while it is open, else on a new association to the
   requester's configured address, with retries and back-off (ReportPolicy);
4. appends a `StorageCommitmentReported` event saying what was sent where.

Side effects happen at most once per request as far as the log knows: the
checkpoint never passes a request whose report is not yet in the log, and a
request whose report is in the log is skipped. A crash between sending and
appending the report sends it again on restart (at least once). Replay never
runs reactors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from infra.errors import ChronicleError
from infra.ports import BlobStore, EventLog, LogRecord, Position, ProjectionStore
from infra.settings import Settings
from projections.commitment_rules import (
    Courier,
    Entry,
    Follows,
    Outcome,
    Report,
    ReportPolicy,
    addresses,
    classify,
    decide,
    deliver,
    duplicate_failures,
)
from projections.rows import ABSORBED, REPORTED, REQUESTED, UNDELIVERED
from schemas import codec
from schemas.events import (
    Envelope,
    StorageCommitmentReported,
    StorageCommitmentRequested,
)

log = logging.getLogger("chronicle.commitment")

REACTOR = "commitment"
IDLE_POLL_SECONDS = 0.2
#: Transactions this process answered that it remembers beside the projection
#: (which may lag behind the reports just appended).
REMEMBERED_TRANSACTIONS = 10_000
ERROR_BACKOFF_SECONDS = 1.0
CHECKPOINT_SECONDS = 1.0

_KNOWN = (
    "SELECT request_event_id, state, request_offset, version FROM storage_commitment FINAL"
    " WHERE transaction_uid = {uid:String}"
)

T = TypeVar("T")


@dataclass
class _Job:
    record: LogRecord
    event_id: str
    request: StorageCommitmentRequested
    duplicate: bool
    associations: list[Any] = field(default_factory=list)


#: Batches a log that skips by type looks over per read.
SCAN_BATCHES = 100


@runtime_checkable
class ScansByPrefix(Protocol):
    """A log that returns only the records beginning with given bytes."""

    def scan(
        self, start: Position, starts: Sequence[bytes], shape: bytes, max_records: int
    ) -> tuple[list[LogRecord], dict[int, int]]: ...


class CommitmentReactor:
    def __init__(
        self,
        settings: Settings,
        event_log: EventLog,
        index: ProjectionStore,
        blobs: BlobStore,
        projector: Follows,
        courier: Courier,
        *,
        is_supported_class: Callable[[str], bool],
        policy: ReportPolicy | None = None,
        name: str = REACTOR,
        batch: int = 1000,
    ) -> None:
        self._settings = settings
        self._log = event_log
        self._index = index
        self._blobs = blobs
        self._projector = projector
        self._courier = courier
        self._is_supported = is_supported_class
        self.policy = policy or ReportPolicy()
        self._name = name
        self._batch = batch
        self._lock = threading.Lock()
        self._position: dict[int, int] | None = None
        self._saved: dict[int, int] = {}
        self._saved_at = 0.0
        self._inflight: dict[str, _Job] = {}
        self._closed: dict[str, dict[str, Entry]] = {}
        self._watched: dict[str, Any] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- the front-end's side ------------------------------------------------

    def watch(self, request_event_id: str, association: Any) -> None:
        """The association a request came on: the report goes there while it is open."""
        with self._lock:
            self._watched[request_event_id] = association

    def unwatch(self, request_event_id: str) -> None:
        with self._lock:
            self._watched.pop(request_event_id, None)

    def poke(self) -> None:
        self._wake.set()

    def pending(self) -> int:
        """Requests being decided or delivered now."""
        with self._lock:
            return len(self._inflight)

    # -- the thread ------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.policy.workers, thread_name_prefix="commitment")
        self._thread = threading.Thread(target=self._loop, name="commitment-reactor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following; unfinished requests are taken up again on the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            if self._position is None:
                return
            self._position = self._pinned()
            self._inflight.clear()
        try:
            self._save_checkpoint(force=True)
        except ChronicleError as exc:  # the next start re-reads a little more
            log.warning("commitment checkpoint not saved on stop: %s", exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.run_once()
            except Exception:  # keep following; an outage must not end the reactor
                log.exception("commitment reactor failed, retrying")
                self._stop.wait(ERROR_BACKOFF_SECONDS)
                continue
            if n == 0:
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()

    def run_once(self) -> int:
        """Read one batch of the log, dispatch its requests; return records read."""
        position = self._load()
        records, after = self._next(position)
        for record in records:
            if self._stop.is_set() or not self._follow(record):
                after = None
                break
            with self._lock:
                assert self._position is not None
                self._position[record.partition] = record.offset + 1
        if after is not None:  # every record looked at, the skipped ones too
            with self._lock:
                assert self._position is not None
                for p, o in after.items():
                    self._position[p] = max(self._position.get(p, 0), o)
        self._save_checkpoint()
        if after is None:
            return len(records)
        return sum(max(0, o - position.get(p, 0)) for p, o in after.items())

    def _next(self, position: Position) -> tuple[list[LogRecord], dict[int, int] | None]:
        """The next records to follow; with a log that can skip by type
        (SqliteEventLog.scan), only the requests among SCAN_BATCHES batches and
        where they end."""
        if not isinstance(self._log, ScansByPrefix):
            return self._log.read(position, self._batch), None
        starts = (codec.type_prefix(StorageCommitmentRequested.TYPE),)
        return self._log.scan(position, starts, codec.ENCODED_PREFIX, self._batch * SCAN_BATCHES)

    # -- checkpoint ------------------------------------------------------------

    def _load(self) -> dict[int, int]:
        with self._lock:
            if self._position is not None:
                return dict(self._position)
        rows = self._index.query(
            "SELECT partition, next_offset FROM checkpoint FINAL WHERE projector = {name:String}",
            {"name": self._name},
        )
        loaded = {int(p): int(o) for p, o in rows}
        with self._lock:
            self._position, self._saved = dict(loaded), dict(loaded)
        return loaded

    def _pinned(self) -> dict[int, int]:
        """The read position, held back to the oldest request still unanswered."""
        pinned = dict(self._position or {})
        for job in self._inflight.values():
            p = job.record.partition
            pinned[p] = min(pinned.get(p, job.record.offset), job.record.offset)
        return pinned

    def _save_checkpoint(self, *, force: bool = False) -> None:
        """Write the pinned position, at most every CHECKPOINT_SECONDS unless forced.

        A position not yet saved only costs a re-read after a crash: requests
        whose report is in the log are skipped then.
        """
        if not force and time.monotonic() - self._saved_at < CHECKPOINT_SECONDS:
            return
        with self._lock:
            target = self._pinned()
        changed = {p: o for p, o in target.items() if self._saved.get(p) != o}
        if not changed:
            return
        rows = [[self._name, p, o, o] for p, o in changed.items()]
        self._index.insert("checkpoint", rows, ["projector", "partition", "next_offset", "version"])
        self._saved.update(changed)
        self._saved_at = time.monotonic()

    # -- following -------------------------------------------------------------

    def _follow(self, record: LogRecord) -> bool:
        """Act on one record; False when stopping before it was handled."""
        try:
            if codec.peek_type(record.value) != StorageCommitmentRequested.TYPE:
                return True
            envelope = codec.decode(record.value)
        except codec.DecodeError as exc:
            log.error(
                "skipping unreadable event at %s:%s: %s", record.partition, record.offset, exc
            )
            return True
        request = envelope.payload
        assert isinstance(request, StorageCommitmentRequested)
        # Every report appended so far must be visible before classifying.
        self._wait_for(self._log.end())
        if self._stop.is_set():
            return False
        entries = self._entries(request.transaction_uid)
        verdict, primary = classify(envelope.event_id, record.offset, entries)
        if verdict == "done":
            self.unwatch(envelope.event_id)
        elif verdict == "absorbed":
            self._absorb(record, envelope.event_id, request, primary)
        else:
            self._dispatch(_Job(record, envelope.event_id, request, verdict == "duplicate"))
        return True

    def _wait_for(self, target: Position) -> bool:
        """Read-your-writes, bounded by policy.decision_wait and cut short by stop()."""
        deadline = time.monotonic() + self.policy.decision_wait
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if self._projector.wait(target, max(0.0, min(remaining, 0.5))):
                return True
            if remaining <= 0:
                return False
        return False

    def _entries(self, transaction_uid: str) -> list[Entry]:
        rows = self._index.query(_KNOWN, {"uid": transaction_uid})
        known = {
            str(e): Entry(str(e), str(s), int(o), None if s == REQUESTED else int(v))
            for e, s, o, v in rows
        }
        with self._lock:
            known.update(self._closed.get(transaction_uid, {}))
            for job in self._inflight.values():
                if job.request.transaction_uid == transaction_uid:
                    known[job.event_id] = Entry(job.event_id, REQUESTED, job.record.offset)
        return list(known.values())

    def _dispatch(self, job: _Job) -> None:
        with self._lock:
            self._inflight[job.event_id] = job
            watched = self._watched.get(job.event_id)
            if watched is not None:
                job.associations.append(watched)
        if self._pool is None:
            raise RuntimeError("the commitment reactor is not started")
        self._pool.submit(self._run, job)

    def _absorb(
        self, record: LogRecord, event_id: str, request: StorageCommitmentRequested, primary: str
    ) -> None:
        with self._lock:
            association = self._watched.get(event_id)
            job = self._inflight.get(primary)
            if job is not None and association is not None:
                # The SCU came back on a new association: the report may go there.
                job.associations.append(association)
        job_like = _Job(record, event_id, request, duplicate=False)
        report = Report(request.transaction_uid, request.items, [])
        outcome = Outcome("absorbed", "", 0, f"repeats pending request {primary}")
        self._record(job_like, report, outcome, event_type_id=0)
        log.info("commitment %s: repeated request absorbed", request.transaction_uid)

    # -- one request -------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        try:
            report = self._until_done(lambda: self._report_for(job))
            if report is None or self._stop.is_set():
                return  # decided while stopping: maybe on a partial view, so not sent
            outcome = self._deliver(job, report)
            if outcome is None:
                return
            self._until_done(lambda: self._record(job, report, outcome, report.event_type_id))
        except Exception:
            # Left in flight: the checkpoint stays before it and a restart retries it.
            log.exception("commitment %s failed unexpectedly", job.request.transaction_uid)

    def _until_done(self, step: Callable[[], T]) -> T | None:
        """Run `step` at least once, retrying while a backend is unavailable and not stopping.

        At least once: a report already sent is recorded even while stopping.
        """
        while True:
            try:
                return step()
            except ChronicleError as exc:
                log.warning("commitment: %s; retrying", exc)
                if self._stop.wait(self.policy.first_delay):
                    return None

    def _report_for(self, job: _Job) -> Report:
        request = job.request
        if job.duplicate:
            return Report(request.transaction_uid, request.items, duplicate_failures(request.items))
        fresh = self._wait_for(dict(request.log_end))
        if not fresh:
            log.warning("commitment %s: projection lagging", request.transaction_uid)
        failed = decide(
            self._index, self._blobs, request.items, fresh=fresh, is_supported=self._is_supported
        )
        return Report(request.transaction_uid, request.items, failed)

    def _deliver(self, job: _Job, report: Report) -> Outcome | None:
        source = job.request.source
        tried: set[int] = set()

        def open_association() -> Any:
            with self._lock:
                candidates = list(reversed(job.associations))  # the newest first
            for association in candidates:
                if id(association) not in tried and self._courier.is_open(association):
                    tried.add(id(association))
                    return association
            return None

        return deliver(
            self._courier,
            report,
            open_association=open_association,
            remotes=addresses(self._settings.remotes, source.calling_ae, source.peer),
            requester=source,
            policy=self.policy,
            stop=self._stop,
        )

    def _record(self, job: _Job, report: Report, outcome: Outcome, event_type_id: int) -> None:
        request = job.request
        event = StorageCommitmentReported(
            transaction_uid=request.transaction_uid,
            request_event_id=job.event_id,
            request_partition=job.record.partition,
            request_offset=job.record.offset,
            requester=request.source,
            items=request.items,
            failed=report.failed,
            event_type_id=event_type_id,
            delivery=outcome.delivery,
            destination=outcome.destination,
            attempts=outcome.attempts,
            detail=outcome.detail[:1024],
        )
        envelope = Envelope.of(
            event, key=request.transaction_uid, site=self._settings.site, node=self._settings.node
        )
        [(_, offset)] = self._log.append([(envelope.key, codec.encode(envelope))])
        state = {"absorbed": ABSORBED, "undelivered": UNDELIVERED}.get(outcome.delivery, REPORTED)
        with self._lock:
            closed = self._closed.setdefault(request.transaction_uid, {})
            closed[job.event_id] = Entry(job.event_id, state, job.record.offset, offset)
            if len(self._closed) > REMEMBERED_TRANSACTIONS:
                # The oldest are long projected: the table answers for them.
                del self._closed[next(iter(self._closed))]
            self._inflight.pop(job.event_id, None)
            self._watched.pop(job.event_id, None)
        log.info(
            "commitment %s: %s (event type %d, %d of %d failed)",
            request.transaction_uid,
            outcome.delivery,
            event_type_id,
            len(report.failed),
            len(request.items),
        )
