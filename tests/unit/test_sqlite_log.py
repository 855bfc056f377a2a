"""SqliteEventLog beyond the port contract: group commit, processes, failures."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.errors import Invalid, Unavailable
from infra.sqlite_log import SqliteEventLog

REPO = Path(__file__).resolve().parents[2]

APPENDER = """
import json, sys
from pathlib import Path
from infra.sqlite_log import SqliteEventLog
log = SqliteEventLog(Path(sys.argv[1]))
name, count = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # start together, so the appends really contend
positions = []
for i in range(count):
    positions += log.append([("1.2.3", f"{name}-{i}".encode()), ("1.2.4", b"x")])
log.close()
print(json.dumps(positions))
"""


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqliteEventLog]:
    event_log = SqliteEventLog(tmp_path / "log.db")
    yield event_log
    event_log.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_waiting_appenders_share_one_commit(
    log: SqliteEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[int] = []
    first_inside, release = threading.Event(), threading.Event()
    write = log._write

    def held_write(group: list[object]) -> None:
        groups.append(len(group))
        if len(groups) == 1:
            first_inside.set()
            release.wait(5)
        write(group)  # type: ignore[arg-type]

    monkeypatch.setattr(log, "_write", held_write)
    results: list[list[tuple[int, int]]] = []

    def append(n: int) -> None:
        results.append(log.append([("1.2.3", b"%d" % n)]))

    leader = threading.Thread(target=append, args=(0,))
    leader.start()
    first_inside.wait(5)
    followers = [threading.Thread(target=append, args=(n,)) for n in range(1, 8)]
    for follower in followers:
        follower.start()
    wait_until(lambda: len(log._pending) == 7)
    release.set()
    for thread in [leader, *followers]:
        thread.join()
    assert groups == [1, 7], "the seven that queued during the first commit share the second"
    assert sorted(offset for [(_, offset)] in results) == list(range(8))


def test_two_processes_append_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    SqliteEventLog(path).close()  # create the schema before the race
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path), name, "150"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    positions = [tuple(p) for out in outputs for p in json.loads(out)]
    assert sorted(offset for _, offset in positions) == list(range(600))
    log = SqliteEventLog(path)
    try:
        records = log.read({}, 1000)
        assert [r.offset for r in records] == list(range(600))
        for name in ("a", "b"):
            mine = [r.value for r in records if r.value.startswith(name.encode() + b"-")]
            assert mine == [f"{name}-{i}".encode() for i in range(150)], "per-writer order kept"
        assert log.end() == {0: 600}
    finally:
        log.close()


def test_a_lock_held_past_the_timeout_is_unavailable_and_leaves_no_gap(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "log.db", busy_timeout=0.2)
    other = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable, match="locked"):
            log.append([("1.2.3", b"waits too long")])
        other.execute("ROLLBACK")
        assert log.append([("1.2.3", b"now")]) == [(0, 0)]
    finally:
        other.close()
        log.close()


def test_a_full_disk_is_unavailable_and_the_log_recovers(log: SqliteEventLog) -> None:
    assert log.append([("1.2.3", b"small")]) == [(0, 0)]
    (pages,) = log._writer.execute("PRAGMA page_count").fetchone()
    log._writer.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL, as on ENOSPC
    with pytest.raises(Unavailable, match="full"):
        log.append([("1.2.3", b"x" * 1_000_000)])
    log._writer.execute("PRAGMA max_page_count = 1073741823")
    assert log.append([("1.2.3", b"after")]) == [(0, 1)]
    assert [r.value for r in log.read({})] == [b"small", b"after"]


def test_commits_are_durable_settings(log: SqliteEventLog, tmp_path: Path) -> None:
    assert log._writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    with sqlite3.connect(tmp_path / "log.db") as probe:
        assert probe.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_bad_records_are_refused_before_they_join_a_group(log: SqliteEventLog) -> None:
    with pytest.raises(Invalid):
        log.append([("1.2.3", "text, not bytes")])  # type: ignore[list-item]
    with pytest.raises(Invalid):
        log.append([(123, b"x")])  # type: ignore[list-item]
    assert log.end() == {0: 0}


def test_buffers_are_stored_as_bytes(log: SqliteEventLog) -> None:
    log.append([("1.2.3", bytearray(b"ba")), ("1.2.3", memoryview(b"mv"))])  # type: ignore[list-item]
    assert [(type(r.value), r.value) for r in log.read({})] == [(bytes, b"ba"), (bytes, b"mv")]


def test_other_partitions_in_a_position_are_ignored(log: SqliteEventLog) -> None:
    log.append([("1.2.3", b"a"), ("1.2.3", b"b")])
    assert [r.value for r in log.read({0: 1, 5: 99})] == [b"b"]


def test_a_closed_log_is_unavailable(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "log.db")
    log.close()
    log.close()
    for call in (lambda: log.append([("1.2.3", b"x")]), lambda: log.read({}), log.end):
        with pytest.raises(Unavailable):
            call()


def test_an_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(Unavailable):
        SqliteEventLog(tmp_path / "a-folder")


def test_a_read_after_an_io_error_goes_to_a_new_connection(log: SqliteEventLog) -> None:
    """chDB's own SQLite, reading the file during a replay in this process, may
    remove the write-ahead log under our pooled connections: a read that fails
    with "disk I/O error" is made again on a new connection, and the broken
    one leaves the pool."""
    log.append([("k", b"v")])

    class Broken:
        closed = False

        def execute(self, *_: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        def close(self) -> None:
            self.closed = True

    broken = Broken()
    log._readers.put(broken)  # type: ignore[arg-type]
    assert [r.value for r in log.read({0: 0})] == [b"v"]
    assert broken.closed
    while not log._readers.empty():
        log._readers.get_nowait().close()
    log._readers.put(Broken())  # type: ignore[arg-type]
    assert log.end() == {0: 1}

    class Other(Broken):
        def execute(self, *_: object) -> None:
            raise sqlite3.OperationalError("database is locked")

    while not log._readers.empty():  # the pool's good connections go first
        log._readers.get_nowait().close()
    log._readers.put(Other())  # type: ignore[arg-type]
    with pytest.raises(Unavailable):
        log.read({0: 0})


def test_a_scan_returns_the_records_with_a_prefix_and_where_it_stopped(
    log: SqliteEventLog,
) -> None:
    log.append(
        [
            ("k", b'{"type":"Stored","n":0}'),
            ("k", b'{"type":"Wanted","n":1}'),
            ("k", b'{"n":2,"type":"Wanted"}'),  # not in the usual shape: the caller decides
            ("k", b'{"type":"WantedToo","n":3}'),
            ("k", b'{"type":"Wanted","n":4}'),
        ]
    )
    starts, shape = [b'{"type":"Wanted"'], b'{"type":"'
    records, after = log.scan({}, starts, shape, 3)
    assert [r.offset for r in records] == [1, 2] and after == {0: 3}
    records, after = log.scan(after, starts, shape, 100)
    assert [r.offset for r in records] == [4] and after == {0: 5}
    assert records[0].value == b'{"type":"Wanted","n":4}'
    assert log.scan(after, starts, shape, 100) == ([], {0: 5})
    with pytest.raises(Invalid):
        log.scan({}, starts, shape, 0)
