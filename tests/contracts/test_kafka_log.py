"""The Kafka event log beyond the shared contract, against a real broker (Tansu).

What only a partitioned log has: key -> partition placement, Positions over
several partitions, the true end of a partition whatever the broker's
ListOffsets figure says, the topic it creates, and the message size limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import orjson
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from infra.errors import Invalid, Unavailable
from infra.factory import open_event_log
from infra.kafka_log import KafkaEventLog
from infra.ports import LogRecord, covers
from ingest.service import MAX_INLINE_FRAMES, MAX_INLINE_METADATA
from schemas import codec
from schemas.events import BlobRef, Envelope, InstanceStored, Source
from tests.support import free_port
from tests.tansu import TansuBroker, session_broker

STUDIES = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(1, 41)]

Opener = Callable[..., KafkaEventLog]


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> TansuBroker:
    return session_broker(request)


@pytest.fixture
def open_kafka(broker: TansuBroker) -> Iterator[Opener]:
    """Opens logs (a fresh topic unless `url` is given); closes them all at teardown."""
    opened: list[KafkaEventLog] = []

    def opener(url: str | None = None, **options: object) -> KafkaEventLog:
        log = open_event_log(url or broker.topic_url(**options))
        assert isinstance(log, KafkaEventLog)
        opened.append(log)
        return log

    yield opener
    for log in opened:
        log.close()


def murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 (the Java client's default partitioner), unsigned."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def java_partition(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def read_everything(log: KafkaEventLog, batch: int = 1000) -> list[LogRecord]:
    position: dict[int, int] = {}
    records: list[LogRecord] = []
    while chunk := log.read(position, batch):
        records.extend(chunk)
        position.update({r.partition: r.offset + 1 for r in chunk})
    return records


def test_murmur2_matches_kafkas_published_values() -> None:
    # Values from Kafka's UtilsTest (signed Java ints).
    for text, signed in [("21", -973932308), ("foobar", -790332482), ("abc", 479470107)]:
        assert murmur2(text.encode()) == signed & 0xFFFFFFFF


def test_a_study_always_lands_on_the_java_clients_partition(
    open_kafka: Opener, broker: TansuBroker
) -> None:
    url = broker.topic_url(partitions=5)
    first, second = open_kafka(url), open_kafka(url)
    placed = [p for p, _ in first.append([(study, b"one") for study in STUDIES])]
    assert placed == [java_partition(study, 5) for study in STUDIES]
    assert len(set(placed)) == 5, "40 studies spread over every partition"
    for study, partition in zip(STUDIES[:5], placed, strict=False):
        assert second.append([(study, b"two")])[0][0] == partition


def test_one_append_keeps_each_studys_records_in_order(open_kafka: Opener) -> None:
    log = open_kafka()
    batch = [(STUDIES[i % 4], b"%d" % i) for i in range(40)]
    positions = log.append(batch)
    for study in STUDIES[:4]:
        mine = [p for (key, _), p in zip(batch, positions, strict=True) if key == study]
        assert len({partition for partition, _ in mine}) == 1
        assert [offset for _, offset in mine] == sorted(offset for _, offset in mine)
    stored = {(r.partition, r.offset): (r.key, r.value) for r in read_everything(log)}
    assert [stored[p] for p in positions] == batch


def test_end_is_exact_after_a_many_record_batch(open_kafka: Opener) -> None:
    """Tansu's ListOffsets counts a batch as one record; end() must not."""
    log = open_kafka(partitions=1)
    positions = log.append([(STUDIES[0], b"%d" % i) for i in range(50)])
    assert [offset for _, offset in positions] == list(range(50))
    assert log.end() == {0: 50}
    positions = log.append([(STUDIES[0], b"more %d" % i) for i in range(7)])
    assert log.end() == {0: 57} == {0: positions[-1][1] + 1}
    assert len(read_everything(log)) == 57


def test_positions_span_partitions(open_kafka: Opener) -> None:
    log = open_kafka(partitions=3)
    log.append([(study, b"before") for study in STUDIES])
    middle = log.end()
    assert set(middle) == {0, 1, 2} and all(o > 0 for o in middle.values())
    after = log.append([(study, b"after") for study in STUDIES])
    later = log.read(middle, 1000)
    assert sorted((r.partition, r.offset) for r in later) == sorted(after)
    assert {r.value for r in later} == {b"after"}
    # Mixed: partition 0 from its start, the others from `middle`.
    mixed = log.read({**middle, 0: 0}, 1000)
    assert sum(r.partition == 0 for r in mixed) == log.end()[0]
    assert all(r.value == b"after" for r in mixed if r.partition != 0)


def test_reading_in_small_batches_misses_and_repeats_nothing(open_kafka: Opener) -> None:
    log = open_kafka(partitions=3)
    appended = set(log.append([(study, b"%d" % n) for n, study in enumerate(STUDIES * 3)]))
    seen = [(r.partition, r.offset) for r in read_everything(log, batch=7)]
    assert len(seen) == len(set(seen)) == len(appended)
    assert set(seen) == appended
    assert covers({p: o + 1 for p, o in seen}, log.end())


def test_the_topic_is_created_with_partitions_and_unlimited_retention(
    open_kafka: Opener, broker: TansuBroker
) -> None:
    log = open_kafka(partitions=4)
    assert log.partitions == [0, 1, 2, 3]
    assert set(log.end()) == {0, 1, 2, 3}
    admin = AdminClient({"bootstrap.servers": broker.address})
    resource = ConfigResource(ConfigResource.Type.TOPIC, log.topic)
    config = admin.describe_configs([resource])[resource].result(timeout=5)
    assert config["retention.ms"].value == "-1"
    assert config["retention.bytes"].value == "-1"
    assert config["unclean.leader.election.enable"].value == "false"
    assert config["min.insync.replicas"].value == "1"  # replication=1 in tests
    assert config["max.message.bytes"].value == "1048588"


def test_an_existing_topic_is_used_as_it_is(open_kafka: Opener, broker: TansuBroker) -> None:
    url = broker.topic_url(partitions=2)
    open_kafka(url).append([(STUDIES[0], b"kept")])
    again = open_kafka(url.replace("partitions=2", "partitions=6"))
    assert again.partitions == [0, 1]
    assert [r.value for r in read_everything(again)] == [b"kept"]


def test_create_topic_false_opens_an_existing_topic(
    open_kafka: Opener, broker: TansuBroker
) -> None:
    url = broker.topic_url(partitions=2)
    open_kafka(url).append([(STUDIES[0], b"kept")])
    user = open_kafka(url.replace("partitions=2", "partitions=9") + "&create_topic=false")
    assert user.partitions == [0, 1]
    assert [r.value for r in read_everything(user)] == [b"kept"]


def test_a_position_naming_an_unknown_partition_is_invalid(open_kafka: Opener) -> None:
    log = open_kafka(partitions=2)
    with pytest.raises(Invalid, match="partition"):
        log.read({0: 0, 7: 0})


def test_a_record_over_the_message_limit_is_invalid_and_nothing_is_appended(
    open_kafka: Opener,
) -> None:
    log = open_kafka(partitions=1)
    with pytest.raises(Invalid, match="exceeds the Kafka limit") as refused:
        log.append([(STUDIES[0], b"small"), (STUDIES[0], b"x" * 1_000_000)])
    assert refused.value.status == 0xA700
    assert log.end() == {0: 0}
    assert log.append([(STUDIES[0], b"x" * 900_000)]) == [(0, 0)]


def test_the_largest_inline_ingest_event_fits_kafkas_default_limit(open_kafka: Opener) -> None:
    """ingest moves metadata and frame tables above their limits to sidecars; what stays fits."""
    log = open_kafka(partitions=1)
    study = STUDIES[0]
    padding = "x" * (MAX_INLINE_METADATA - 64)
    metadata = {"00081030": {"vr": "LO", "Value": [padding]}}
    event = InstanceStored(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"{study}.1.1",
        series_instance_uid=f"{study}.1",
        study_instance_uid=study,
        patient_id="PID",
        issuer_of_patient_id="",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob=BlobRef("instances/ab/cd/" + "0" * 64 + ".dcm", "0" * 64, 10**9, 400),
        source=Source("DIMSE", "MODALITY", "CHRONICLE", "10.0.0.1:104"),
        metadata=metadata,
        # A multi-frame of over 2 GB with the largest frame table kept inline
        # (22 bytes per frame); a larger one goes to a sidecar too.
        frames=[[(2_000_000_000 + n * 200_000, 200_000)] for n in range(MAX_INLINE_FRAMES // 22)],
    )
    assert len(orjson.dumps(event.frames)) <= MAX_INLINE_FRAMES
    encoded = codec.encode(Envelope.of(event, study))
    assert len(encoded) > MAX_INLINE_METADATA + MAX_INLINE_FRAMES - 1024
    [position] = log.append([(study, encoded)])
    [record] = log.read({0: position[1]}, 1)
    assert record.value == encoded


def test_an_unreachable_broker_is_unavailable_within_the_timeout() -> None:
    url = f"kafka://127.0.0.1:{free_port()}/chronicle?replication=1&timeout_ms=500"
    with pytest.raises(Unavailable):
        open_event_log(url)
