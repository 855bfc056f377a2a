"""Two projectors in one consumer group share one projection store (Tansu + chDB).

chDB allows one process per store, so two Projector threads, each with its own
Kafka handle and group membership, stand in for two projector processes sharing
a ClickHouse server. Together they apply every event exactly once (rows counted
without FINAL), each reads only the partitions the group gives it, a reader
waiting on either one sees every partition's rows, and when one stops the other
takes its partitions over from their checkpoint rows: nothing missing, nothing
twice, the statistics right, the same tables a lone projector builds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import pytest

from api.wiring import _projector_group
from infra.factory import open_event_log, open_projection_store
from infra.kafka_group import OwnedPartitionsLog, PartitionOwnership
from infra.kafka_log import KafkaEventLog
from infra.migrations import migrate
from infra.ports import LogRecord, Position, ProjectionStore
from infra.settings import Settings
from projections.commitment import REACTOR
from projections.runner import Projector
from schemas import codec
from schemas.events import BlobRef, Envelope, InstanceStored, Source
from tests.tansu import session_broker

STUDIES = 24
SHA = "ef" * 32
#: Short sessions: Tansu rebalances on heartbeats (tests/contracts/test_kafka_group.py).
GROUP_OPTIONS = {"partitions": 4, "group_session_timeout_ms": 3000}


class Recorded:
    """A projector's Kafka handle, noting the partitions of the records it was given."""

    def __init__(self, log: KafkaEventLog) -> None:
        self.log = log
        self.seen: set[int] = set()

    def append(self, records: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        return self.log.append(records)

    def read(self, start: Position, max_records: int = 1000) -> list[LogRecord]:
        raise AssertionError("a projector in a group reads its own partitions only")

    def read_partitions(
        self, start: Position, partitions: Collection[int], max_records: int = 1000
    ) -> list[LogRecord]:
        records = self.log.read_partitions(start, partitions, max_records)
        self.seen.update(r.partition for r in records)
        return records

    def end(self) -> dict[int, int]:
        return self.log.end()

    def close(self) -> None:
        self.log.close()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ProjectionStore]:
    store = open_projection_store(f"chdb://{tmp_path / 'index'}")
    yield store
    store.close()


@pytest.fixture
def kafka_url(request: pytest.FixtureRequest) -> str:
    return session_broker(request).topic_url(**GROUP_OPTIONS)


def instance_event(study: int, sop: int) -> tuple[str, bytes]:
    study_uid = f"1.2.826.0.1.3680043.8.498.{study}"
    stored = InstanceStored(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"{study_uid}.1.{sop}",
        series_instance_uid=f"{study_uid}.1",
        study_instance_uid=study_uid,
        patient_id=f"P{study}",
        issuer_of_patient_id="",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob=BlobRef(f"instances/ef/ef/{SHA}.dcm", SHA, 1000, 300),
        source=Source("DIMSE", calling_ae="MOD", called_ae="CHRONICLE", peer="127.0.0.1:4000"),
        metadata={"00080060": {"vr": "CS", "Value": ["CT"]}},
        frames=None,
    )
    return study_uid, codec.encode(Envelope.of(stored, key=study_uid))


def kafka(url: str) -> KafkaEventLog:
    log = open_event_log(url)
    assert isinstance(log, KafkaEventLog)
    return log


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def count(index: ProjectionStore, sql: str) -> int:
    return int(index.query(sql)[0][0])


def tables(index: ProjectionStore, suffix: str = "") -> list[tuple[object, ...]]:
    """What queries see: instances and study statistics (versions aside)."""
    return index.query(
        f"SELECT sop_instance_uid, study_instance_uid FROM instance{suffix} FINAL ORDER BY 1"
    ) + index.query(
        f"SELECT study_instance_uid, n_instances, n_series FROM study_stats{suffix} FINAL"
        " ORDER BY 1"
    )


def test_two_projectors_split_the_partitions_and_hand_them_over(
    kafka_url: str, index: ProjectionStore
) -> None:
    group = f"chronicle-projector-{uuid.uuid4().hex[:8]}"
    ingest = kafka(kafka_url)
    first, second = Recorded(kafka(kafka_url)), Recorded(kafka(kafka_url))
    a_group, b_group = first.log.join_group(group), second.log.join_group(group)
    a = Projector(first, index, partitions=a_group, gather_seconds=0.05)
    b = Projector(second, index, partitions=b_group, gather_seconds=0.05)
    try:
        a.start()
        b.start()
        everything = frozenset(first.log.partitions)
        until(
            lambda: (
                bool(a_group.owned())
                and bool(b_group.owned())
                and a_group.owned() | b_group.owned() == everything
            ),
            30,
            "both members own partitions, together all of them",
        )
        assert a_group.owned().isdisjoint(b_group.owned())

        ingest.append([instance_event(study, 0) for study in range(STUDIES)])
        ingest.append([instance_event(study, 1) for study in range(STUDIES)])
        target = ingest.end()
        assert a.wait(target, 20) and b.wait(target, 20), "each covers the other's partitions"
        assert count(index, "SELECT count() FROM instance") == 2 * STUDIES, "each event once"
        assert first.seen == a_group.owned() and second.seen == b_group.owned()

        # B's process stops and leaves the group: A takes B's partitions over.
        b.stop()
        second.close()
        until(lambda: a_group.owned() == everything, 20, "B's partitions move to A")
        ingest.append([instance_event(study, 2) for study in range(STUDIES)])
        assert a.wait(ingest.end(), 20)
        assert count(index, "SELECT count() FROM instance") == 3 * STUDIES, "none twice"
        assert count(index, "SELECT countIf(n_instances = 3) FROM study_stats FINAL") == STUDIES

        migrate(index, suffix="_solo")
        lone = Projector(ingest, index, suffix="_solo")
        lone.run_until(ingest.end())
        assert tables(index) == tables(index, "_solo")
    finally:
        a.stop()
        b.stop()
        first.close()
        second.close()
        ingest.close()


def test_a_projector_on_a_clickhouse_server_joins_its_databases_group(
    kafka_url: str, index: ProjectionStore, tmp_path: Path
) -> None:
    """The wiring: a group per database on http://, none on chDB or for one-off commands;
    the commitment reactor reads its share, each arrived partition from its checkpoint row."""
    log = kafka(kafka_url)
    try:
        log.append([instance_event(study, 0) for study in range(STUDIES)])
        server = Settings(data_dir=tmp_path, log_url=kafka_url, index_url="http://ch:8123/pacs")
        embedded = Settings(data_dir=tmp_path, log_url=kafka_url)
        assert _projector_group(embedded, log, index, True) == (None, log)
        assert _projector_group(server, log, index, False) == (None, log)
        group, reactor_log = _projector_group(server, log, index, True)
        assert isinstance(group, PartitionOwnership) and isinstance(reactor_log, OwnedPartitionsLog)
        assert group.group_id == "chronicle-projector-pacs"
        until(lambda: group.owned() == frozenset(log.partitions), 15, "the only member owns all")
        index.insert(
            "checkpoint", [[REACTOR, 1, 2, 2]], ["projector", "partition", "next_offset", "version"]
        )
        read = reactor_log.read({}, 1000)
        assert min(r.offset for r in read if r.partition == 1) == 2, "from the reactor's row"
        assert len(read) == STUDIES - 2
        named_url = f"{kafka_url}&projector_group=site-a"
        named_log = kafka(named_url)
        try:
            named_settings = Settings(
                data_dir=tmp_path, log_url=named_url, index_url=server.index_url
            )
            named, _ = _projector_group(named_settings, named_log, index, True)
            assert isinstance(named, PartitionOwnership) and named.group_id == "site-a"
        finally:
            named_log.close()
    finally:
        log.close()
