"""Series /metadata documents (migration 008, projections.documents).

A document must be byte for byte what /metadata builds from instance_member's
live rows (a study's: its series' documents, when each of them has one), for
any history of stores and moves, live and after replay; a batch that touches a
series must retire its document at once (a stale mark); a series whose
metadata a document cannot hold gets none; and the router serves the document
when there is one, the rows otherwise, with the same answer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import wado
from api.catalog import list_metadata, metadata_bytes, prepared_metadata
from api.wado import absolute_metadata
from api.wado_common import instance_url
from infra.factory import open_projection_store
from infra.fs_blobs import FileBlobStore
from infra.migrations import migrate
from infra.ports import ProjectionStore
from infra.settings import Settings
from projections import documents
from projections.replay import TABLES, replay
from projections.runner import Projector
from tests.unit.test_members import OnePartitionLog, instance_event

BASE = "http://pacs.example/dicomweb"
JSON = "application/dicom+json"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    opened = open_projection_store(f"chdb://{tmp_path_factory.mktemp('index')}")
    migrate(opened)
    yield opened
    opened.close()


def _metadata(number: int | None, kind: int) -> dict[str, Any]:
    """kind 0: plain; 1: a relative BulkDataURI; 2: one a document cannot hold."""
    meta: dict[str, Any] = {"00080060": {"vr": "CS", "Value": ["CT"]}}
    if number is not None:
        meta["00200013"] = {"vr": "IS", "Value": [number]}
    if kind == 1:
        meta["7FE00010"] = {"vr": "OW", "BulkDataURI": "bulkdata/100-64"}
    if kind == 2:
        meta["7FE00010"] = {"vr": "OW", "BulkDataURI": "http://elsewhere/pixels"}
    return meta


def _answer(index: ProjectionStore, study: str, series: str | None) -> bytes | None:
    """What /metadata builds from rows (api.wado._metadata), None for no instance."""
    rows = list_metadata(index, study, series)
    if not rows:
        return None
    parts = [absolute_metadata(metadata_bytes(r, None), instance_url(BASE, r)) for r in rows]  # type: ignore[arg-type]
    return b"[" + b",".join(parts) + b"]"


def _served(index: ProjectionStore, study: str, series: str | None) -> bytes | None:
    found = prepared_metadata(index, study, series)
    return None if found is None else found.replace(b"\x00", BASE.encode())


def _places(index: ProjectionStore) -> set[tuple[str, str]]:
    rows = index.query(
        "SELECT DISTINCT study_instance_uid, series_instance_uid FROM instance_member"
    )
    return {(str(study), str(series)) for study, series in rows}


def _holdable(index: ProjectionStore, study: str, series: str | None) -> bool:
    rows = list_metadata(index, study, series)
    return bool(rows) and all("elsewhere" not in r.metadata_json for r in rows)


def _check_documents(index: ProjectionStore) -> None:
    places = _places(index)
    studies: set[tuple[str, str | None]] = {(study, None) for study, _ in places}
    for study, series in places | studies:
        served = _served(index, study, series)
        if _holdable(index, study, series):
            assert served == _answer(index, study, series), (study, series)
        else:  # no live instance, or metadata a document cannot hold
            assert served is None, (study, series)


def _truncate(index: ProjectionStore) -> None:
    for table in TABLES:
        index.command(f"TRUNCATE TABLE {table}")


_stores = st.lists(
    st.tuples(
        st.integers(1, 2),  # study
        st.integers(1, 2),  # series
        st.integers(1, 5),  # SOP: the same one again moves or replaces it
        st.one_of(st.none(), st.integers(1, 3)),  # instance number (ties, absent)
        st.sampled_from([0, 0, 1, 1, 2]),
    ),
    min_size=1,
    max_size=16,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stores=_stores, batch=st.integers(1, 5))
def test_documents_are_the_rows_answer_live_and_after_replay(
    store: ProjectionStore, stores: list[tuple[int, int, int, int | None, int]], batch: int
) -> None:
    log = OnePartitionLog(
        [instance_event(a, b, sop, _metadata(n, kind)) for a, b, sop, n, kind in stores]
    )
    _truncate(store)
    projector = Projector(log, store, batch=batch, gather_seconds=0)
    try:
        projector.run_until(log.end())
        projector.build_documents(everything=True)
    finally:
        projector.stop()
    _check_documents(store)
    replay(log, store, batch=batch)  # type: ignore[arg-type]
    _check_documents(store)


def test_a_batch_touching_a_series_retires_its_document(store: ProjectionStore) -> None:
    _truncate(store)
    events = [instance_event(1, 1, sop, _metadata(sop, 1)) for sop in (1, 2)]
    log = OnePartitionLog(events)
    projector = Projector(log, store, batch=1, gather_seconds=0)
    try:
        projector.run_until(log.end())
        assert _served(store, "1.2.1", "1.2.1.1") is None  # not quiet yet
        # Two batches, one mark: the series was still waiting for its document.
        assert store.query("SELECT count() FROM series_metadata") == [(1,)]
        assert projector.build_documents(everything=True) == 1
        first = _served(store, "1.2.1", "1.2.1.1")
        assert first is not None and first == _answer(store, "1.2.1", "1.2.1.1")
        # SOP 2 moves to another series, SOP 3 arrives: both series are touched.
        log.records = OnePartitionLog(
            [*events, instance_event(1, 2, 2, _metadata(2, 0)), instance_event(1, 1, 3, {})]
        ).records
        projector.run_until(log.end())
        assert _served(store, "1.2.1", "1.2.1.1") is None
        assert _served(store, "1.2.1", "1.2.1.2") is None
        assert projector.build_documents(everything=True) == 2
        moved = _served(store, "1.2.1", "1.2.1.1")
        assert moved is not None and moved == _answer(store, "1.2.1", "1.2.1.1")
        assert b"/instances/1.3.2/" not in moved and len(orjson.loads(moved)) == 2
        other = _served(store, "1.2.1", "1.2.1.2")
        assert other is not None and other == _answer(store, "1.2.1", "1.2.1.2")
    finally:
        projector.stop()


def test_quiet_series_are_due_once_untouched_long_enough() -> None:
    quiet = documents.QuietSeries(quiet=0.5, bound=2)
    assert quiet.next_due(0.0) is None
    quiet.touch([("S", "A")], now=1.0)
    quiet.touch([("S", "B")], now=1.2)
    assert quiet.next_due(1.3) == pytest.approx(0.2)
    assert quiet.due(1.4) == []
    quiet.touch([("S", "A")], now=1.4)  # touched again: waits again
    assert quiet.due(1.8) == [("S", "B")]
    assert quiet.due(1.9) == [("S", "A")]
    quiet.touch([("S", "A"), ("S", "B"), ("S", "C")], now=2.0)  # over the bound
    assert sorted(quiet.due(9.0)) == [("S", "B"), ("S", "C")]


def test_a_series_whose_build_failed_is_marked_when_next_touched() -> None:
    quiet = documents.QuietSeries(quiet=0.5)
    quiet.touch([("S", "A")], now=1.0)
    assert quiet.waiting(("S", "A"))
    due = quiet.due(2.0)
    assert not quiet.waiting(("S", "A"))  # being built: the next touch marks it
    quiet.retry(due, now=2.0)  # the build may have written some documents
    assert not quiet.waiting(("S", "A"))
    assert quiet.due(2.6) == [("S", "A")]  # and it is built again
    quiet.touch([("S", "A")], now=3.0)  # a batch marked it
    assert quiet.waiting(("S", "A"))


class _FailingBuilds:
    """The store, with every document build failing until `fail` is cleared."""

    def __init__(self, store: ProjectionStore) -> None:
        self.store, self.fail = store, True

    def command(self, sql: str, parameters: Any = None) -> None:
        if self.fail and sql.startswith("INSERT INTO series_metadata"):
            self.store.command(sql, parameters)  # as if it failed after writing
            raise RuntimeError("build failed")
        self.store.command(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_failed_build_leaves_no_document_a_batch_cannot_retire(
    store: ProjectionStore,
) -> None:
    _truncate(store)
    failing = _FailingBuilds(store)
    log = OnePartitionLog([instance_event(3, 1, 1, _metadata(1, 0))])
    projector = Projector(log, failing, batch=10, gather_seconds=0)  # type: ignore[arg-type]
    try:
        projector.run_until(log.end())
        with pytest.raises(RuntimeError):
            projector.build_documents(everything=True)
        assert _served(store, "1.2.3", "1.2.3.1") is not None  # written all the same
        log.records = OnePartitionLog(
            [instance_event(3, 1, 1, _metadata(1, 0)), instance_event(3, 1, 2, {})]
        ).records
        projector.run_until(log.end())
        assert _served(store, "1.2.3", "1.2.3.1") is None  # the batch marked it
        failing.fail = False
        assert projector.build_documents(everything=True) == 1
        assert _served(store, "1.2.3", "1.2.3.1") == _answer(store, "1.2.3", "1.2.3.1")
    finally:
        projector.stop()


def test_marks_and_documents_take_increasing_versions() -> None:
    clock = documents.DocumentClock()
    taken = [clock.next() for _ in range(1000)]
    assert taken == sorted(set(taken))
    ahead = taken[-1] + 10**15  # a table written before the wall clock stepped back
    clock.at_least(ahead)
    assert clock.next() > ahead
    series = documents.series_of([{"study_instance_uid": "S", "series_instance_uid": "A"}] * 3)
    marks = documents.stale_marks(series, version=taken[-1])
    assert marks == [
        {"study_instance_uid": "S", "series_instance_uid": "A", "version": taken[-1],
         "document": ""},
    ]  # fmt: skip


@dataclass
class _Archive:
    settings: Settings
    blobs: FileBlobStore
    index: ProjectionStore
    barriers: list[bool] = field(default_factory=list)

    def read_barrier(self) -> bool:
        self.barriers.append(True)
        return True


def test_the_router_serves_the_document_with_the_rows_answer(
    store: ProjectionStore, tmp_path: Path
) -> None:
    _truncate(store)
    stores = [instance_event(7, 1 + sop % 2, sop, _metadata(sop, 1)) for sop in (1, 2, 3, 4)]
    log = OnePartitionLog(stores)
    projector = Projector(log, store, batch=10, gather_seconds=0)
    try:
        projector.run_until(log.end())
    finally:
        projector.stop()
    app = FastAPI()
    app.state.archive = _Archive(
        Settings(public_url="http://pacs.example"), FileBlobStore(tmp_path), store
    )
    app.include_router(wado.router)
    url = "/dicomweb/studies/1.2.7/series/1.2.7.1/metadata"
    study_url = "/dicomweb/studies/1.2.7/metadata"
    with TestClient(app) as client:
        from_rows = client.get(url, headers={"Accept": JSON})
        study_from_rows = client.get(study_url, headers={"Accept": JSON})
        projector.build_documents(everything=True)
        assert prepared_metadata(store, "1.2.7", "1.2.7.1") is not None
        assert prepared_metadata(store, "1.2.7") is not None
        from_document = client.get(url, headers={"Accept": JSON})
        study_from_documents = client.get(study_url, headers={"Accept": JSON})
        xml = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
        refused = client.get(url, headers={"Accept": "image/png"})
    assert from_rows.status_code == from_document.status_code == 200
    assert from_document.content == from_rows.content == _answer(store, "1.2.7", "1.2.7.1")
    assert from_document.headers["content-type"] == JSON
    assert study_from_documents.content == study_from_rows.content
    assert study_from_rows.content == _answer(store, "1.2.7", None)
    assert xml.status_code == 200 and xml.content.count(b"NativeDicomModel") >= 3
    assert refused.status_code == 406
