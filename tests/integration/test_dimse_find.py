"""The DIMSE C-FIND SCP on a real socket, with the query engine monkeypatched.

`api.matching.search_page` is replaced per test so matches, failures and
truncation can be forced; `query_from_identifier` is the real one, wrapped to
record the model asked for.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, build_context

import api.dimse.find as find_module
from api import matching
from api.dimse.ae import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from api.dimse.server import DimseServer
from infra.errors import Invalid, Unavailable
from tests.integration import dimse_harness
from tests.integration.dimse_harness import StandInArchive
from tests.integration.dimse_harness import associate as _associate
from tests.integration.dimse_harness import extended as _extended
from tests.support import dcmtk, tool_env

#: The stand-in archive and server fixtures, collected here by name.
archive = dimse_harness.archive
server = dimse_harness.server


def _study_json(number: int, name: str = "Doe^Jane") -> dict[str, Any]:
    return {
        "0020000D": {"vr": "UI", "Value": [f"1.2.3.{number}"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00100020": {"vr": "LO", "Value": [f"PID{number}"]},
        "00080020": {"vr": "DA", "Value": ["20240115"]},
        "00081030": {"vr": "LO", "Value": ["not requested"]},
    }


def _study_identifier(**extra: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = "D*"
    ds.PatientID = ""
    ds.StudyDate = ""
    ds.AccessionNumber = ""
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


@dataclass
class Searched:
    """What reached the query engine: the models asked for and the queries."""

    models: list[str] = field(default_factory=list)
    queries: list[Any] = field(default_factory=list)


def _patch_search(
    monkeypatch: pytest.MonkeyPatch,
    answer: Callable[[], list[dict[str, Any]]],
    *,
    more: bool = False,
) -> Searched:
    searched = Searched()
    original = matching.query_from_identifier

    def query_from_identifier(identifier: Dataset, *, model: str, **options: bool) -> Any:
        searched.models.append(model)
        return original(identifier, model=model, **options)

    def search_page(index: Any, query: Any) -> matching.Page:
        searched.queries.append(query)
        return matching.Page(answer(), more)

    monkeypatch.setattr(matching, "query_from_identifier", query_from_identifier)
    monkeypatch.setattr(matching, "search_page", search_page)
    return searched


def _find(
    port: int, identifier: Dataset, model: Any = STUDY_ROOT_FIND, negotiation: bytes = b""
) -> list[tuple[int, Dataset | None]]:
    items = [_extended(model, negotiation)] if negotiation else []
    assoc = _associate(port, [build_context(model)], negotiation=items)
    assert assoc.is_established
    try:
        return [
            (int(status.Status), found) for status, found in assoc.send_c_find(identifier, model)
        ]
    finally:
        assoc.release()


def test_find_yields_one_pending_per_match_with_the_requested_keys(
    server: DimseServer, archive: StandInArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = _patch_search(monkeypatch, lambda: [_study_json(1), _study_json(2)])
    before = archive.barriers
    answers = _find(server.port, _study_identifier())
    assert [status for status, _ in answers] == [0xFF00, 0xFF00, 0x0000]
    first = answers[0][1]
    assert first is not None
    assert first.StudyInstanceUID == "1.2.3.1" and first.PatientID == "PID1"
    assert first.QueryRetrieveLevel == "STUDY" and first.RetrieveAETitle == "CHRONICLE"
    assert "AccessionNumber" in first and first.AccessionNumber == ""
    assert "StudyDescription" not in first
    assert "SpecificCharacterSet" not in first
    assert archive.barriers == before + 1
    assert recorded.models == ["STUDY"] and len(recorded.queries) == 1


def test_patient_root_queries_use_the_patient_model(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = _patch_search(monkeypatch, lambda: [])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = ""
    identifier.PatientName = ""
    answers = _find(server.port, identifier, PATIENT_ROOT_FIND)
    assert answers == [(0x0000, None)]
    assert recorded.models == ["PATIENT"]


def test_non_ascii_matches_are_sent_in_the_request_set_when_they_fit(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_search(monkeypatch, lambda: [_study_json(1, name="Müller^Jürgen")])
    answers = _find(server.port, _study_identifier(SpecificCharacterSet="ISO_IR 100"))
    found = answers[0][1]
    assert found is not None
    assert found.SpecificCharacterSet == "ISO_IR 100"
    assert str(found.PatientName) == "Müller^Jürgen"


def test_non_ascii_matches_outside_the_request_set_are_sent_as_utf8(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_search(monkeypatch, lambda: [_study_json(1, name="Müller^Jürgen")])
    answers = _find(server.port, _study_identifier(SpecificCharacterSet="ISO_IR 144"))
    found = answers[0][1]
    assert found is not None
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert str(found.PatientName) == "Müller^Jürgen"


def test_ascii_matches_echo_the_requested_character_set(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_search(monkeypatch, lambda: [_study_json(1)])
    answers = _find(server.port, _study_identifier(SpecificCharacterSet="ISO_IR 100"))
    found = answers[0][1]
    assert found is not None and found.SpecificCharacterSet == "ISO_IR 100"


def test_find_still_answers_when_projections_lag(
    server: DimseServer, archive: StandInArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_search(monkeypatch, lambda: [_study_json(1)])
    archive.fresh = False
    try:
        answers = _find(server.port, _study_identifier())
    finally:
        archive.fresh = True
    assert [status for status, _ in answers] == [0xFF00, 0x0000]


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (Invalid("bad key", status=0xA900), 0xA900),
        (Invalid("cannot do that"), 0xC000),
        (Unavailable("index down"), 0xA700),
        (RuntimeError("bug"), 0xC000),
    ],
)
def test_find_failures_are_failures_never_empty_successes(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch, raised: Exception, status: int
) -> None:
    def explode() -> list[dict[str, Any]]:
        raise raised

    _patch_search(monkeypatch, explode)
    answers = _find(server.port, _study_identifier())
    assert [code for code, _ in answers] == [status]


def test_too_many_matches_are_refused_not_truncated(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_search(monkeypatch, lambda: [_study_json(1)], more=True)
    assert _find(server.port, _study_identifier()) == [(0xA700, None)]


def _series_identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.SeriesInstanceUID = ""
    ds.Modality = "CT"
    return ds


def test_relational_queries_need_extended_negotiation(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    searched = _patch_search(monkeypatch, lambda: [])
    # A SERIES query without its StudyInstanceUID is relational (PS3.4 C.4.1.2.2).
    assert _find(server.port, _series_identifier()) == [(0xA900, None)]
    assert _find(server.port, _series_identifier(), negotiation=b"\x01") == [(0x0000, None)]
    [query] = searched.queries
    assert query.relational and not query.fuzzy and not query.combined_datetime


def test_negotiated_options_reach_the_query(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    searched = _patch_search(monkeypatch, lambda: [])
    assoc = _associate(
        server.port,
        [build_context(STUDY_ROOT_FIND)],
        negotiation=[_extended(STUDY_ROOT_FIND, b"\x00\x01\x01\x01")],
    )
    assert assoc.acceptor.sop_class_extended == {STUDY_ROOT_FIND: b"\x00\x01\x01\x00"}
    list(assoc.send_c_find(_study_identifier(), STUDY_ROOT_FIND))
    assoc.release()
    [query] = searched.queries
    assert (query.relational, query.combined_datetime, query.fuzzy) == (False, True, True)


def test_find_cancel_stops_the_matches(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_search(monkeypatch, lambda: [_study_json(n) for n in range(500)])
    real, direct = find_module.build_response, find_module.encode_response

    def slow(*args: Any, **kwargs: Any) -> Dataset:
        time.sleep(0.01)
        return real(*args, **kwargs)

    def slow_direct(*args: Any, **kwargs: Any) -> bytes | None:
        time.sleep(0.01)
        return direct(*args, **kwargs)

    monkeypatch.setattr(find_module, "build_response", slow)
    monkeypatch.setattr(find_module, "encode_response", slow_direct)
    model = STUDY_ROOT_FIND
    assoc = _associate(server.port, [build_context(model)])
    [context] = assoc.accepted_contexts
    statuses = []
    for status, _ in assoc.send_c_find(_study_identifier(), model, msg_id=7):
        statuses.append(int(status.Status))
        if len(statuses) == 3:
            assoc.send_c_cancel(7, context.context_id)
    assoc.release()
    assert statuses[-1] == 0xFE00
    assert statuses.count(0xFF00) < 100


def test_findscu_gets_the_matches(server: DimseServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_search(monkeypatch, lambda: [_study_json(1), _study_json(2)])
    run = subprocess.run(
        [
            dcmtk("findscu"),
            "-v",
            "-S",
            "-aet",
            "FINDSCU",
            "-aec",
            "CHRONICLE",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
            "-k",
            "PatientName=D*",
            "127.0.0.1",
            str(server.port),
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    output = run.stdout + run.stderr
    assert output.count("(Pending)") == 2 and "Final Find Response (Success)" in output
    assert "1.2.3.2" in output and "CHRONICLE" in output


def test_a_query_only_association_streams_every_match_within_the_peers_pdu_size(
    server: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served by api.dimse.find_link: every match, then one success; responses fragmented
    to the requestor's small maximum PDU (pynetdicom reassembles them)."""
    _patch_search(monkeypatch, lambda: [_study_json(n) for n in range(60)])
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.maximum_pdu_size = 256
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", server.port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        answers = list(assoc.send_c_find(_study_identifier(), STUDY_ROOT_FIND))
    finally:
        assoc.release()
    statuses = [int(status.Status) for status, _ in answers]
    assert statuses == [0xFF00] * 60 + [0x0000]
    found = {str(identifier.StudyInstanceUID) for _, identifier in answers[:-1]}
    assert len(found) == 60
