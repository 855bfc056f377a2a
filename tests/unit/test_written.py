"""A projector leaves out level rows that repeat what it last wrote, and only those."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.factory import open_projection_store
from infra.migrations import migrate
from infra.ports import ProjectionStore
from projections.replay import TABLES
from projections.rows import rows_for
from projections.runner import Projector
from projections.written import LastWritten, newest_per_key
from schemas import codec
from tests.unit.test_members import OnePartitionLog, instance_event

SUFFIX = "_w"


def test_an_unchanged_row_is_left_out_a_changed_one_kept() -> None:
    written = LastWritten({"study": ("study_instance_uid",)}, bound=2)
    first = {"study_instance_uid": "1", "patient_name": "A", "version": 1}
    assert written.changed("study", [first]) == [first]
    written.remember("study", [first])
    assert written.changed("study", [{**first, "version": 2}]) == []
    renamed = {**first, "patient_name": "B", "version": 3}
    assert written.changed("study", [renamed]) == [renamed]
    other = {"c": 1, "version": 1}
    assert written.changed("instance", [other]) == [other]  # not a level table
    written.remember("study", [{"study_instance_uid": "2", "version": 1}])
    written.remember("study", [{"study_instance_uid": "3", "version": 1}])
    assert written.changed("study", [first]) == [first]  # bounded: "1" went out first
    written.forget()
    assert written.changed("study", [{"study_instance_uid": "3", "version": 1}])


class RecordingStore:
    """The store, counting the rows each insert carries per table."""

    def __init__(self, store: ProjectionStore) -> None:
        self._store = store
        self.inserted: dict[str, int] = {}

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        self.inserted[table] = self.inserted.get(table, 0) + len(rows)
        self._store.insert(table, rows, columns)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        return self._store.query(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    opened = open_projection_store(f"chdb://{tmp_path_factory.mktemp('index')}")
    migrate(opened, suffix=SUFFIX)
    yield opened
    opened.close()


def _event(sop: int, study: int, name: str) -> bytes:
    return instance_event(
        study, 1, sop, {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}
    )


def _levels(store: ProjectionStore, table: str) -> set[tuple[Any, ...]]:
    rows = store.query_dicts(f"SELECT * FROM {table}{SUFFIX} FINAL")
    return {tuple(v for k, v in sorted(r.items()) if k != "version") for r in rows}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stores=st.lists(st.tuples(st.integers(1, 2), st.sampled_from(["A^X", "B^Y"])), min_size=1),
    batch=st.integers(1, 4),
)
def test_level_tables_hold_the_newest_attributes_whatever_was_left_out(
    store: ProjectionStore, stores: list[tuple[int, str]], batch: int
) -> None:
    for table in TABLES:
        store.command(f"TRUNCATE TABLE {table}{SUFFIX}")
    log = OnePartitionLog([_event(n, *s) for n, s in enumerate(stores)])
    recording = RecordingStore(store)
    projector = Projector(log, recording, suffix=SUFFIX, batch=batch, gather_seconds=0)  # type: ignore[arg-type]
    try:
        projector.run_until(log.end())
    finally:
        projector.stop()
    every: dict[str, list[dict[str, Any]]] = {}
    for record in log.records:
        for table, rows in rows_for(record, codec.decode(record.value), None).tables.items():
            every.setdefault(table, []).extend(rows)
    for table in ("patient", "study", "series"):
        newest = newest_per_key(table, every[table])
        assert _levels(store, table) == {
            tuple(v for k, v in sorted(r.items()) if k != "version") for r in newest
        }
    # One patient and two studies whose names alternate: rows go out only on change.
    changes = sum(1 for a, b in zip(stores, stores[1:], strict=False) if a[1] != b[1])
    assert recording.inserted.get(f"patient{SUFFIX}", 0) <= 1 + changes
