"""A search patched from the study tallies a process keeps as it follows the log
(api.pending_tally) answers as it will once everything is projected, and
asks the index nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api import pending_patch, pending_tally
from api.pending_studies import _DECODED
from api.pending_tally import IDLE_SECONDS, MAX_BEHIND, StudyTallies, register
from infra.ports import ProjectionStore
from schemas import codec
from schemas.events import InstanceStored
from tests.unit.test_members import instance_event
from tests.unit.test_pending_studies import _EVENT, Archive, _event
from tests.unit.test_pending_studies import archive as archive  # three studies, projected
from tests.unit.test_pending_studies import index as index  # the module's chDB fixture


def _follow(archive: Archive) -> StudyTallies:
    """The archive's tallies, moved on only when the test says (no thread)."""
    tallies = StudyTallies(archive.log, archive.index, _DECODED)
    register(tallies, archive.log)
    tallies.advance(archive.projector.checkpoint())
    return tallies


@pytest.fixture
def no_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any) -> Any:
        raise AssertionError("the patch read the index")

    monkeypatch.setattr(pending_patch, "from_index", refused)


def test_a_followed_study_is_patched_without_a_statement(
    archive: Archive, no_statements: None
) -> None:
    tallies = _follow(archive)
    archive.append(_event(1, 10, "SMITH^ANNA", "MR", "20200105"))
    tallies.advance(archive.projector.checkpoint())  # reads study 1 once, off the search
    archive.append(_event(1, 11, "SMITH^ANNA", "US", "20200105"))  # counted by the search
    archive.append(_event(1, 10, "SMITH^ANNA", "MR", "20200105"))  # stored again: once
    assert archive.patched({"PatientName": "SMITH*"})
    archive.holds({"PatientName": "SMITH*"}, {"ModalitiesInStudy": "US"})


def test_a_study_not_read_yet_is_patched_by_sql(archive: Archive) -> None:
    tallies = _follow(archive)
    archive.append(_event(1, 10, "SMITH^ANNA", "MR", "20200105"))
    assert tallies.studies() == []
    archive.holds({"PatientName": "SMITH*"})


def test_a_tally_behind_the_memory_is_not_used(archive: Archive, no_statements: None) -> None:
    tallies = _follow(archive)
    archive.append(_event(1, 10, "SMITH^ANNA", "MR", "20200105"))
    tallies.advance(archive.projector.checkpoint())
    archive.append(_event(1, 11, "SMITH^ANNA", "MR", "20200105"))
    archive.project()  # the memory moves past the tally's offset
    archive.append(_event(1, 12, "SMITH^ANNA", "MR", "20200105"))
    with pytest.raises(AssertionError, match="read the index"):
        archive.early({"PatientName": "SMITH*"})


def test_an_event_that_is_not_simple_starts_the_tallies_again(archive: Archive) -> None:
    tallies = _follow(archive)
    archive.append(_event(1, 10, "SMITH^ANNA", "MR", "20200105"))
    tallies.advance(archive.projector.checkpoint())
    assert tallies.studies() == ["1.2.1"]
    envelope = codec.decode(instance_event(1, 1, 12, {}))
    assert isinstance(envelope.payload, InstanceStored)
    # Metadata in the blob store: not one the tallies can count.
    with_sidecar = replace(envelope.payload, sidecar=envelope.payload.blob)
    archive.append(codec.encode(replace(envelope, payload=with_sidecar)))
    tallies.advance(archive.projector.checkpoint())
    assert tallies.studies() == []


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(_EVENT, min_size=1, max_size=6),
    pending=st.lists(_EVENT, min_size=1, max_size=6),
    followed=st.integers(0, 6),
    written=st.integers(0, 6),
)
# A study renamed into the search while an instance moves out of it, the
# move counted by the search, then by the tallies.
@example(
    stored=[(1, 1, "JONES^CY", "CT", "20200105")],
    pending=[(1, 2, "SMITH^ANNA", "CT", "20200105"), (2, 1, "JONES^CY", "MR", "20210612")],
    followed=1,
    written=0,
)
@example(
    stored=[(1, 1, "JONES^CY", "CT", "20200105")],
    pending=[(1, 2, "SMITH^ANNA", "CT", "20200105"), (2, 1, "JONES^CY", "MR", "20210612")],
    followed=2,
    written=0,
)
def test_answers_from_tallies_are_the_answers_after_projecting(
    index: ProjectionStore,
    tmp_path_factory: pytest.TempPathFactory,
    stored: list[tuple[int, int, str, str, str]],
    pending: list[tuple[int, int, str, str, str]],
    followed: int,
    written: int,
) -> None:
    """The tallies read the first `followed` pending events' studies, the
    projector then writes the first `written` of all pending events (the index
    ahead of the tallies' reads and of the memory), and the search counts the
    rest."""
    archive = Archive(tmp_path_factory.mktemp("log"), index)
    try:
        archive.append(*[_event(*event) for event in stored])
        archive.project()
        tallies = _follow(archive)
        archive.append(*[_event(*event) for event in pending[:followed]])
        tallies.advance(archive.projector.checkpoint())
        archive.append(*[_event(*event) for event in pending[followed:]])
        written = min(written, len(pending))
        archive.projector.run_until({0: archive.log.end()[0] - len(pending) + written})
        archive.project_and_compare(archive.early_answers())
    finally:
        archive.close()


def test_tallies_far_behind_start_again_at_the_log_end(archive: Archive) -> None:
    tallies = _follow(archive)
    archive.append(_event(1, 10, "SMITH^ANNA", "MR", "20200105"))
    tallies.advance(archive.projector.checkpoint())
    archive.append(
        *[_event(3, 100 + n, "ZED^ZOE", "US", "20230101") for n in range(MAX_BEHIND + 1)]
    )
    tallies.advance(archive.projector.checkpoint())
    assert tallies.studies() == [] and tallies.at == archive.log.end()[0]


def test_tallies_follow_only_while_searches_come(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    tallies = _follow(archive)
    assert not tallies.wanted()  # a process that only stores follows nothing
    archive.early({"PatientName": "SMITH*"})  # a search
    assert tallies.wanted()
    later = tallies.asked + IDLE_SECONDS
    monkeypatch.setattr(pending_tally.time, "monotonic", lambda: later)
    assert not tallies.wanted()
    archive.early({"PatientName": "SMITH*"})
    assert tallies.wanted()
