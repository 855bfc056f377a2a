"""What a projector in a Kafka consumer group needs of its group (infra.kafka_group)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from typing import Protocol

from infra.ports import LogRecord, Position


class Assignment(Protocol):
    """The partitions a projector owns under one generation of its group."""

    @property
    def generation(self) -> int: ...

    @property
    def partitions(self) -> frozenset[int]: ...


class PartitionSource(Protocol):
    """Which partitions to project (`infra.kafka_group.PartitionOwnership`).

    held() keeps the assignment from being handed to another projector until
    the batch projected under it has written its rows and checkpoint."""

    def held(self) -> AbstractContextManager[Assignment]: ...


#: `KafkaEventLog.read_partitions`: read() over some partitions only.
PartitionReader = Callable[[Position, Collection[int], int], list[LogRecord]]
