"""End to end in one process on the embedded defaults: the DESIGN.md invariants.

A real SQLite log, folder blob store and chDB index; the FastAPI app driven
through Starlette's TestClient. (Subprocess and third-party-client tests live
in tests/interop.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from api.app import create_app
from api.check import check_archive
from api.wiring import Archive, open_archive
from infra.errors import Invalid, Unavailable
from infra.settings import load_settings
from projections.replay import replay
from schemas import codec
from schemas.events import Source
from tests.support import dataset_bytes, make_ct, part10_bytes, split_multipart, write_part10

DIMSE = Source("DIMSE", calling_ae="MODALITY", called_ae="CHRONICLE", peer="127.0.0.1:5000")
ALL_SYNTAXES = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data_dir = tmp_path_factory.mktemp("archive")
    settings = load_settings({"data_dir": str(data_dir), "min_free_bytes": 0}, environ={})
    opened = open_archive(settings)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def store(archive: Archive, ds: Dataset, tmp_path: Path, source: Source = DIMSE) -> Any:
    path = write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    return archive.ingest.store_part10_file(path, source=source)


def events(archive: Archive) -> list[Any]:
    return [codec.decode(r.value) for r in archive.log.read({}, 100_000)]


def studies(client: TestClient, **params: str) -> list[dict[str, Any]]:
    response = client.get("/dicomweb/studies", params=params)
    assert response.status_code in (200, 204), response.text
    return [] if response.status_code == 204 else response.json()  # type: ignore[no-any-return]


def test_store_then_query_and_retrieve_byte_identical(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    ds = make_ct(patient_name="Zeta^Alpha", patient_id="RYW-1")
    outcome = store(archive, ds, tmp_path)
    assert not outcome.duplicate
    # read-your-writes: no sleep, the query waits for the projection
    found = studies(client, PatientName="Zeta^*")
    assert ds.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in found}
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    response = client.get(url, headers={"Accept": ALL_SYNTAXES})
    assert response.status_code == 200
    [(headers, body)] = split_multipart(response.content, response.headers["content-type"])
    assert dataset_bytes(body) == dataset_bytes(part10_bytes(ds))


def test_duplicate_is_a_success_with_one_blob_two_events_one_row(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    ds = make_ct(patient_id="DUP-1")
    first = store(archive, ds, tmp_path)
    second = store(archive, ds, tmp_path, Source("STOW", peer="127.0.0.2"))
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.event.blob == second.event.blob
    received = [e for e in events(archive) if e.payload.sop_instance_uid == ds.SOPInstanceUID]
    assert [e.payload.source.protocol for e in received] == ["DIMSE", "STOW"]
    response = client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/instances")
    assert response.status_code == 200
    assert len(response.json()) == 1
    assert len(list(archive.blobs.keys(f"instances/{first.event.blob.sha256[:2]}"))) >= 1


def test_same_uid_other_dataset_supersedes_but_log_and_blob_keep_both(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    older = make_ct(patient_id="SUP-1", StudyDescription="first version")
    newer = make_ct(
        study_uid=older.StudyInstanceUID,
        series_uid=older.SeriesInstanceUID,
        sop_uid=older.SOPInstanceUID,
        patient_id="SUP-1",
        StudyDescription="second version",
    )
    a = store(archive, older, tmp_path)
    b = store(archive, newer, tmp_path)
    assert a.event.blob.key != b.event.blob.key
    assert archive.blobs.exists(a.event.blob.key) and archive.blobs.exists(b.event.blob.key)
    [study] = studies(
        client, StudyInstanceUID=older.StudyInstanceUID, includefield="StudyDescription"
    )
    assert study["00081030"]["Value"] == ["second version"]
    assert study["00201208"]["Value"] == [1]  # NumberOfStudyRelatedInstances


def test_bad_input_leaves_nothing_behind(archive: Archive, tmp_path: Path) -> None:
    before = (archive.log.end(), sorted(archive.blobs.keys("")))
    cases: dict[str, bytes] = {
        "not dicom": b"hello, this is not DICOM at all" * 10,
        "truncated": part10_bytes(make_ct())[:2000],
    }
    for keyword, value in [
        ("SOPInstanceUID", None),
        ("StudyInstanceUID", None),
        ("SeriesInstanceUID", "../x"),
        ("SOPInstanceUID", "1." + "2" * 70),
    ]:
        ds = make_ct()
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
        cases[f"{keyword}={value}"] = part10_bytes(ds)
    for name, data in cases.items():
        with pytest.raises(Invalid):
            archive.ingest.store_bytes(data, source=DIMSE)
            pytest.fail(f"{name} was accepted")
    assert (archive.log.end(), sorted(archive.blobs.keys(""))) == before


def test_below_the_free_disk_floor_nothing_is_kept(archive: Archive, tmp_path: Path) -> None:
    from ingest.service import IngestService

    full = IngestService(archive.log, archive.blobs, min_free_bytes=10, free_bytes=lambda: 5)
    end = archive.log.end()
    with pytest.raises(Unavailable):
        full.store_bytes(part10_bytes(make_ct()), source=DIMSE)
    assert archive.log.end() == end


def test_blob_before_event_a_failed_append_leaves_an_orphan_not_an_event(
    archive: Archive, tmp_path: Path
) -> None:
    from ingest.service import IngestService

    class DownLog:
        def append(self, records: object) -> list[tuple[int, int]]:
            raise Unavailable("log down")

    service = IngestService(DownLog(), archive.blobs)  # type: ignore[arg-type]
    ds = make_ct()
    with pytest.raises(Unavailable):
        service.store_bytes(part10_bytes(ds), source=DIMSE)
    assert ds.SOPInstanceUID not in {e.payload.sop_instance_uid for e in events(archive)}
    report = check_archive(archive.log, archive.blobs, verify_hashes=True)
    assert report.ok and report.orphans
    sha = hashlib.sha256(dataset_bytes(part10_bytes(ds))).hexdigest()
    assert any(sha in key for key in report.orphans)


def test_a_failed_blob_write_appends_no_event(archive: Archive) -> None:
    from ingest.service import IngestService

    class DownBlobs:
        def put_if_absent(self, key: str, source: object) -> bool:
            raise Unavailable("disk gone")

    service = IngestService(archive.log, DownBlobs())  # type: ignore[arg-type]
    end = archive.log.end()
    with pytest.raises(Unavailable):
        service.store_bytes(part10_bytes(make_ct()), source=DIMSE)
    assert archive.log.end() == end


def test_huge_metadata_goes_to_a_sidecar(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    ds = make_ct(patient_id="SIDECAR-1", rows=8, cols=8)
    ds.ImageComments = "x" * 10_000
    # Enhanced-multi-frame-like bulk of text metadata: 80 items x 10 kB.
    items = []
    for i in range(80):
        item = Dataset()
        item.TextValue = f"{i:04d}" + "y" * 9_996
        items.append(item)
    ds.ContentSequence = items
    outcome = store(archive, ds, tmp_path)
    assert outcome.event.sidecar is not None and outcome.event.metadata == {}
    assert len(codec.encode(events(archive)[-1])) < 100_000
    response = client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/metadata")
    assert response.status_code == 200
    [meta] = response.json()
    assert meta["00204000"]["Value"] == ["x" * 10_000]


def test_a_huge_frame_table_goes_to_a_sidecar(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    """30,000 one-pixel frames: a frame table of ~500 KB would, with the metadata,
    pass Kafka's 1 MB record; it goes to a sidecar blob and frames still resolve."""
    frames = 30_000
    ds = make_ct(patient_id="FRAMES-1", rows=1, cols=1)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(i % 251 for i in range(frames))
    outcome = store(archive, ds, tmp_path)
    event = outcome.event
    assert event.frames is None and event.frames_sidecar is not None
    assert len(codec.encode(events(archive)[-1])) < 100_000
    assert archive.projector.wait(archive.log.end(), 10)
    [(table,)] = archive.index.query(
        "SELECT frames FROM instance FINAL WHERE sop_instance_uid = {uid:String}",
        {"uid": ds.SOPInstanceUID},
    )
    assert len(orjson.loads(table)) == frames  # the projector read the sidecar
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1,{frames}"
    )
    response = client.get(
        url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert response.status_code == 200, response.text
    bodies = [
        body for _, body in split_multipart(response.content, response.headers["content-type"])
    ]
    assert bodies == [bytes([0]), bytes([(frames - 1) % 251])]
    report = check_archive(archive.log, archive.blobs, verify_hashes=True)
    assert report.ok and event.frames_sidecar.key not in report.orphans


def _answers(client: TestClient, study_uids: list[str]) -> list[Any]:
    out: list[Any] = [studies(client, limit="1000")]
    for uid in sorted(study_uids):
        out.append(client.get(f"/dicomweb/studies/{uid}/series").json())
        out.append(client.get(f"/dicomweb/studies/{uid}/instances").json())
    return out


def test_replay_gives_identical_answers(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    uids = []
    for i in range(3):
        ds = make_ct(patient_name=f"Replay^{i}", patient_id=f"REPLAY-{i}", rows=16, cols=16)
        store(archive, ds, tmp_path)
        uids.append(ds.StudyInstanceUID)
    before = _answers(client, uids)
    archive.projector.stop()
    try:
        applied = replay(archive.log, archive.index, archive.blobs)
        assert applied == sum(archive.log.end().values())
    finally:
        archive.projector.reload()  # follow the swapped-in tables
        archive.projector.start()
    assert orjson.dumps(_answers(client, uids)) == orjson.dumps(before)


def test_projection_is_idempotent_when_a_batch_is_applied_twice(archive: Archive) -> None:
    from projections.runner import Projector

    before = archive.index.query("SELECT count() FROM instance FINAL")
    again = Projector(archive.log, archive.index, blobs=archive.blobs, name="levels-again")
    again.run_until(archive.log.end())
    assert archive.index.query("SELECT count() FROM instance FINAL") == before


def test_lagging_projection_answers_with_a_warning(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    # A first study search: the study memory holds rows and knows their position.
    client.get("/dicomweb/studies", params={"PatientID": "LAG-0"})
    archive.projector.stop()
    wait = archive.settings.read_wait_seconds
    archive.settings.read_wait_seconds = 0.2
    try:
        store(archive, make_ct(patient_id="LAG-1", rows=8, cols=8), tmp_path)
        response = client.get("/dicomweb/series", params={"PatientID": "LAG-1"})
        assert response.headers.get("warning") == '299 chronicle "projection lagging"'
        assert client.get("/healthz").json()["projection_lag"] >= 1
        # A study search answered from the study memory makes the pending
        # study's row itself (api.pending_patch): current, so no warning.
        response = client.get("/dicomweb/studies", params={"PatientID": "LAG-1"})
        assert response.status_code == 200 and "warning" not in response.headers
        assert response.json()[0]["00100020"]["Value"] == ["LAG-1"]
    finally:
        archive.settings.read_wait_seconds = wait
        archive.projector.start()
    response = client.get("/dicomweb/studies", params={"PatientID": "LAG-1"})
    assert response.status_code == 200 and "warning" not in response.headers


def test_replay_swaps_in_tables_of_one_part_each(archive: Archive, tmp_path: Path) -> None:
    """A replay writes a part per batch; searches over many parts with FINAL ran
    2-2.5x slower while the serving process merged them, so replay merges first."""
    for i in range(3):
        store(archive, make_ct(patient_id=f"PARTS-{i}", rows=8, cols=8), tmp_path)
    archive.projector.stop()
    try:
        replay(archive.log, archive.index, archive.blobs, batch=1)  # one part per event
    finally:
        archive.projector.reload()
        archive.projector.start()
    parts = archive.index.query(
        "SELECT table, count() FROM system.parts WHERE active AND database = currentDatabase()"
        " AND table IN ('patient', 'study', 'series', 'instance') GROUP BY table ORDER BY table"
    )
    assert parts == [("instance", 1), ("patient", 1), ("series", 1), ("study", 1)]


def test_a_kept_search_answer_is_fresh_per_caller_and_dropped_on_write(
    archive: Archive, tmp_path: Path
) -> None:
    from api.matching import Level, parse_qido, search_page

    def patient_ids(found: Any) -> list[str]:
        return sorted(obj["00100020"]["Value"][0] for obj in found.results)

    store(archive, make_ct(patient_id="MEMO-1", rows=8, cols=8), tmp_path)
    assert archive.projector.wait(archive.log.end(), 10)
    query = parse_qido(Level.STUDY, [("PatientID", "MEMO-*")])
    first = search_page(archive.index, query)
    first.results[0]["00100020"] = {"vr": "LO", "Value": ["annotated"]}  # a caller's rewrite
    assert patient_ids(search_page(archive.index, query)) == ["MEMO-1"]
    store(archive, make_ct(patient_id="MEMO-2", rows=8, cols=8), tmp_path)
    assert archive.projector.wait(archive.log.end(), 10)
    assert patient_ids(search_page(archive.index, query)) == ["MEMO-1", "MEMO-2"]
