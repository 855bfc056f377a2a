"""The archive on the Kafka event log: ingest keys events by study, the projector and the
read-your-writes barrier follow a partitioned log, and a broker fault refuses a store
without losing what was acknowledged.

A real Tansu broker, folder blobs and chDB, in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.wiring import Archive, open_archive
from infra.errors import Unavailable
from infra.kafka_log import KafkaEventLog
from infra.settings import load_settings
from schemas import codec
from schemas.events import Source
from tests.support import make_ct, write_part10
from tests.tansu import TansuBroker

DIMSE = Source("DIMSE", calling_ae="MODALITY", called_ae="CHRONICLE", peer="127.0.0.1:5000")


@pytest.fixture(scope="module")
def broker() -> Iterator[TansuBroker]:
    with TansuBroker() as started:
        yield started


@pytest.fixture(scope="module")
def archive(broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data_dir = tmp_path_factory.mktemp("kafka-archive")
    log_url = broker.topic_url(partitions=4, delivery_timeout_ms=1500, timeout_ms=1500)
    settings = load_settings(
        {"data_dir": str(data_dir), "min_free_bytes": 0, "log_url": log_url}, environ={}
    )
    opened = open_archive(settings)
    assert isinstance(opened.log, KafkaEventLog)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def store(archive: Archive, tmp_path: Path, **attrs: Any) -> Any:
    ds = make_ct(rows=16, cols=16, **attrs)
    path = write_part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    return ds, archive.ingest.store_part10_file(path, source=DIMSE)


def test_events_are_keyed_by_study_and_queries_see_every_acknowledged_store(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    first, _ = store(archive, tmp_path, patient_id="KAFKA-1")
    stored = [
        store(archive, tmp_path, study_uid=first.StudyInstanceUID, patient_id="KAFKA-1")
        for _ in range(3)
    ]
    others = [store(archive, tmp_path, patient_id=f"KAFKA-{n}") for n in range(2, 8)]
    partition_of_first = stored[0][1].position[0]
    assert {outcome.position[0] for _, outcome in stored} == {partition_of_first}
    end = archive.log.end()
    for ds, outcome in stored + others:
        partition, offset = outcome.position
        [record] = archive.log.read({**end, partition: offset}, 1)
        assert record.key == ds.StudyInstanceUID
        assert codec.decode(record.value).payload.sop_instance_uid == ds.SOPInstanceUID
    # Read-your-writes over a partitioned log: no sleep, the query waits.
    response = client.get("/dicomweb/studies", params={"PatientID": "KAFKA-*"})
    assert response.status_code == 200
    found = {s["0020000D"]["Value"][0] for s in response.json()}
    assert found == {first.StudyInstanceUID} | {ds.StudyInstanceUID for ds, _ in others}
    assert response.headers.get("Warning") is None
    checkpoint = archive.projector.checkpoint()
    assert all(checkpoint.get(p, 0) >= o for p, o in archive.log.end().items())


def test_a_paused_broker_refuses_the_store_in_bounded_time_and_keeps_what_was_acknowledged(
    archive: Archive, broker: TansuBroker, client: TestClient, tmp_path: Path
) -> None:
    kept, _ = store(archive, tmp_path, patient_id="FAULT-1")
    with broker.paused():
        started = time.monotonic()
        with pytest.raises(Unavailable):
            store(archive, tmp_path, patient_id="FAULT-2")
        assert time.monotonic() - started < 1.5 + 1.2
    after, outcome = store(archive, tmp_path, patient_id="FAULT-3")
    assert outcome.position[1] >= 0
    response = client.get("/dicomweb/studies", params={"PatientID": "FAULT-*"})
    found = {s["0020000D"]["Value"][0] for s in response.json()}
    assert {kept.StudyInstanceUID, after.StudyInstanceUID} <= found


def test_replay_from_kafka_makes_the_same_answers_with_rows_made_in_sql(
    archive: Archive, client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay stages the records' bytes from a partitioned Kafka log (chDB cannot
    read it itself), makes the plain events' rows in SQL and the rest in Python."""
    from projections import replay_sql
    from projections.replay import replay

    firsts = [store(archive, tmp_path, patient_id=f"REPLAY-K{n}")[0] for n in range(3)]
    store(archive, tmp_path, patient_id="REPLAY-K0", study_uid=firsts[0].StudyInstanceUID)
    store(archive, tmp_path, patient_id="REPLAY-K9", patient_name="Mu\u00f1oz^Ana")  # to Python

    def answers() -> list[Any]:
        found = client.get("/dicomweb/studies", params={"PatientID": "REPLAY-K*"}).json()
        series = [
            client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series").json() for ds in firsts
        ]
        return [sorted(found, key=lambda s: s["0020000D"]["Value"][0]), series]

    before = answers()
    made_in_sql: list[int] = []
    make_rows = replay_sql.make_rows

    def counting(index: Any, suffix: str) -> set[tuple[int, int]]:
        ((staged,),) = index.query(f"SELECT count() FROM event_raw{suffix}")
        left = make_rows(index, suffix)
        made_in_sql.append(int(staged) - len(left))
        return left

    monkeypatch.setattr(replay_sql, "make_rows", counting)
    archive.projector.stop()
    try:
        applied = replay(archive.log, archive.index, archive.blobs)
        assert applied == sum(archive.log.end().values())
    finally:
        archive.projector.reload()
        archive.projector.start()
    assert 0 < sum(made_in_sql) < applied
    assert answers() == before
