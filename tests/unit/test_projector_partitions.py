"""Projectors that share one projection store, each projecting its share of the partitions.

A fake group membership and an in-memory log of four partitions stand in for
Kafka (tests/integration/test_kafka_groups.py runs the real thing); the store is
chDB, each test on tables of its own (a suffix). What must hold: each projector
reads only its partitions, together they apply every event once, a partition
that changes hands continues from the checkpoint row its previous owner wrote,
statistics stay right across a handover, and a projector never claims to cover
the partitions others own.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from infra.errors import Invalid
from infra.factory import open_event_log, open_projection_store
from infra.kafka_group import Assignment
from infra.migrations import migrate
from infra.ports import LogRecord, Position, ProjectionStore
from projections.runner import Projector
from schemas import codec
from schemas.events import BlobRef, Envelope, InstanceStored, Source

PARTITIONS = 4
SHA = "cd" * 32
_suffixes = itertools.count()


class MemoryLog:
    """Four partitions; study `1.2.826.0.1.<n>` lands on partition n % 4."""

    def __init__(self) -> None:
        self.records: dict[int, list[LogRecord]] = {p: [] for p in range(PARTITIONS)}
        self.reads: list[frozenset[int]] = []

    def append(self, records: Sequence[tuple[str, bytes]]) -> list[tuple[int, int]]:
        placed = []
        for key, value in records:
            partition = int(key.rsplit(".", 1)[1]) % PARTITIONS
            offset = len(self.records[partition])
            self.records[partition].append(LogRecord(partition, offset, key, value))
            placed.append((partition, offset))
        return placed

    def read(self, start: Position, max_records: int = 1000) -> list[LogRecord]:
        return self.read_partitions(start, self.records.keys(), max_records)

    def read_partitions(
        self, start: Position, partitions: Collection[int], max_records: int = 1000
    ) -> list[LogRecord]:
        self.reads.append(frozenset(partitions))
        found: list[LogRecord] = []
        for p in sorted(partitions):
            found.extend(self.records[p][start.get(p, 0) :])
        return found[:max_records]

    def end(self) -> dict[int, int]:
        return {p: len(records) for p, records in self.records.items()}

    def close(self) -> None:
        """Nothing to release."""


class FakeMembership:
    """What a projector sees of PartitionOwnership: an assignment per generation."""

    def __init__(self, *partitions: int) -> None:
        self.current = Assignment(1, frozenset(partitions))
        self.batches: list[Assignment] = []
        self.holding = False

    def assign(self, *partitions: int) -> None:
        self.current = Assignment(self.current.generation + 1, frozenset(partitions))

    @contextmanager
    def held(self) -> Iterator[Assignment]:
        held = self.current
        self.batches.append(held)
        self.holding = True
        try:
            yield held
        finally:
            self.holding = False


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    index = open_projection_store(f"chdb://{tmp_path_factory.mktemp('partitions')}")
    yield index
    index.close()


@pytest.fixture
def suffix(store: ProjectionStore) -> str:
    """Tables of this test's own."""
    name = f"_p{next(_suffixes)}"
    migrate(store, suffix=name)
    return name


def event(study: int, sop: int, series: int = 1) -> tuple[str, bytes]:
    study_uid = f"1.2.826.0.1.{study}"
    stored = InstanceStored(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"{study_uid}.{series}.{sop}",
        series_instance_uid=f"{study_uid}.{series}",
        study_instance_uid=study_uid,
        patient_id=f"P{study}",
        issuer_of_patient_id="",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob=BlobRef(f"instances/cd/cd/{SHA}.dcm", SHA, 1000, 300),
        source=Source("DIMSE", calling_ae="MOD", called_ae="CHRONICLE", peer="127.0.0.1:4000"),
        metadata={"00080060": {"vr": "CS", "Value": ["CT"]}},
        frames=None,
    )
    return study_uid, codec.encode(Envelope.of(stored, key=study_uid))


def projector(
    log: MemoryLog, store: ProjectionStore, suffix: str, group: FakeMembership, batch: int = 1000
) -> Projector:
    return Projector(log, store, suffix=suffix, partitions=group, batch=batch, gather_seconds=0)


def drain(*projectors: Projector) -> None:
    while sum(p.run_once() for p in projectors):
        pass


def raw_rows(store: ProjectionStore, suffix: str, table: str = "instance") -> int:
    """Rows as inserted, without FINAL: an event applied twice shows here."""
    return int(store.query(f"SELECT count() FROM {table}{suffix}")[0][0])


def checkpoint_rows(store: ProjectionStore, suffix: str) -> dict[int, int]:
    rows = store.query(
        f"SELECT partition, max(next_offset) FROM checkpoint{suffix} GROUP BY partition"
    )
    return {int(p): int(o) for p, o in rows}


def study_count(store: ProjectionStore, suffix: str, study: int) -> int:
    rows = store.query(
        f"SELECT n_instances FROM study_stats{suffix} FINAL"
        " WHERE study_instance_uid = {u:String}",
        {"u": f"1.2.826.0.1.{study}"},
    )
    return int(rows[0][0])


def test_two_projectors_each_read_their_share_and_together_apply_every_event_once(
    store: ProjectionStore, suffix: str
) -> None:
    log = MemoryLog()
    log.append([event(study, sop) for study in range(8) for sop in range(5)])
    first, second = FakeMembership(0, 1), FakeMembership(2, 3)
    a, b = projector(log, store, suffix, first), projector(log, store, suffix, second)
    drain(a, b)
    assert set(log.reads) == {frozenset({0, 1}), frozenset({2, 3})}
    assert raw_rows(store, suffix) == 40, "every instance inserted exactly once"
    assert checkpoint_rows(store, suffix) == log.end()
    assert a.checkpoint() == b.checkpoint() == log.end()


def test_a_partition_that_changes_hands_continues_from_its_checkpoint_row(
    store: ProjectionStore, suffix: str
) -> None:
    log = MemoryLog()
    log.append([event(study, 0) for study in range(8)])
    group_a, group_b = FakeMembership(0, 1, 2, 3), FakeMembership()
    a, b = projector(log, store, suffix, group_a), projector(log, store, suffix, group_b)
    drain(a, b)
    # B joins: A keeps 0 and 1, B takes 2 and 3 where A left them.
    group_a.assign(0, 1)
    group_b.assign(2, 3)
    log.append([event(study, 1) for study in range(8)])
    drain(a, b)
    assert raw_rows(store, suffix) == 16
    # B leaves: A takes 2 and 3 back, from B's rows, not from where A last saw them.
    group_b.assign()
    group_a.assign(0, 1, 2, 3)
    log.append([event(study, 2) for study in range(8)])
    drain(a, b)
    assert raw_rows(store, suffix) == 24, "no event of B's applied again by A"
    assert checkpoint_rows(store, suffix) == log.end() == a.checkpoint()


def test_a_new_generation_with_the_same_partitions_rereads_the_checkpoint(
    store: ProjectionStore, suffix: str
) -> None:
    """A rebalance may give a partition away and back between two batches."""
    log = MemoryLog()
    group_a, group_b = FakeMembership(0, 1, 2, 3), FakeMembership()
    a, b = projector(log, store, suffix, group_a), projector(log, store, suffix, group_b)
    log.append([event(study, 0) for study in range(4)])
    drain(a)
    group_b.assign(0, 1, 2, 3)  # A's generation moved on unseen: a revoke, then B
    log.append([event(study, 1) for study in range(4)])
    drain(b)
    group_a.assign(0, 1, 2, 3)
    assert a.run_once() == 0, "nothing new for A: B projected it"
    assert raw_rows(store, suffix) == 8


def test_statistics_stay_right_across_a_handover(store: ProjectionStore, suffix: str) -> None:
    """The new owner's statistics rows must win over the old owner's."""
    log = MemoryLog()
    group_a, group_b = FakeMembership(0, 1, 2), FakeMembership(3)
    a, b = projector(log, store, suffix, group_a), projector(log, store, suffix, group_b)
    b.checkpoint()  # B's view of A's partitions is from now: all zero
    # A moves far along partitions 0-2 while study 3 (partition 3) is still B's and idle.
    log.append([event(study, sop) for study in range(3) for sop in range(30)])
    drain(a)
    # Study 3 is projected by A (B gone), then by B again (B back).
    group_b.assign()
    group_a.assign(0, 1, 2, 3)
    log.append([event(3, 0)])
    drain(a, b)
    assert study_count(store, suffix, 3) == 1
    group_a.assign(0, 1, 2)
    group_b.assign(3)
    log.append([event(3, 1)])
    drain(a, b)
    assert study_count(store, suffix, 3) == 2, "B's newer statistics row must win"


def test_a_projector_never_claims_the_partitions_others_own(
    store: ProjectionStore, suffix: str
) -> None:
    log = MemoryLog()
    group_a, group_b = FakeMembership(0, 1), FakeMembership(2, 3)
    a, b = projector(log, store, suffix, group_a), projector(log, store, suffix, group_b)
    log.append([event(study, 0) for study in range(8)])
    drain(a)
    end = log.end()
    assert not a.wait(end, timeout=0.2), "partitions 2 and 3 are B's, not projected yet"
    assert a.lag() == end[2] + end[3]
    drain(b)
    assert a.wait(end, timeout=2.0), "B's checkpoint rows cover them now"
    assert a.lag() == 0


def test_a_projector_with_no_partitions_projects_nothing(
    store: ProjectionStore, suffix: str
) -> None:
    log = MemoryLog()
    log.append([event(1, 0)])
    idle = projector(log, store, suffix, FakeMembership())
    assert idle.run_once() == 0
    assert log.reads == [] and raw_rows(store, suffix) == 0


class WatchedStore:
    """The store, noting whether the group's assignment was held at each insert."""

    def __init__(self, store: ProjectionStore, group: FakeMembership) -> None:
        self._store, self._group = store, group
        self.inserts: list[tuple[str, bool]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def insert(self, table: str, rows: Any, column_names: Any) -> None:
        self.inserts.append((table, self._group.holding))
        self._store.insert(table, rows, column_names)


def test_rows_and_checkpoint_are_written_while_the_assignment_is_held(
    store: ProjectionStore, suffix: str
) -> None:
    """So a revocation, which waits for held assignments, never cuts a batch in two."""
    log = MemoryLog()
    log.append([event(study, 0) for study in range(8)])
    group = FakeMembership(0, 1, 2, 3)
    watched = WatchedStore(store, group)
    drain(projector(log, watched, suffix, group, batch=3))
    assert raw_rows(store, suffix) == 8
    assert len(group.batches) == 4, "3 + 3 + 2 events, then none"
    assert [t for t, _ in watched.inserts].count(f"checkpoint{suffix}") == 3
    assert all(held for _, held in watched.inserts)


def test_a_log_that_cannot_read_some_partitions_is_refused(
    store: ProjectionStore, tmp_path: Path
) -> None:
    sqlite = open_event_log(f"sqlite://{tmp_path / 'log.db'}")
    try:
        with pytest.raises(Invalid, match="cannot read some partitions"):
            Projector(sqlite, store, partitions=FakeMembership(0))
    finally:
        sqlite.close()
