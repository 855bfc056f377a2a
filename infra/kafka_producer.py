"""Durable, batched appends to one Kafka topic: the write side of the Kafka event log.

One idempotent producer (acks=all) is shared by every appending thread. An
append hands all of its records to the producer, then waits for exactly their
delivery reports; a background thread serves the reports for everybody, so
records from concurrent appenders travel in the same batches (linger.ms) and
nobody ever flushes per message.

Failure: a record not reported delivered within delivery.timeout.ms fails its
append with Unavailable. Such a record may still reach the log later (the
broker may have it but its answer was lost): a failure means "not known to be
durable", never "certainly absent" (at-least-once; events are idempotent).
After any failed delivery the producer is replaced by a fresh one: an
idempotent producer that gave up on a sequence may be fenced by the broker
(Tansu answers PRODUCER_FENCED after an epoch bump), and a new producer id is
the one recovery every broker accepts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from infra.errors import Invalid, Unavailable
from infra.kafka_options import RDKAFKA_LOG, KafkaOptions, position_of

log = logging.getLogger("chronicle.kafka")

#: Broker answers meaning "this record is too big", not "the broker is down".
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}
#: librdkafka reports a delivery at most this long after delivery.timeout.ms.
_REPORT_GRACE_S = 2.0
_POLL_S = 0.05

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class _Pending:
    """One append's records, waiting for their delivery reports."""

    __slots__ = ("positions", "remaining", "failure", "done")

    def __init__(self, count: int) -> None:
        self.positions: list[tuple[int, int]] = [(-1, -1)] * count
        self.remaining = count
        self.failure: Exception | None = None
        self.done = threading.Event()

    def delivered(self, index: int, partition: int, offset: int) -> None:
        self.positions[index] = (partition, offset)
        self._count_down()

    def failed(self, error: Exception) -> None:
        # Keep the first failure: it names the cause, later ones are echoes.
        self.failure = self.failure or error
        self._count_down()

    def _count_down(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


class BatchedProducer:
    """Group-committing appender; thread-safe; `close()` stops its delivery thread."""

    def __init__(self, options: KafkaOptions) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._generation = 0
        self._stale = False
        self._closed = threading.Event()
        self._retiring: list[Producer] = []
        self._producer = self._new_producer()
        self._reporter = threading.Thread(
            target=self._serve_reports, name="chronicle-kafka-delivery", daemon=True
        )
        self._reporter.start()

    def append(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
        """Produce every record, then wait for all their reports; (partition, offset) each."""
        pending = _Pending(len(records))
        # One append's records go to one producer, in order, so a study's
        # records keep their order inside the partition.
        with self._lock:
            if self._closed.is_set():
                raise Unavailable(f"kafka event log {topic} is closed")
            if self._stale:
                self._replace_producer()
            producer, generation = self._producer, self._generation
            for index, (key, value) in enumerate(records):
                try:
                    producer.produce(
                        topic,
                        value,
                        key,
                        on_delivery=self._reporter_for(pending, index, generation),
                    )
                except BufferError as exc:
                    raise Unavailable(f"kafka producer queue is full: {exc}") from exc
                except KafkaException as exc:
                    raise _produce_error(topic, exc.args[0]) from exc
        bound = self._options.delivery_timeout_ms / 1000 + _REPORT_GRACE_S
        if not pending.done.wait(bound):
            raise Unavailable(f"kafka topic {topic}: no delivery report within {bound:.1f} s")
        if pending.failure is not None:
            raise pending.failure
        return pending.positions

    def close(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._reporter.join()
        for producer in [self._producer, *self._retiring]:
            _shut(producer, self._options.delivery_timeout_ms / 1000)
        self._retiring.clear()

    # -- internals ------------------------------------------------------------

    def _new_producer(self) -> Producer:
        config = self._options.producer_config()
        config["error_cb"] = self._on_error
        config["logger"] = RDKAFKA_LOG
        try:
            return Producer(config)
        except KafkaException as exc:
            raise Invalid(f"kafka producer configuration: {exc.args[0].str()}") from exc

    def _replace_producer(self) -> None:
        # Called under self._lock. The old producer keeps being polled until
        # its outstanding reports are all served.
        self._retiring.append(self._producer)
        self._producer = self._new_producer()
        self._generation += 1
        self._stale = False
        log.info(
            "kafka producer replaced after a failed delivery (generation %d)", self._generation
        )

    def _reporter_for(self, pending: _Pending, index: int, generation: int) -> DeliveryCallback:
        def report(error: KafkaError | None, message: Message) -> None:
            # Runs in the delivery thread: it must never raise.
            if error is None:
                try:
                    pending.delivered(index, *position_of(message))
                except Unavailable as exc:
                    pending.failed(exc)
                return
            if generation == self._generation:
                self._stale = True
            pending.failed(_delivery_error(message.topic() or "", error))

        return report

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("kafka producer fatal error, replacing it: %s", error.str())
            self._stale = True
        else:
            log.debug("kafka producer: %s", error.str())

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(_POLL_S)
                if self._retiring:
                    self._serve_retiring()
            except Exception:  # appenders depend on this thread: keep serving
                log.exception("kafka delivery reports: unexpected error")
                self._closed.wait(_POLL_S)

    def _serve_retiring(self) -> None:
        with self._lock:
            retiring = list(self._retiring)
        drained = []
        for producer in retiring:
            producer.poll(0)
            if len(producer) == 0:
                drained.append(producer)
        if drained:
            with self._lock:
                self._retiring = [p for p in self._retiring if p not in drained]
            for producer in drained:
                producer.close()


def _shut(producer: Producer, timeout: float) -> None:
    # Serve every report still owed, so no appender waits out its bound; what
    # a dead broker never answers is purged (its appenders get Unavailable).
    if producer.flush(timeout) > 0:
        producer.purge()
        producer.flush(0)
    producer.close()


def _produce_error(topic: str, error: KafkaError) -> Exception:
    if error.code() in _TOO_LARGE:
        return Invalid(f"kafka topic {topic}: record too large: {error.str()}", status=0xA700)
    return Unavailable(f"kafka topic {topic}: cannot produce: {error.str()}")


def _delivery_error(topic: str, error: KafkaError) -> Exception:
    if error.code() in _TOO_LARGE:
        return Invalid(
            f"kafka topic {topic}: the broker refused a record as too large ({error.str()});"
            " raise the topic's max.message.bytes or lower message_max_bytes",
            status=0xA700,
        )
    return Unavailable(f"kafka topic {topic}: delivery failed: {error.str()}")
