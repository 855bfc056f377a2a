"""A study search goes ahead without its read-your-writes wait only when the
events not yet projected cannot change its answer: whenever it says so, the
answer now is the answer once they are projected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api.matching import parse_qido
from api.pending_patch import normal_time
from api.pending_studies import PENDING_MAX, without_waiting
from api.query_model import Level, Query
from api.stored_sops import stored_sops_for
from api.study_memory import memory_for
from api.study_snapshot import PATCHED, Snapshot
from infra.factory import open_projection_store
from infra.migrations import migrate
from infra.ports import ProjectionStore
from infra.sqlite_log import SqliteEventLog
from projections.replay import TABLES
from projections.runner import Projector
from tests.unit.test_members import instance_event

NAMES = ["SMITH^ANNA", "SMYTHE^BO", "JONES^CY", "MÜLLER^DORA"]
MODALITIES = ["CT", "MR", "US"]
DATES = ["20200105", "20210612", "20220301"]
QUERIES = [
    {"PatientName": "SMITH*"},
    {"PatientName": "SM*"},
    {"PatientName": "JONES^CY"},
    {"ModalitiesInStudy": "MR"},
    {"ModalitiesInStudy": "CT", "StudyDate": "20200101-20211231"},
    {"StudyDate": "20220301"},
    {"AccessionNumber": "A2"},
]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    opened = open_projection_store(f"chdb://{tmp_path_factory.mktemp('index')}")
    migrate(opened)
    yield opened
    opened.close()


def _event(study: int, sop: int, name: str, modality: str, date: str) -> bytes:
    metadata = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00080060": {"vr": "CS", "Value": [modality]},
        "00080020": {"vr": "DA", "Value": [date]},
        "00080050": {"vr": "SH", "Value": [f"A{study}"]},
    }
    return instance_event(study, 1 if modality == "CT" else 2, sop, metadata)


def _query(keys: dict[str, str]) -> Query:
    return parse_qido(Level.STUDY, list(keys.items()))


class Archive:
    """A log, a projector that runs only when told, and the index."""

    def __init__(self, folder: Path, index: ProjectionStore) -> None:
        for table in TABLES:
            index.command(f"TRUNCATE TABLE {table}")
        self.index = index
        self.log = SqliteEventLog(folder / "log.db")
        self.projector = Projector(self.log, index, gather_seconds=0)

    def append(self, *values: bytes) -> None:
        self.log.append([("k", value) for value in values])

    def project(self) -> None:
        """Project what is pending; the memory then holds the rows (a search
        that waited would have refreshed it) and knows what they cover."""
        self.projector.run_until(self.log.end())
        memory = memory_for(self.index)
        assert memory is not None
        memory.latest(self.projector.checkpoint)
        memory.search(_query({}))

    def filter_stored(self) -> None:
        """Build the process's filter of stored SOP UIDs now (a search builds
        it on a thread of its own, and asks SQL until then)."""
        stored_sops_for(self.log, self.index).build(self.projector.checkpoint())

    def early(self, keys: dict[str, str], projector: Any = None) -> Snapshot | None:
        feed = projector if projector is not None else self.projector
        return without_waiting(self.log, feed, self.index, _query(keys))

    def early_answers(self, projector: Any = None) -> dict[int, Any]:
        """QUERIES' answers given without waiting, by their place in QUERIES."""
        early = {}
        for n, keys in enumerate(QUERIES):
            snapshot = self.early(keys, projector)
            if snapshot is not None:
                early[n] = self.answer(keys, snapshot)
        return early

    def project_and_compare(self, early: dict[int, Any]) -> None:
        """Each answer given early is the answer once everything is projected."""
        self.project()
        for n, answer in early.items():
            assert self.answer(QUERIES[n]) == answer, QUERIES[n]

    def unchanged(self, keys: dict[str, str]) -> bool:
        return self.early(keys) is not None

    def patched(self, keys: dict[str, str]) -> bool:
        """Answered without waiting, from rows made for this search."""
        snapshot = self.early(keys)
        return snapshot is not None and snapshot.generation == PATCHED

    def answer(self, keys: dict[str, str], snapshot: Snapshot | None = None) -> Any:
        """The memory's answer rows, less the statistics row's version (a
        patched row has one of its own: api.pending_patch)."""
        memory = memory_for(self.index)
        assert memory is not None
        found = memory.search(_query(keys), snapshot)
        assert found is not None
        rows, more = found
        return [{k: v for k, v in row.items() if k != "st__version"} for row in rows], more

    def holds(self, *queries: dict[str, str]) -> None:
        """Each query answers now without waiting, and as it will once projected."""
        early = []
        for keys in queries:
            snapshot = self.early(keys)
            assert snapshot is not None, keys
            early.append(self.answer(keys, snapshot))
        self.project()
        assert [self.answer(keys) for keys in queries] == early

    def close(self) -> None:
        self.projector.stop()
        self.log.close()


@pytest.fixture
def archive(index: ProjectionStore, tmp_path: Path) -> Iterator[Archive]:
    made = Archive(tmp_path, index)
    made.append(
        _event(1, 1, "SMITH^ANNA", "CT", "20200105"),
        _event(2, 2, "JONES^CY", "MR", "20210612"),
        _event(3, 3, "SMYTHE^BO", "US", "20220301"),
    )
    made.project()
    yield made
    made.close()


def test_nothing_pending_needs_no_wait(archive: Archive) -> None:
    assert all(archive.unchanged(keys) for keys in QUERIES)


def test_a_new_study_patches_only_the_searches_it_would_answer(archive: Archive) -> None:
    archive.append(_event(9, 9, "MILLER^CAL", "CT", "20200202"))
    assert archive.unchanged({"PatientName": "SMITH*"})
    assert not archive.patched({"PatientName": "SMITH*"})
    assert not archive.patched({"ModalitiesInStudy": "MR"})
    assert archive.patched({"PatientName": "MIL*"})
    assert archive.patched({"ModalitiesInStudy": "CT", "StudyDate": "20200101-20211231"})
    assert archive.patched({})  # every study
    archive.holds({"PatientName": "MIL*"}, {"ModalitiesInStudy": "CT"}, {}, {"PatientName": "S*"})


def test_an_instance_added_to_a_shown_study_is_counted(archive: Archive) -> None:
    archive.append(_event(1, 10, "SMITH^ANNA", "MR", "20200105"))
    assert archive.patched({"PatientName": "SMITH*"})  # its counts change
    assert archive.patched({"ModalitiesInStudy": "MR"})  # it starts to match
    assert not archive.patched({"PatientName": "JONES*"})
    archive.holds({"PatientName": "SMITH*"}, {"ModalitiesInStudy": "MR"}, {"PatientName": "J*"})


def test_an_instance_stored_again_is_counted_once(archive: Archive) -> None:
    archive.append(_event(1, 1, "SMITH^ANNA", "CT", "20200105"))  # SOP 1.3.1 again
    archive.append(_event(1, 10, "SMITH^ANNA", "CT", "20200105"))
    archive.append(_event(1, 10, "SMITH^ANNA", "CT", "20200105"))
    assert archive.patched({"PatientName": "SMITH*"})
    archive.holds({"PatientName": "SMITH*"})


def test_an_event_already_projected_is_counted_once(archive: Archive) -> None:
    """The index may hold pending events' rows (the projector's batch written,
    its checkpoint not yet): each instance is counted once."""
    archive.append(_event(1, 10, "SMITH^ANNA", "MR", "20200105"))
    early = archive.early({"PatientName": "SMITH*"})
    archive.projector.run_until(archive.log.end())  # the memory does not know
    archive.append(_event(1, 11, "SMITH^ANNA", "MR", "20200105"))
    memory = memory_for(archive.index)
    assert memory is not None and early is not None
    snapshot = without_waiting(archive.log, _Behind(early), archive.index, _query({}))
    assert snapshot is not None
    found = archive.answer({"PatientName": "SMITH*"}, snapshot)
    assert found[0][0]["a__n_instances"] == 3
    assert found[0][0]["a__n_series"] == 2


class _Behind:
    """A projector whose checkpoint is the one `snapshot` covers."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._position = dict(snapshot.position or {})

    def checkpoint(self) -> dict[int, int]:
        return self._position


def test_a_renamed_study_is_patched_for_either_name(archive: Archive) -> None:
    archive.append(_event(2, 11, "SMYTHE^BO", "MR", "20210612"))
    assert archive.patched({"PatientName": "JONES*"})
    assert archive.patched({"PatientName": "SMY*"})
    assert not archive.patched({"PatientName": "SMITH*"})
    archive.holds({"PatientName": "JONES*"}, {"PatientName": "SMY*"}, {"PatientName": "SMITH*"})


def test_an_instance_moved_away_waits_for_the_study_it_leaves(archive: Archive) -> None:
    archive.append(_event(5, 1, "ZED^ZOE", "US", "20230101"))  # SOP 1.3.1 was in study 1
    assert not archive.unchanged({"PatientName": "SMITH*"})
    assert archive.unchanged({"PatientName": "JONES*"})


def test_with_the_filter_a_moved_instance_still_waits(archive: Archive) -> None:
    archive.filter_stored()
    archive.append(_event(5, 1, "ZED^ZOE", "US", "20230101"))  # SOP 1.3.1 was in study 1
    assert not archive.unchanged({"PatientName": "SMITH*"})
    assert archive.unchanged({"PatientName": "JONES*"})


def test_with_the_filter_new_instances_ask_no_statement(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.filter_stored()
    archive.append(_event(9, 90, "MILLER^CAL", "CT", "20200202"))
    archive.append(_event(9, 91, "MILLER^CAL", "CT", "20200202"))
    asked: list[str] = []
    query = archive.index.query

    def counted(sql: str, parameters: Any = None) -> Any:
        asked.append(sql)
        return query(sql, parameters)

    monkeypatch.setattr(archive.index, "query", counted)
    assert archive.unchanged({"PatientName": "SMITH*"})
    assert not [sql for sql in asked if "receipt_by_sop" in sql]


def test_a_process_reads_each_pending_event_once(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.append(_event(9, 90, "MILLER^CAL", "CT", "20200202"))
    assert archive.patched({"PatientName": "MIL*"})
    archive.append(_event(9, 91, "MILLER^CAL", "CT", "20200202"))
    starts: list[tuple[dict[int, int], int]] = []
    read = archive.log.read

    def counted(start: dict[int, int], max_records: int = 1000) -> Any:
        starts.append((dict(start), max_records))
        return read(start, max_records)

    monkeypatch.setattr(archive.log, "read", counted)
    archive.holds({"PatientName": "MIL*"})
    assert starts[0] == ({0: archive.log.end()[0] - 1}, 1)


def test_names_python_cannot_lower_as_clickhouse_does_wait(archive: Archive) -> None:
    archive.append(_event(7, 12, "MÜLLER^DORA", "US", "20230101"))
    assert not archive.unchanged({"PatientName": "JONES*"})


def test_more_pending_events_than_are_worth_reading_wait(archive: Archive) -> None:
    archive.append(*[_event(8, 100 + n, "ZED^ZOE", "US", "20230101") for n in range(PENDING_MAX)])
    assert archive.unchanged({"PatientName": "JONES*"})
    archive.append(_event(8, 99, "ZED^ZOE", "US", "20230101"))
    assert not archive.unchanged({"PatientName": "JONES*"})


def test_searches_the_memory_does_not_answer_wait(archive: Archive) -> None:
    archive.append(_event(9, 9, "MILLER^CAL", "CT", "20200202"))
    assert not archive.unchanged({"PatientName": "MÜLLER"})  # non-ASCII literal: SQL
    query = parse_qido(Level.SERIES, [("Modality", "MR")])
    assert without_waiting(archive.log, archive.projector, archive.index, query) is None


def test_the_normal_time_is_query_sqls() -> None:
    assert normal_time("") == "000000.000000"
    assert normal_time("12") == "120000.000000"
    assert normal_time("12:30:05.5") == "123005.500000"
    assert normal_time("123005.123456789") == "123005.123456"


_EVENT = st.tuples(
    st.integers(1, 5),  # study
    st.integers(1, 8),  # SOP: a low one may already be stored, in another study
    st.sampled_from(NAMES),
    st.sampled_from(MODALITIES),
    st.sampled_from(DATES),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(_EVENT, min_size=1, max_size=6),
    pending=st.lists(_EVENT, max_size=4),
    filtered=st.booleans(),
)
# A shown study renamed away from the search, and an instance moved out of one.
@example(
    stored=[(1, 1, "SMITH^ANNA", "CT", "20200105")],
    pending=[(1, 2, "JONES^CY", "CT", "20200105")],
    filtered=False,
)
@example(
    stored=[(1, 1, "SMITH^ANNA", "CT", "20200105"), (1, 2, "SMITH^ANNA", "CT", "20200105")],
    pending=[(2, 1, "JONES^CY", "MR", "20210612")],
    filtered=True,
)
def test_an_answer_given_without_waiting_is_the_answer_after_projecting(
    index: ProjectionStore,
    tmp_path_factory: pytest.TempPathFactory,
    stored: list[tuple[int, int, str, str, str]],
    pending: list[tuple[int, int, str, str, str]],
    filtered: bool,
) -> None:
    archive = Archive(tmp_path_factory.mktemp("log"), index)
    try:
        archive.append(*[_event(*event) for event in stored])
        archive.project()
        if filtered:
            archive.filter_stored()
        archive.append(*[_event(*event) for event in pending])
        early = archive.early_answers()
        archive.project_and_compare(early)
        if not pending:
            assert len(early) == len(QUERIES)
    finally:
        archive.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(_EVENT, min_size=1, max_size=5),
    pending=st.lists(_EVENT, min_size=1, max_size=5),
    written=st.integers(0, 5),
)
def test_events_the_projector_wrote_since_the_memory_read_count_once(
    index: ProjectionStore,
    tmp_path_factory: pytest.TempPathFactory,
    stored: list[tuple[int, int, str, str, str]],
    pending: list[tuple[int, int, str, str, str]],
    written: int,
) -> None:
    """The index may be ahead of the memory's rows (batches written since they
    were read): the first `written` pending events are projected, and the
    search still starts from the memory's older rows and position."""
    archive = Archive(tmp_path_factory.mktemp("log"), index)
    try:
        archive.append(*[_event(*event) for event in stored])
        archive.project()
        memory = memory_for(archive.index)
        assert memory is not None
        before = memory.latest(archive.projector.checkpoint)
        assert before is not None
        archive.append(*[_event(*event) for event in pending[:written]])
        archive.projector.run_until(archive.log.end())
        archive.append(*[_event(*event) for event in pending[written:]])
        archive.project_and_compare(archive.early_answers(_Behind(before)))
    finally:
        archive.close()


def test_every_distinct_state_of_a_pending_study_is_checked(archive: Archive) -> None:
    """Pending events of one study are checked once per distinct set of
    attributes: a state in between that matches still counts."""
    archive.append(
        _event(9, 20, "MILLER^CAL", "CT", "20200202"),
        _event(9, 21, "MILLER^CAL", "CT", "20200202"),
        _event(9, 22, "SMITH^ZED", "CT", "20200202"),
        _event(9, 23, "SMITH^ZED", "CT", "20200202"),
    )
    assert archive.patched({"PatientName": "MIL*"})  # only a state in between matches
    assert archive.patched({"PatientName": "SMITH*"})
    assert archive.unchanged({"PatientName": "JONES*"})
    assert not archive.patched({"PatientName": "JONES*"})
    archive.holds({"PatientName": "MIL*"}, {"PatientName": "SMITH*"}, {"PatientName": "J*"})
