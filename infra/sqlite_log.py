"""The embedded EventLog: one SQLite file in WAL mode, one partition (0).

Durability: every append returns only after its transaction committed with
synchronous=FULL, so the WAL frame is fsynced. Throughput comes from group
commit: appenders queue their records and one of them (the leader) writes
everybody's pending records in a single transaction, paying one fsync for the
whole group. Several processes may append to the same file; SQLite's write lock
(BEGIN IMMEDIATE, waited for up to `busy_timeout`) serialises their groups and
offsets are assigned inside the transaction, so they stay dense and monotonic.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.errors import Invalid, Unavailable
from infra.ports import LogRecord, Position

log = logging.getLogger("chronicle.sqlite_log")
PARTITION = 0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_log (
    log_offset INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    value BLOB NOT NULL
)
"""


class _Request:
    """One caller's records, waiting for a group commit (or for leadership)."""

    __slots__ = ("records", "wake", "done", "first_offset", "error")

    def __init__(self, records: list[tuple[str, bytes]]) -> None:
        self.records = records
        self.wake = threading.Event()
        self.done = False
        self.first_offset = -1
        self.error: Unavailable | None = None

    def positions(self) -> list[tuple[int, int]]:
        if self.error is not None:
            raise self.error
        return [(PARTITION, self.first_offset + i) for i in range(len(self.records))]


class SqliteEventLog:
    """`infra.ports.EventLog` over a SQLite file. Thread- and process-safe."""

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._leading = False
        self._closed = False
        self._idle = threading.Condition(self._lock)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise Unavailable(f"event log {self.path}: {exc}") from exc
        try:
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute(_SCHEMA)
        except sqlite3.Error as exc:
            self._writer.close()
            raise Unavailable(f"event log {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    # -- append (group commit) ------------------------------------------------

    def append(self, records: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        request = _Request([_checked(key, value) for key, value in records])
        if not request.records:
            return []
        with self._lock:
            if self._closed:
                raise Unavailable(f"event log {self.path} is closed")
            self._pending.append(request)
            lead = not self._leading
            self._leading = True
        if not lead:
            request.wake.wait()
            if request.done:
                return request.positions()
        # We lead (first in, or woken undone = promoted by the previous leader).
        self._lead()
        return request.positions()

    def _lead(self) -> None:
        with self._lock:
            group, self._pending = self._pending, []
        try:
            self._commit(group)
        finally:
            # Hand leadership to the oldest waiter so no thread serves others forever.
            with self._lock:
                if self._pending:
                    self._pending[0].wake.set()
                else:
                    self._leading = False
                    self._idle.notify_all()

    def _commit(self, group: list[_Request]) -> None:
        failure: str | None = "append interrupted"
        try:
            self._write(group)
            failure = None
        except sqlite3.Error as exc:
            failure = f"event log {self.path}: append failed: {exc}"
        finally:
            # Always release the followers, whatever happened to the write.
            for request in group:
                request.error = None if failure is None else Unavailable(failure)
                request.done = True
                request.wake.set()

    def _write(self, group: list[_Request]) -> None:
        writer = self._writer
        writer.execute("BEGIN IMMEDIATE")
        try:
            # Offsets are assigned under SQLite's write lock, so appenders in
            # other processes cannot interleave: dense and monotonic.
            (next_offset,) = writer.execute(
                "SELECT COALESCE(MAX(log_offset) + 1, 0) FROM event_log"
            ).fetchone()
            rows: list[tuple[int, str, bytes]] = []
            for request in group:
                request.first_offset = next_offset
                rows.extend((next_offset + i, k, v) for i, (k, v) in enumerate(request.records))
                next_offset += len(request.records)
            writer.executemany(
                "INSERT INTO event_log (log_offset, key, value) VALUES (?, ?, ?)", rows
            )
            writer.execute("COMMIT")
        except BaseException:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            raise

    # -- read side ------------------------------------------------------------

    @contextmanager
    def _reader(self, *, fresh: bool = False) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise Unavailable(f"event log {self.path} is closed")
        try:
            conn = self._connect() if fresh else self._readers.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        except sqlite3.Error:
            conn.close()  # not back to the pool: it may be the broken one
            raise
        if self._closed:
            conn.close()
        else:
            self._readers.put(conn)

    def _select(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        """Rows of a read, once more on a new connection after an I/O error.

        `chronicle replay` has chDB read this file through its own SQLite
        library (projections/replay_sql.stage_sqlite). POSIX locks belong to
        the process, so that library, closing the file, can believe itself the
        last connection and remove the write-ahead log and its shared memory
        under this library's open connections, whose next read fails with
        "disk I/O error" (seen once in CI). Every commit is in the database
        by then (that connection checkpoints first), so a new connection reads
        it whole."""
        try:
            with self._reader() as conn:
                return conn.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as exc:
            if "disk I/O error" not in str(exc):
                raise
            log.warning("event log %s: %s; reading again on a new connection", self.path, exc)
            with self._reader(fresh=True) as conn:
                return conn.execute(sql, parameters).fetchall()

    def read(self, start: Position, max_records: int = 1000) -> list[LogRecord]:
        if max_records < 1:
            raise Invalid(f"max_records must be positive, not {max_records}")
        begin = start.get(PARTITION, 0)
        try:
            rows = self._select(
                "SELECT log_offset, key, value FROM event_log"
                " WHERE log_offset >= ? ORDER BY log_offset LIMIT ?",
                (begin, max_records),
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"event log {self.path}: read failed: {exc}") from exc
        return [LogRecord(PARTITION, offset, key, bytes(value)) for offset, key, value in rows]

    def scan(
        self, start: Position, starts: Sequence[bytes], shape: bytes, max_records: int
    ) -> tuple[list[LogRecord], dict[int, int]]:
        """The records among the next `max_records` from `start` whose value
        begins with one of `starts`, or does not begin with `shape` at all (the
        caller decides on those), and the position after the records looked at.

        For a reactor interested in one event type among millions: SQLite
        compares the first bytes of each value (with the interpreter lock
        released) instead of every record becoming Python objects. After a
        bulk import the storage commitment reactor caught up over 900,000
        events, ~20 s of the interpreter that the searches shared."""
        if max_records < 1:
            raise Invalid(f"max_records must be positive, not {max_records}")
        begin = start.get(PARTITION, 0)
        upto = min(begin + max_records, self.end()[PARTITION])
        wanted = " OR ".join("substr(value, 1, ?) = ?" for _ in starts) or "0"
        parameters: list[Any] = [begin, upto, len(shape), shape]
        for prefix in starts:
            parameters += [len(prefix), prefix]
        try:
            rows = self._select(
                "SELECT log_offset, key, value FROM event_log WHERE log_offset >= ?"
                f" AND log_offset < ? AND (substr(value, 1, ?) != ? OR {wanted})"
                " ORDER BY log_offset",
                tuple(parameters),
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"event log {self.path}: read failed: {exc}") from exc
        records = [LogRecord(PARTITION, offset, key, bytes(value)) for offset, key, value in rows]
        return records, {PARTITION: max(begin, upto)}

    def end(self) -> dict[int, int]:
        try:
            ((next_offset,),) = self._select(
                "SELECT COALESCE(MAX(log_offset) + 1, 0) FROM event_log", ()
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"event log {self.path}: end failed: {exc}") from exc
        return {PARTITION: int(next_offset)}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Let an in-flight group finish before its connection goes away.
            self._idle.wait_for(lambda: not self._leading)
        self._writer.close()
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break


def _checked(key: str, value: bytes) -> tuple[str, bytes]:
    # Reject bad records before they join a group: one caller's mistake must
    # not fail everybody else's commit.
    if not isinstance(key, str):
        raise Invalid(f"log record key must be str, not {type(key).__name__}")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise Invalid(f"log record value must be bytes, not {type(value).__name__}")
    return key, bytes(value)
