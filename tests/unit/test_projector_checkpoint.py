"""The lone chDB projector's background loop stores its checkpoint row at most
every CHECKPOINT_SECONDS while events keep coming, when idle, and on stopping;
readers never wait for that row. Everywhere else a batch stores its row."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from infra.factory import open_projection_store
from infra.migrations import migrate
from infra.ports import LogRecord, Position, ProjectionStore
from projections import runner
from projections.replay import TABLES
from projections.runner import Projector
from tests.unit.test_members import instance_event

SUFFIX = "_cp"
EVENTS = 12


class GrowingLog:
    """One partition, appended to while a projector follows it."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []

    def append(self, value: bytes) -> None:
        self.records.append(LogRecord(0, len(self.records), "k", value))

    def read(self, start: Position, max_records: int = 1000) -> list[LogRecord]:
        first = start.get(0, 0)
        return self.records[first : first + max_records]

    def end(self) -> Position:
        return {0: len(self.records)}


class CountingStore:
    """The store, counting checkpoint inserts; `generation` None when not shared."""

    def __init__(self, store: ProjectionStore, *, shared: bool) -> None:
        self._store = store
        self.generation = store.generation if shared else None  # type: ignore[attr-defined]
        self.checkpoints = 0

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        if table.startswith("checkpoint"):
            self.checkpoints += 1
        self._store.insert(table, rows, columns)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        return self._store.query(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture()
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    opened = open_projection_store(f"chdb://{tmp_path_factory.mktemp('index')}")
    migrate(opened, suffix=SUFFIX)
    yield opened
    opened.close()


def _stored(store: ProjectionStore) -> dict[int, int]:
    rows = store.query(f"SELECT partition, next_offset FROM checkpoint{SUFFIX} FINAL")
    return {int(p): int(o) for p, o in rows}


def _filled(log: GrowingLog, count: int = EVENTS) -> GrowingLog:
    for n in range(count):
        log.append(instance_event(1 + n % 3, 1, n, {}))
    return log


def _eventually(check: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


def _following(
    store: ProjectionStore, *, shared: bool
) -> tuple[CountingStore, GrowingLog, Projector]:
    """A projector's background loop, one event per batch, on a filled log."""
    counting = CountingStore(store, shared=shared)
    log = _filled(GrowingLog())
    projector = Projector(log, counting, suffix=SUFFIX, batch=1, gather_seconds=0)  # type: ignore[arg-type]
    projector.start()
    return counting, log, projector


def test_the_loop_stores_one_row_for_a_run_of_batches_and_readers_do_not_wait_for_it(
    store: ProjectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "CHECKPOINT_SECONDS", 3600.0)
    counting, log, projector = _following(store, shared=True)
    try:
        assert projector.wait(log.end(), timeout=30)
        # Caught up: the idle loop stores the row (once, whatever it held).
        assert _eventually(lambda: _stored(store) == log.end())
        assert counting.checkpoints == 1  # twelve batches, one row
        for n in range(EVENTS, EVENTS + 3):
            log.append(instance_event(1, 2, n, {}))
        assert projector.wait(log.end(), timeout=30)
    finally:
        projector.stop()
    assert _stored(store) == log.end()  # stopping stores what was projected
    assert projector.checkpoint() == log.end()
    rows = store.query(f"SELECT count() FROM instance{SUFFIX} FINAL")
    assert rows[0][0] == EVENTS + 3


def test_the_loop_stores_while_events_keep_coming_every_checkpoint_seconds(
    store: ProjectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "CHECKPOINT_SECONDS", 0.0)
    counting, log, projector = _following(store, shared=True)
    try:
        assert projector.wait(log.end(), timeout=30)
    finally:
        projector.stop()
    assert counting.checkpoints == EVENTS  # due after every batch
    assert _stored(store) == log.end()


@pytest.mark.parametrize("how", ["loop on an unshared store", "run_until"])
def test_elsewhere_every_batch_stores_its_checkpoint_row(store: ProjectionStore, how: str) -> None:
    counting = CountingStore(store, shared=how == "run_until")
    log = _filled(GrowingLog())
    projector = Projector(log, counting, suffix=SUFFIX, batch=1, gather_seconds=0)  # type: ignore[arg-type]
    try:
        if how == "run_until":
            for n in range(1, EVENTS + 1):
                projector.run_once()
                assert _stored(store) == {0: n}
        else:
            projector.start()
            assert projector.wait(log.end(), timeout=30)
            assert _stored(store) == log.end()
    finally:
        projector.stop()
    assert counting.checkpoints == EVENTS


def test_a_restart_before_the_row_was_stored_projects_the_batches_again_to_the_same_tables(
    store: ProjectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "CHECKPOINT_SECONDS", 3600.0)
    log = _filled(GrowingLog(), 4)
    first = Projector(log, store, suffix=SUFFIX, batch=1, gather_seconds=0)
    first.run_until(log.end())  # stored: {0: 4}
    for n in range(4, EVENTS):
        log.append(instance_event(1 + n % 3, 1 + n % 2, n, {}))
    first._coalescing = True  # as its loop does; then it dies before storing the row
    first.run_until(log.end())
    assert first.checkpoint() == log.end()
    assert _stored(store) == {0: 4}
    before = {t: _rows(store, t) for t in TABLES if t != "checkpoint"}
    again = Projector(log, store, suffix=SUFFIX, batch=1, gather_seconds=0)
    try:
        assert again.checkpoint() == {0: 4}
        again.run_until(log.end())
        assert again.checkpoint() == _stored(store) == log.end()
        assert {t: _rows(store, t) for t in before} == before
    finally:
        again.stop()


def _rows(store: ProjectionStore, table: str) -> list[tuple[Any, ...]]:
    rows = store.query(f"SELECT * EXCEPT version FROM {table}{SUFFIX} FINAL")
    return sorted(tuple(str(v) for v in row) for row in rows)
