"""The scale-out EventLog: one Kafka topic (`kafka://host:9092,host2:9092/topic?...`).

Same verbs and meaning as the SQLite log (infra/sqlite_log.py):

- append() returns once every record is acknowledged by all in-sync replicas
  (idempotent producer, acks=all), or raises Unavailable within
  delivery_timeout_ms; concurrent appenders share batches (infra/kafka_producer.py).
  The record key (the ingest service passes the StudyInstanceUID) picks the
  partition, so one study's events stay in order.
- read(start) returns the records at or after a Position, in order per
  partition, from explicit offsets; nothing is committed to the broker.
  read_partitions() does the same for some partitions only.
- join_group(group_id) makes this process a member of a projector group
  (infra/kafka_group.py): which partitions it projects, never where it stands.
- end() is the Position just past the last acknowledged record of every
  partition, robust to Tansu's lagging high watermark (infra/kafka_consumer.py).

The topic is created on first open with the configured partitions and
replication, unlimited retention and min.insync.replicas; an existing topic is
used as it is. Its partition count is read once, at open: adding partitions
later would move studies to other partitions and break their order, so a
topic's partition count is fixed for its life (docs/scale-out.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import TimeoutError as FutureTimeout

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from infra.errors import Invalid, Unavailable
from infra.kafka_consumer import LogReader
from infra.kafka_group import PartitionOwnership
from infra.kafka_options import KafkaOptions, parse_kafka_url
from infra.kafka_producer import BatchedProducer
from infra.ports import LogRecord, Position

log = logging.getLogger("chronicle.kafka")

#: Headroom for the record's own framing inside message.max.bytes.
RECORD_OVERHEAD = 512
_CREATE_REFUSED = {
    KafkaError.INVALID_REPLICATION_FACTOR,
    KafkaError.INVALID_PARTITIONS,
    KafkaError.INVALID_CONFIG,
    KafkaError.POLICY_VIOLATION,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
}


class KafkaEventLog:
    """`infra.ports.EventLog` over a Kafka topic. Thread-safe; processes share the topic."""

    def __init__(self, options: KafkaOptions) -> None:
        self.options = options
        self.topic = options.topic
        # Started first: its producer id is acquired while the topic is set up.
        self._producer = BatchedProducer(options)
        self._end_lock = threading.Lock()
        self._last_end: tuple[float, dict[int, int]] | None = None
        self._groups: list[PartitionOwnership] = []
        self._closed = False
        try:
            self.partitions = ensure_topic(options)
            self._reader = LogReader(options, self.partitions, "reader")
            self._prober = LogReader(options, self.partitions, "end")
        except BaseException:
            self._producer.close()
            raise

    @classmethod
    def from_url(cls, url: str) -> KafkaEventLog:
        return cls(parse_kafka_url(url))

    def append(self, records: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        checked = [self._checked(key, value) for key, value in records]
        if not checked:
            return []
        if self._closed:
            raise Unavailable(f"kafka event log {self.topic} is closed")
        return self._producer.append(self.topic, checked)

    def read(self, start: Position, max_records: int = 1000) -> list[LogRecord]:
        if max_records < 1:
            raise Invalid(f"max_records must be positive, not {max_records}")
        if self._closed:
            raise Unavailable(f"kafka event log {self.topic} is closed")
        return self._reader.read(start, max_records)

    def read_partitions(
        self, start: Position, partitions: Collection[int], max_records: int = 1000
    ) -> list[LogRecord]:
        """Like read(), over `partitions` only (the rest of `start` is ignored)."""
        if max_records < 1:
            raise Invalid(f"max_records must be positive, not {max_records}")
        if self._closed:
            raise Unavailable(f"kafka event log {self.topic} is closed")
        return self._reader.read(start, max_records, partitions)

    def join_group(self, group_id: str) -> PartitionOwnership:
        """Join `group_id` for this topic; the membership ends at close() (or the log's)."""
        if self._closed:
            raise Unavailable(f"kafka event log {self.topic} is closed")
        ownership = PartitionOwnership(self.options, group_id)
        self._groups.append(ownership)
        return ownership

    def end(self) -> dict[int, int]:
        if self._closed:
            raise Unavailable(f"kafka event log {self.topic} is closed")
        arrived = time.monotonic()
        with self._end_lock:
            # A probe that began after this call arrived already covers every
            # append acknowledged before it: share it instead of probing again.
            if self._last_end is not None and self._last_end[0] >= arrived:
                return dict(self._last_end[1])
            started = time.monotonic()
            ends = self._prober.end()
            self._last_end = (started, ends)
            return dict(ends)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ownership in self._groups:
            ownership.close()
        self._producer.close()
        self._reader.close()
        self._prober.close()

    def _checked(self, key: str, value: bytes) -> tuple[bytes, bytes]:
        # Checked before anything is produced: one bad record fails its own
        # append, whole, and nobody else's.
        if not isinstance(key, str):
            raise Invalid(f"log record key must be str, not {type(key).__name__}")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise Invalid(f"log record value must be bytes, not {type(value).__name__}")
        encoded_key, payload = key.encode(), bytes(value)
        limit = self.options.message_max_bytes - RECORD_OVERHEAD
        if len(encoded_key) + len(payload) > limit:
            raise Invalid(
                f"log record of {len(encoded_key) + len(payload)} bytes exceeds the Kafka"
                f" limit of {limit} bytes (message_max_bytes={self.options.message_max_bytes}"
                f" less {RECORD_OVERHEAD} for framing); large metadata belongs in a sidecar blob",
                status=0xA700,
            )
        return encoded_key, payload


def ensure_topic(options: KafkaOptions) -> list[int]:
    """Create the topic unless it exists; return its partition ids."""
    admin = AdminClient(options.admin_config())
    if options.create_topic:
        _create_topic(admin, options)
    return _partitions(admin, options)


def _create_topic(admin: AdminClient, options: KafkaOptions) -> None:
    timeout = options.timeout_ms / 1000
    topic = NewTopic(
        options.topic,
        num_partitions=options.partitions,
        replication_factor=options.replication,
        config=options.topic_config,
    )
    futures = admin.create_topics([topic], request_timeout=timeout, operation_timeout=timeout)
    try:
        futures[options.topic].result(timeout=timeout)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        if error.code() in _CREATE_REFUSED:
            raise Invalid(
                f"kafka topic {options.topic}: creation refused: {error.str()}"
                f" (partitions={options.partitions}, replication={options.replication};"
                " a single-broker development cluster needs ?replication=1)"
            ) from exc
        raise Unavailable(f"kafka topic {options.topic}: cannot create: {error.str()}") from exc
    except FutureTimeout as exc:
        raise Unavailable(f"kafka {options.bootstrap}: no answer within {timeout:.1f} s") from exc
    log.info(
        "created kafka topic %s: %d partitions, replication %d, %s",
        options.topic,
        options.partitions,
        options.replication,
        options.topic_config,
    )


def _partitions(admin: AdminClient, options: KafkaOptions) -> list[int]:
    # A just-created topic may take a moment to appear in every broker's metadata.
    deadline = time.monotonic() + options.timeout_ms / 1000
    problem = "no metadata"
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            metadata = admin.list_topics(options.topic, timeout=remaining)
        except KafkaException as exc:
            problem = exc.args[0].str()
            break
        found = metadata.topics.get(options.topic)
        if found is not None and found.error is None and found.partitions:
            partitions = sorted(found.partitions)
            if len(partitions) != options.partitions:
                log.warning(
                    "kafka topic %s has %d partitions, not the configured %d: using the topic's",
                    options.topic,
                    len(partitions),
                    options.partitions,
                )
            return partitions
        if found is not None and found.error is not None:
            problem = found.error.str()
            if not options.create_topic and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise Invalid(
                    f"kafka topic {options.topic} does not exist and create_topic=false"
                    f" at {options.bootstrap}"
                )
        time.sleep(0.05)
    raise Unavailable(f"kafka topic {options.topic} at {options.bootstrap}: {problem}")
