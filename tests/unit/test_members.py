"""instance_member's live rows are the live instances (migration 007).

Series and study /metadata read `instance_member FINAL WHERE hidden = 0`, so
it must hold each live instance once, at its current study and series, with
its newest metadata, however often instances moved, within a batch or across
batches: the live projector hides the places left with tombstones; replay fills
the table from its instance table and writes every tombstone, in SQL, at the end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.factory import open_projection_store
from infra.migrations import migrate
from infra.ports import LogRecord, Position, ProjectionStore
from projections import members
from projections.replay import TABLES, replay
from projections.runner import Projector
from schemas import codec
from schemas.events import BlobRef, Envelope, InstanceStored, Source

SHA = "ab" * 32


class OnePartitionLog:
    def __init__(self, values: list[bytes]) -> None:
        self.records = [LogRecord(0, n, "k", v) for n, v in enumerate(values)]

    def read(self, start: Position, max_records: int = 1000) -> list[LogRecord]:
        first = start.get(0, 0)
        return self.records[first : first + max_records]

    def end(self) -> Position:
        return {0: len(self.records)}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    opened = open_projection_store(f"chdb://{tmp_path_factory.mktemp('index')}")
    migrate(opened)
    yield opened
    opened.close()


def instance_event(study: int, series: int, sop: int, metadata: dict[str, Any]) -> bytes:
    """An InstanceStored event of SOP 1.3.<sop> in series 1.2.<study>.<series>."""
    stored = InstanceStored(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"1.3.{sop}",
        series_instance_uid=f"1.2.{study}.{series}",
        study_instance_uid=f"1.2.{study}",
        patient_id="P",
        issuer_of_patient_id="",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob=BlobRef(f"instances/ab/ab/{SHA}.dcm", SHA, 1000, 300),
        source=Source("DIMSE", calling_ae="MOD", called_ae="CHRONICLE", peer="127.0.0.1:4000"),
        metadata=metadata,
        frames=None,
    )
    return codec.encode(Envelope.of(stored, key=stored.study_instance_uid))


def _event(study: int, series: int, sop: int, number: int) -> bytes:
    return instance_event(study, series, sop, {"00200013": {"vr": "IS", "Value": [number]}})


def _live(store: ProjectionStore, table: str, suffix: str) -> set[tuple[Any, ...]]:
    rows = store.query(
        "SELECT study_instance_uid, series_instance_uid, sop_instance_uid, metadata"
        f" FROM {table}{suffix} FINAL WHERE hidden = 0"
    )
    return {(*row[:3], orjson.loads(row[3])["00200013"]["Value"][0]) for row in rows}


_stores = st.lists(
    st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 5), st.integers(1, 99)),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stores=_stores, batch=st.integers(1, 6))
def test_live_members_are_the_live_instances_live_and_after_replay(
    store: ProjectionStore, stores: list[tuple[int, int, int, int]], batch: int
) -> None:
    log = OnePartitionLog([_event(*s) for s in stores])
    for table in TABLES:
        store.command(f"TRUNCATE TABLE {table}")
    projector = Projector(log, store, batch=batch, gather_seconds=0)
    try:
        projector.run_until(log.end())
    finally:
        projector.stop()
    expected = _live(store, "instance", "")
    assert len(expected) == len({sop for *_, sop, _ in stores})
    assert _live(store, "instance_member", "") == expected
    # Replay's way: no member rows per batch, the table filled and its
    # tombstones written in SQL at the end.
    replay(log, store, batch=batch)  # type: ignore[arg-type]
    assert _live(store, "instance", "") == expected
    assert _live(store, "instance_member", "") == expected


def test_tombstones_hide_every_place_left_with_the_newest_version() -> None:
    newest = [
        {"sop_instance_uid": "9", "study_instance_uid": "S2", "series_instance_uid": "R2",
         "version": 7},
    ]  # fmt: skip
    in_batch = [
        {"sop_instance_uid": "9", "study_instance_uid": "S1", "series_instance_uid": "R3"},
        {"sop_instance_uid": "9", "study_instance_uid": "S2", "series_instance_uid": "R2"},
    ]
    earlier = {("9", "S1", "R1"), ("9", "S2", "R2"), ("8", "S1", "R1")}
    hidden = members.tombstones(newest, in_batch, earlier)
    assert [(r["study_instance_uid"], r["series_instance_uid"]) for r in hidden] == [
        ("S1", "R1"),
        ("S1", "R3"),
    ]
    assert all(r["hidden"] == 1 and r["version"] == 7 and r["metadata"] == "" for r in hidden)
