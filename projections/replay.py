"""`chronicle replay`: rebuild every projection from the log, then swap.

Fresh tables are built beside the live ones (suffix `_new`) and swapped in with
EXCHANGE TABLES, so queries keep answering from the old tables until the new
ones are complete.

Reactors (the storage commitment sender) keep their checkpoints in the same
`checkpoint` table under their own names. Replay rebuilds projections only:
it never runs a reactor, and it carries the reactors' checkpoints over into
the fresh table, so after the swap they go on from where they were instead
of re-reading the log (which would not make them act again either: they
skip what the log says they already did).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infra.clickhouse import ClickHouseStore
from infra.migrations import migrate
from infra.ports import BlobStore, EventLog, LogRecord, Position, ProjectionStore, covers
from infra.sqlite_log import PARTITION, SqliteEventLog
from projections import documents, members, replay_sql, stats
from projections.runner import Projector

log = logging.getLogger("chronicle.replay")

TABLES = (
    "patient",
    "study",
    "series",
    "instance",
    "instance_member",
    "series_metadata",
    "receipt",
    "receipt_by_sop",
    "storage_commitment",
    "study_stats",
    "series_stats",
    "checkpoint",
)
SUFFIX = "_new"
#: The projector replay rebuilds; every other checkpoint belongs to a reactor.
PROJECTOR = "levels"


def replay(
    event_log: EventLog,
    index: ProjectionStore,
    blobs: BlobStore | None = None,
    *,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
    merge: bool = True,
    in_sql: bool = True,
) -> int:
    """Rebuild the projection tables from the whole log; return events applied.

    `merge`: merge each fresh table to one part before the swap (the embedded
    index). A ClickHouse server merges in the background of its own; there
    OPTIMIZE ... FINAL would rewrite every table whole. `in_sql`: make the
    rows of plain events in SQL (projections/replay_sql.py); without it every
    event goes through the Python projector (what the tests compare with)."""
    for table in TABLES:
        index.command(f"DROP TABLE IF EXISTS {table}{SUFFIX}")
    migrate(index, suffix=SUFFIX)
    target = event_log.end()
    projector = Projector(
        event_log, index, blobs=blobs, batch=batch, name=PROJECTOR, suffix=SUFFIX, stats=False
    )
    applied = 0

    def counted(n: int) -> None:
        nonlocal applied
        applied += n
        if progress:
            progress(n)

    replay_sql.prepare(index, SUFFIX)
    try:
        local = _local_sqlite(event_log, index) if in_sql else None
        if local is not None:
            position = _project_local(event_log, index, projector, target, batch, counted, local)
        else:
            position = _project(event_log, index, projector, target, batch, counted, in_sql)
    finally:
        projector.stop()  # its insert threads
        replay_sql.drop(index, SUFFIX)
    index.insert(
        f"checkpoint{SUFFIX}",
        [(PROJECTOR, p, o, o) for p, o in sorted(position.items())],
        ("projector", "partition", "next_offset", "version"),
    )
    # instance_member is the instance table again, ordered by place: copied in
    # SQL once (cheaper than a Python row per event); batches never looked
    # back at earlier places, so the places instances left are hidden now.
    index.command(members.FILL_SQL.format(s=SUFFIX))
    index.command(members.TOMBSTONES_SQL.format(s=SUFFIX))
    stats.rebuild(index, SUFFIX, version=sum(position.values()))
    index.command(
        f"INSERT INTO checkpoint{SUFFIX} (projector, partition, next_offset, version) "
        "SELECT projector, partition, next_offset, version FROM checkpoint FINAL "
        "WHERE projector != {name:String}",
        {"name": PROJECTOR},
    )
    # One part per table before the swap: a replay writes a part per batch, and
    # left to background merges in the serving process, searches over them ran
    # 2-2.5x slower (FINAL merges every part per query) while the merges also
    # took the CPU (bench/query.py at 10k, docs/performance.md).
    if merge:
        started = time.perf_counter()
        with ThreadPoolExecutor(replay_sql.PARALLEL, thread_name_prefix="replay-merge") as pool:
            list(pool.map(index.command, [f"OPTIMIZE TABLE {t}{SUFFIX} FINAL" for t in TABLES]))
        log.info("merged the fresh tables in %.1f s", time.perf_counter() - started)
    # From instance_member's live rows, merged by now (its FINAL then costs
    # little); series_metadata's part per statement is merged with the rest.
    documents.build_all(index, SUFFIX, documents.DocumentClock().next())
    if merge:
        index.command(f"OPTIMIZE TABLE series_metadata{SUFFIX} FINAL")
    for table in TABLES:
        index.command(f"EXCHANGE TABLES {table} AND {table}{SUFFIX}")
        index.command(f"DROP TABLE IF EXISTS {table}{SUFFIX}")
    log.info("replayed %d events up to %s", applied, target)
    return applied


def _project(
    event_log: EventLog,
    index: ProjectionStore,
    projector: Projector,
    target: Position,
    batch: int,
    progress: Callable[[int], None],
    in_sql: bool,
) -> Position:
    """Project to `target` a chunk at a time: the plain events' rows in SQL
    (projections/replay_sql.py), the others by the Python projector; return
    the position reached. Safe here only: replay writes fresh tables nobody
    reads before the swap, and a failed replay starts again from nothing."""
    position: dict[int, int] = {}
    while not covers(position, target):
        records = event_log.read(position, batch)
        if not records:
            break
        left = replay_sql.project(index, SUFFIX, records) if in_sql else records
        if left:
            _in_python(projector, left, position)
        for record in records:
            if record.offset >= position.get(record.partition, 0):
                position[record.partition] = record.offset + 1
        progress(len(records))
    return position


def _local_sqlite(event_log: EventLog, index: ProjectionStore) -> Path | None:
    """The embedded log's file when chDB in this process can read it itself."""
    embedded = isinstance(index, ClickHouseStore) and index.url.startswith("chdb:")
    return event_log.path if embedded and isinstance(event_log, SqliteEventLog) else None


def _project_local(
    event_log: EventLog,
    index: ProjectionStore,
    projector: Projector,
    target: Position,
    batch: int,
    progress: Callable[[int], None],
    path: Path,
) -> Position:
    """`_project` for the embedded SQLite log and index: chDB reads each chunk
    from the log file itself; Python reads only the events left to it."""
    end = target.get(PARTITION, 0)
    for first in range(0, end, batch):
        stop = min(first + batch, end)
        staged = replay_sql.stage_sqlite(index, SUFFIX, path, first, stop)
        left = replay_sql.make_rows(index, SUFFIX)
        if left:
            lowest = min(offset for _, offset in left)
            highest = max(offset for _, offset in left)
            span = event_log.read({PARTITION: lowest}, highest - lowest + 1)
            records = [record for record in span if (record.partition, record.offset) in left]
            _in_python(projector, records, {PARTITION: first})
        progress(staged)
    return {PARTITION: end} if end else {}


def _in_python(projector: Projector, records: list[LogRecord], start: Position) -> None:
    """The rows of the events SQL left, by the Python projector."""
    # Rows of the same keys went in by SQL since: this projector's memory of
    # what it wrote last no longer tells what the table holds.
    projector.forget_written()
    rows, advanced = projector.rows_of(records)
    rows.tables.pop("instance_member", None)  # filled from the instance table
    projector.write(records, rows, start, advanced)
