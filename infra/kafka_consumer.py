"""The read side of the Kafka event log: records from a Position, and the log end.

A consumer is assigned explicit (partition, offset) pairs for each call and
unassigned after it; nothing is subscribed and no offset is ever committed:
projectors keep their Positions beside their rows. A call reads each
partition until librdkafka reports its end (enable.partition.eof), which
comes from the Fetch response's high watermark.

The log end does not rely on the ListOffsets figure alone. Tansu 0.6 reports
a lagging high watermark there (base offset of the last record batch + 1),
while its Fetch responses carry the true one. So end() asks for the latest
offset (ListOffsets, via the logical OFFSET_END) and then fetches from it until
end-of-partition: on Kafka that is one empty fetch; on Tansu it reads the
remainder of the last batch. The position where each partition's fetch ends is
the answer, on both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from infra.errors import Invalid, Unavailable
from infra.kafka_options import RDKAFKA_LOG, KafkaOptions, position_of
from infra.ports import LogRecord

log = logging.getLogger("chronicle.kafka")

_CONSUME_S = 0.05
#: Enough per consume() call to amortise the call, small enough to honour max_records.
_CONSUME_BATCH = 10_000
_OUT_OF_RANGE = {KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE}


class LogReader:
    """Reads one topic's partitions; one call at a time (a librdkafka consumer is not reentrant)."""

    def __init__(self, options: KafkaOptions, partitions: Sequence[int], role: str) -> None:
        self._topic = options.topic
        self._partitions = list(partitions)
        self._timeout_s = options.timeout_ms / 1000
        self._lock = threading.Lock()
        self._last_error = ""
        config = options.consumer_config()
        config["client.id"] = f"{options.client_id}-{role}"
        config["error_cb"] = self._on_error
        config["logger"] = RDKAFKA_LOG
        try:
            self._consumer = Consumer(config)
        except KafkaException as exc:
            raise Invalid(f"kafka consumer configuration: {exc.args[0].str()}") from exc
        self._warm_up()

    def read(
        self,
        start: Mapping[int, int],
        max_records: int,
        partitions: Collection[int] | None = None,
    ) -> list[LogRecord]:
        """Records from `start` in every partition, or only in `partitions` (a
        projector's share of a consumer group): the position's other entries are ignored."""
        wanted = self._partitions if partitions is None else sorted(partitions)
        unknown = (set(start) | set(wanted)) - set(self._partitions)
        if unknown:
            raise Invalid(
                f"kafka topic {self._topic} has partitions {self._partitions},"
                f" the position names {sorted(unknown)}"
            )
        if not wanted:
            return []
        records: list[LogRecord] = []

        def keep(message: Message) -> None:
            key = (message.key() or b"").decode("utf-8", "replace")
            records.append(LogRecord(*position_of(message), key, message.value() or b""))

        offsets = {p: start.get(p, 0) for p in wanted}
        self._fetch_to_end(offsets, keep, max_records)
        return records

    def end(self) -> dict[int, int]:
        return self._fetch_to_end({p: OFFSET_END for p in self._partitions}, _ignore, None)

    def close(self) -> None:
        with self._lock:
            self._consumer.close()

    # -- internals ------------------------------------------------------------

    def _warm_up(self) -> None:
        # Without the topic's leaders in its metadata cache, librdkafka defers
        # the first offset lookup by 500 ms; one metadata request now avoids it.
        try:
            self._consumer.list_topics(self._topic, timeout=self._timeout_s)
        except KafkaException as exc:
            self._consumer.close()
            raise Unavailable(f"kafka topic {self._topic}: {exc.args[0].str()}") from exc

    def _fetch_to_end(
        self, offsets: Mapping[int, int], sink: Callable[[Message], None], limit: int | None
    ) -> dict[int, int]:
        """Fetch every partition from its offset to its end (or `limit` records); the ends."""
        with self._lock:
            self._last_error = ""
            try:
                self._consumer.assign(
                    [TopicPartition(self._topic, p, o) for p, o in offsets.items()]
                )
                try:
                    return self._drain(set(offsets), sink, limit)
                finally:
                    # Stop fetching: an idle assigned consumer long-polls forever.
                    self._consumer.unassign()
            except KafkaException as exc:
                raise Unavailable(f"kafka topic {self._topic}: {exc.args[0].str()}") from exc

    def _drain(
        self, pending: set[int], sink: Callable[[Message], None], limit: int | None
    ) -> dict[int, int]:
        ends: dict[int, int] = {}
        taken = 0
        deadline = time.monotonic() + self._timeout_s
        while pending and (limit is None or taken < limit):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"kafka topic {self._topic}: partitions {sorted(pending)} did not answer"
                    f" within {self._timeout_s:.1f} s {self._last_error}".rstrip()
                )
            wanted = _CONSUME_BATCH if limit is None else limit - taken
            for message in self._next_messages(wanted, min(_CONSUME_S, remaining)):
                error = message.error()
                if error is None:
                    sink(message)
                    taken += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    partition, end = position_of(message)
                    pending.discard(partition)
                    ends[partition] = end
                else:
                    self._check(error, message)
        return ends

    def _next_messages(self, wanted: int, wait: float) -> list[Message]:
        # consume() blocks until `wanted` messages or its timeout, and a
        # partition's end is one event, not a record: take what is queued at
        # once, else block only for the next event.
        ready = self._consumer.consume(wanted, 0)
        if ready:
            return ready
        message = self._consumer.poll(wait)
        return [] if message is None else [message]

    def _check(self, error: KafkaError, message: Message) -> None:
        if error.code() in _OUT_OF_RANGE:
            raise Invalid(
                f"kafka topic {self._topic} partition {message.partition()}: the position is"
                f" outside the partition ({error.str()})"
            )
        if error.fatal():
            raise Unavailable(f"kafka topic {self._topic}: {error.str()}")
        # Transient (a reconnect, a leader move): librdkafka retries by itself
        # and the deadline bounds the wait.
        self._last_error = f"(last error: {error.str()})"

    def _on_error(self, error: KafkaError) -> None:
        self._last_error = f"(last error: {error.str()})"
        log.debug("kafka consumer: %s", error.str())


def _ignore(message: Message) -> None:
    del message
