"""Projector groups on a real broker (Tansu 0.6: JoinGroup, SyncGroup, Heartbeat, LeaveGroup).

Two members of one group split a topic's partitions, a revocation waits for the
batch held under the old assignment before the partitions move, a member that
leaves hands its partitions to the other, and the group never commits an offset.
Also read_partitions(), the read a member's projector makes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

from infra.errors import Invalid
from infra.factory import open_event_log
from infra.kafka_group import PartitionOwnership
from infra.kafka_log import KafkaEventLog
from tests.tansu import TansuBroker, session_broker

#: Tansu rebalances on heartbeats: a short session (heartbeats every 600 ms) keeps
#: each rebalance to a few seconds.
FAST_GROUP = {"partitions": 4, "group_session_timeout_ms": 3000}
STUDIES = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(1, 41)]


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> TansuBroker:
    return session_broker(request)


@pytest.fixture
def open_kafka(broker: TansuBroker) -> Iterator[Callable[[str], KafkaEventLog]]:
    opened: list[KafkaEventLog] = []

    def opener(url: str) -> KafkaEventLog:
        log = open_event_log(url)
        assert isinstance(log, KafkaEventLog)
        opened.append(log)
        return log

    yield opener
    for log in opened:
        log.close()


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def committed_offsets(broker: TansuBroker, group: str, topic: str) -> list[int]:
    # Not subscribed: asking for the group's offsets does not join it.
    probe = Consumer({"bootstrap.servers": broker.address, "group.id": group})
    try:
        asked = [TopicPartition(topic, p) for p in range(4)]
        return [tp.offset for tp in probe.committed(asked, timeout=10)]
    finally:
        probe.close()


def test_members_split_the_partitions_and_hand_them_over(
    broker: TansuBroker, open_kafka: Callable[[str], KafkaEventLog]
) -> None:
    url = broker.topic_url(**FAST_GROUP)
    group = f"projectors-{uuid.uuid4().hex[:8]}"
    log_a, log_b = open_kafka(url), open_kafka(url)
    log_a.append([(study, b"before") for study in STUDIES])
    everything = frozenset(log_a.partitions)
    a = log_a.join_group(group)
    until(lambda: a.owned() == everything, 15, "the only member owns every partition")

    # A batch holds A's assignment while B joins: A's partitions are revoked
    # at once, but the group gets them back only when the batch is over.
    with a.held() as batch:
        b = log_b.join_group(group)
        until(lambda: a.generation > batch.generation, 15, "B's join revokes A's partitions")
        assert a.owned() == frozenset()
        # Without the wait B would own partitions ~2 s after the revocation.
        time.sleep(3.0)
        assert b.owned() == frozenset(), "no partition moves while A's batch holds it"
    until(lambda: bool(a.owned()) and bool(b.owned()), 15, "both members own partitions")
    assert a.owned().isdisjoint(b.owned())
    assert a.owned() | b.owned() == everything

    log_b.close()  # leaves the group
    until(lambda: a.owned() == everything, 15, "B's partitions come back to A")
    assert committed_offsets(broker, group, log_a.topic) == [OFFSET_INVALID] * 4
    a.close()
    assert a.owned() == frozenset()


def test_cooperative_sticky_members_split_and_hand_over_too(
    broker: TansuBroker, open_kafka: Callable[[str], KafkaEventLog]
) -> None:
    url = broker.topic_url(**FAST_GROUP, group_assignment="cooperative-sticky")
    group = f"cooperative-{uuid.uuid4().hex[:8]}"
    log_a, log_b = open_kafka(url), open_kafka(url)
    everything = frozenset(log_a.partitions)
    a = PartitionOwnership(log_a.options, group)
    try:
        assert a.wait_joined(15), "the group answered"
        until(lambda: a.owned() == everything, 15, "the only member owns every partition")
        b = log_b.join_group(group)
        until(lambda: bool(b.owned()) and bool(a.owned()), 20, "both members own partitions")
        assert a.owned().isdisjoint(b.owned()) and a.owned() | b.owned() == everything
        log_b.close()
        until(lambda: a.owned() == everything, 15, "B's partitions come back to A")
    finally:
        a.close()
    generation = a.generation
    assert a.owned() == frozenset(), "a member that left owns nothing"
    a.close()  # twice is harmless
    assert a.generation == generation


def test_read_partitions_reads_only_the_partitions_named(
    broker: TansuBroker, open_kafka: Callable[[str], KafkaEventLog]
) -> None:
    log = open_kafka(broker.topic_url(partitions=4))
    placed = log.append([(study, b"one") for study in STUDIES])
    mine = {1, 3}
    records = log.read_partitions({0: 5, 2: 1}, mine, 1000)  # other entries are ignored
    assert sorted((r.partition, r.offset) for r in records) == sorted(
        position for position in placed if position[0] in mine
    )
    later = log.read_partitions({1: 2}, {1}, 1000)
    assert [r.offset for r in later] == list(range(2, log.end()[1]))
    assert log.read_partitions({}, set(), 1000) == []
    with pytest.raises(Invalid, match="partitions"):
        log.read_partitions({}, {7}, 1000)
