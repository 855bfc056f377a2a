"""The EventLog contract: every adapter (see conftest.EVENT_LOG_ADAPTERS) must pass it."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.errors import Invalid
from infra.ports import EventLog, LogRecord, Position, covers

STUDY_A = "1.2.826.0.1.3680043.8.498.1"
STUDY_B = "1.2.826.0.1.3680043.8.498.2"


def read_all(log: EventLog, start: Position | None = None) -> list[LogRecord]:
    """Everything from `start` up to the log's current end, in batches."""
    position = dict(start or {})
    target = log.end()
    records: list[LogRecord] = []
    while not covers(position, target):
        batch = log.read(position, 100)
        assert batch, f"read() returned nothing before reaching {target}"
        for record in batch:
            position[record.partition] = record.offset + 1
        records.extend(batch)
    return records


def by_position(records: list[LogRecord]) -> dict[tuple[int, int], LogRecord]:
    return {(r.partition, r.offset): r for r in records}


class TestEventLogContract:
    def test_a_new_log_is_empty(self, event_log: EventLog) -> None:
        assert all(offset == 0 for offset in event_log.end().values())
        assert event_log.read({}) == []

    def test_append_returns_positions_that_read_sees(self, event_log: EventLog) -> None:
        records = [(STUDY_A, b"first"), (STUDY_B, b"second"), (STUDY_A, b"\x00\xff third")]
        positions = event_log.append(records)
        assert len(positions) == len(records)
        assert len(set(positions)) == len(positions)
        stored = by_position(read_all(event_log))
        for (key, value), position in zip(records, positions, strict=True):
            record = stored[position]
            assert (record.key, record.value) == (key, value)
            assert record.version == record.offset

    def test_empty_append_is_a_no_op(self, event_log: EventLog) -> None:
        assert event_log.append([]) == []
        assert all(offset == 0 for offset in event_log.end().values())

    def test_end_covers_every_acknowledged_append(self, event_log: EventLog) -> None:
        for i in range(5):
            [(partition, offset)] = event_log.append([(STUDY_A, b"%d" % i)])
            assert covers(event_log.end(), {partition: offset + 1})

    def test_offsets_grow_in_append_order_per_partition(self, event_log: EventLog) -> None:
        positions = [event_log.append([(STUDY_A, b"%d" % i)])[0] for i in range(10)]
        assert len({partition for partition, _ in positions}) == 1, "one key, one partition"
        offsets = [offset for _, offset in positions]
        assert offsets == sorted(offsets)
        values = [r.value for r in read_all(event_log) if r.key == STUDY_A]
        assert values == [b"%d" % i for i in range(10)]

    def test_read_from_a_position_skips_what_came_before(self, event_log: EventLog) -> None:
        event_log.append([(STUDY_A, b"old")])
        middle = event_log.end()
        event_log.append([(STUDY_A, b"new 1"), (STUDY_A, b"new 2")])
        assert [r.value for r in read_all(event_log, middle)] == [b"new 1", b"new 2"]

    def test_read_honours_max_records(self, event_log: EventLog) -> None:
        event_log.append([(STUDY_A, b"%d" % i) for i in range(7)])
        batch = event_log.read({}, max_records=3)
        assert [r.value for r in batch] == [b"0", b"1", b"2"]

    def test_max_records_must_be_positive(self, event_log: EventLog) -> None:
        with pytest.raises(Invalid):
            event_log.read({}, max_records=0)

    def test_acknowledged_records_survive_reopening(self, open_log: Callable[[], EventLog]) -> None:
        first = open_log()
        positions = first.append([(STUDY_A, b"kept"), (STUDY_B, b"also kept")])
        first.close()
        again = open_log()
        stored = by_position(read_all(again))
        assert [stored[p].value for p in positions] == [b"kept", b"also kept"]
        assert covers(again.end(), {p: o + 1 for p, o in positions})

    def test_two_handles_on_one_log_share_offsets(self, open_log: Callable[[], EventLog]) -> None:
        one, two = open_log(), open_log()
        positions = one.append([(STUDY_A, b"a")]) + two.append([(STUDY_A, b"b")])
        assert len(set(positions)) == 2
        assert [r.value for r in read_all(one)] == [b"a", b"b"]

    def test_concurrent_appends_get_dense_unique_offsets(self, event_log: EventLog) -> None:
        threads, per_thread = 8, 25
        positions: list[tuple[int, int]] = []
        lock = threading.Lock()

        def appender(n: int) -> None:
            for i in range(per_thread):
                got = event_log.append([(STUDY_A, b"%d-%d" % (n, i))])
                with lock:
                    positions.extend(got)

        workers = [threading.Thread(target=appender, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(positions) == len(set(positions)) == threads * per_thread
        per_partition: dict[int, list[int]] = defaultdict(list)
        for partition, offset in positions:
            per_partition[partition].append(offset)
        for partition, offsets in per_partition.items():
            assert sorted(offsets) == list(range(min(offsets), event_log.end()[partition]))
        values = [r.value for r in read_all(event_log)]
        assert sorted(values) == sorted(
            b"%d-%d" % (n, i) for n in range(threads) for i in range(per_thread)
        )

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        batch=st.lists(
            st.tuples(st.sampled_from([STUDY_A, STUDY_B, "1.2.3"]), st.binary(max_size=2048)),
            min_size=1,
            max_size=20,
        )
    )
    def test_any_batch_round_trips(
        self, event_log: EventLog, batch: list[tuple[str, bytes]]
    ) -> None:
        start = event_log.end()
        positions = event_log.append(batch)
        stored = by_position(read_all(event_log, start))
        assert [(stored[p].key, stored[p].value) for p in positions] == batch
