"""Consumer-group membership for projectors: which partitions this process projects.

Several projector processes sharing one ClickHouse server split a topic's
partitions through a Kafka consumer group. A `PartitionOwnership` is a member
that only *holds* an assignment: its consumer subscribes with the group's id,
so the coordinator spreads the partitions over the members and moves them when
one joins, leaves or dies (no heartbeat within group_session_timeout_ms). It
never fetches a record (each assigned partition is paused at once) and never
commits an offset: where a partition's projection stands is the projector's
checkpoint row, written with the rows it produced (projections/runner.py).
Offsets committed to Kafka apart from those rows could not make each event's
effect land exactly once.

A revocation waits for the work done under the old assignment. It removes the
partitions from `owned()`, bumps `generation`, then waits until every batch that
began under an older generation (`held()`) has finished, rows and checkpoint
written, before the member hands the partitions back. So the next owner starts
from a checkpoint the previous one no longer moves. A previous owner cut off from
Kafka but not from ClickHouse may still finish a batch late; the idempotent rows
absorb it (same rows, same versions; a lower checkpoint row loses to a higher).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from infra.errors import Invalid
from infra.kafka_options import RDKAFKA_LOG, KafkaOptions
from infra.ports import LogRecord, Position

if TYPE_CHECKING:
    from infra.kafka_log import KafkaEventLog

log = logging.getLogger("chronicle.kafka.group")

#: How often the member's thread serves rebalance callbacks.
_POLL_S = 0.1
#: Bound on waiting for a batch to finish before handing its partitions back;
#: well under max.poll.interval.ms (300 s), after which the group drops a member.
REVOKE_TIMEOUT_S = 30.0
_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Assignment:
    """The partitions owned under one generation of the membership."""

    generation: int
    partitions: frozenset[int]


class PartitionOwnership:
    """One member of a projector group; `owned()` follows the group's assignment."""

    def __init__(
        self, options: KafkaOptions, group_id: str, *, revoke_timeout_s: float = REVOKE_TIMEOUT_S
    ) -> None:
        self.group_id = group_id
        self._topic = options.topic
        self._cooperative = options.group_assignment == "cooperative-sticky"
        self._revoke_timeout = revoke_timeout_s
        self._cond = threading.Condition()
        self._owned: frozenset[int] = frozenset()
        self._generation = 0
        #: Batches under way, by the generation they began under.
        self._holders: Counter[int] = Counter()
        self._joined = threading.Event()
        self._stop = threading.Event()
        config = options.group_config(group_id)
        config["error_cb"] = self._on_error
        config["logger"] = RDKAFKA_LOG
        try:
            self._consumer = Consumer(config)
            self._consumer.subscribe(
                [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke
            )
        except KafkaException as exc:
            raise Invalid(f"kafka group {group_id}: {exc.args[0].str()}") from exc
        # librdkafka consumers are not thread-safe: this thread alone uses it.
        self._thread = threading.Thread(
            target=self._run, name=f"kafka-group-{group_id}", daemon=True
        )
        self._thread.start()

    # -- what a projector asks ----------------------------------------------------

    def owned(self) -> frozenset[int]:
        with self._cond:
            return self._owned

    @property
    def generation(self) -> int:
        """Bumped by every assignment and revocation: a rebalance happened."""
        with self._cond:
            return self._generation

    def assignment(self) -> Assignment:
        with self._cond:
            return Assignment(self._generation, self._owned)

    @contextmanager
    def held(self) -> Iterator[Assignment]:
        """The assignment, kept from being handed back until the block ends (one batch)."""
        with self._cond:
            assignment = Assignment(self._generation, self._owned)
            self._holders[assignment.generation] += 1
        try:
            yield assignment
        finally:
            with self._cond:
                self._holders[assignment.generation] -= 1
                if not self._holders[assignment.generation]:
                    del self._holders[assignment.generation]
                self._cond.notify_all()

    def wait_joined(self, timeout: float) -> bool:
        """Whether the group gave this member an assignment (perhaps empty) within `timeout`."""
        return self._joined.wait(timeout)

    def close(self) -> None:
        """Leave the group: the partitions move to the other members at once."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(_CLOSE_TIMEOUT_S)

    # -- the member's thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    message = self._consumer.poll(_POLL_S)  # serves the rebalance callbacks
                except Exception:  # stay in the group: librdkafka recovers, the next poll retries
                    log.exception("kafka group %s: rebalance handling failed", self.group_id)
                    self._stop.wait(1.0)
                    continue
                if message is not None and message.error() is not None:
                    log.debug("kafka group %s: %s", self.group_id, message.error())
        finally:
            self._leave()

    def _leave(self) -> None:
        try:
            self._consumer.close()  # revokes (the callback waits for batches) and leaves
        except (KafkaException, RuntimeError) as exc:
            log.warning("kafka group %s: leaving: %s", self.group_id, exc)
        with self._cond:
            if self._owned:
                self._release_locked(self._owned)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Held, never fetched: the projector reads by explicit offsets elsewhere.
        held = [TopicPartition(self._topic, tp.partition, OFFSET_END) for tp in partitions]
        if self._cooperative:
            consumer.incremental_assign(held)
        else:
            consumer.assign(held)
        if held:
            consumer.pause(held)
        with self._cond:
            self._owned = self._owned | {tp.partition for tp in partitions}
            self._generation += 1
            self._cond.notify_all()
            log.info(
                "kafka group %s: projecting partitions %s (generation %d)",
                self.group_id,
                sorted(self._owned),
                self._generation,
            )
        self._joined.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._cond:
            self._release_locked(frozenset(tp.partition for tp in partitions))
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    def _release_locked(self, revoked: frozenset[int]) -> None:
        """Drop `revoked`, then wait for the batches begun before (the lock is held)."""
        self._owned = self._owned - revoked
        self._generation += 1
        generation = self._generation
        self._cond.notify_all()
        deadline = time.monotonic() + self._revoke_timeout
        while any(g < generation for g in self._holders):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "kafka group %s: a batch outlived %.0f s; handing back %s anyway",
                    self.group_id,
                    self._revoke_timeout,
                    sorted(revoked),
                )
                return
            self._cond.wait(remaining)

    def _on_error(self, error: KafkaError) -> None:
        log.debug("kafka group %s: %s", self.group_id, error.str())


class OwnedPartitionsLog:
    """The event log as a group member's reactor sees it: reads cover owned partitions.

    For the storage commitment reactor of a projector in a group (api/wiring.py),
    so each request is decided by the process owning its partition. `floor()`
    gives the reactor's checkpoint rows, re-read after each rebalance: a partition
    that arrives is read from where its previous owner's reactor left it.
    """

    def __init__(
        self,
        event_log: KafkaEventLog,
        ownership: PartitionOwnership,
        floor: Callable[[], Mapping[int, int]],
    ) -> None:
        self._log = event_log
        self._ownership = ownership
        self._floor_of = floor
        self._floor: dict[int, int] = {}
        self._generation = -1

    def append(self, records: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        return self._log.append(records)

    def read(self, start: Position, max_records: int = 1000) -> list[LogRecord]:
        assignment = self._ownership.assignment()
        if assignment.generation != self._generation:
            self._floor = dict(self._floor_of())
            self._generation = assignment.generation
        lifted = {p: max(start.get(p, 0), self._floor.get(p, 0)) for p in assignment.partitions}
        return self._log.read_partitions(lifted, assignment.partitions, max_records)

    def end(self) -> dict[int, int]:
        return self._log.end()

    def close(self) -> None:
        """The log belongs to the archive, which closes it."""
