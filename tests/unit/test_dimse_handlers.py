"""Pure parts of the C-STORE and C-FIND handlers (api.dimse.store, api.dimse.find)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from api.dimse.ae import (
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    accepted_transfer_syntaxes,
    prefer_requestor_order,
    shared_contexts,
)
from api.dimse.find import (
    QueryOptions,
    build_response,
    find_failure,
    is_ascii,
    negotiate_options,
)
from api.dimse.store import (
    StoreHandler,
    dataset_sop_instance_uid,
    failure,
    is_failure_status,
    source_of,
)
from infra.errors import Invalid, Unavailable
from infra.settings import Settings
from tests.support import make_ct

# ------------------------------------------------------------ SOP UID check


def _part10(tmp_path: Path, transfer_syntax: UID, **attrs: Any) -> tuple[Path, str]:
    ds = make_ct(rows=4, cols=4, **attrs)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    if transfer_syntax == JPEGBaseline8Bit:
        del ds.PixelData  # the header is all the check reads
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit],
)
def test_sop_instance_uid_is_read_from_the_leading_elements(tmp_path: Path, syntax: UID) -> None:
    path, uid = _part10(tmp_path, syntax)
    assert dataset_sop_instance_uid(path, syntax) == uid


def test_sop_instance_uid_check_gives_up_rather_than_guess(tmp_path: Path) -> None:
    path, _ = _part10(tmp_path, DeflatedExplicitVRLittleEndian)
    assert dataset_sop_instance_uid(path, DeflatedExplicitVRLittleEndian) is None
    truncated = tmp_path / "short.dcm"
    explicit, _ = _part10(tmp_path, ExplicitVRLittleEndian)
    truncated.write_bytes(explicit.read_bytes()[:200])
    assert dataset_sop_instance_uid(truncated, ExplicitVRLittleEndian) is None
    raw = tmp_path / "raw.dcm"
    raw.write_bytes(b"\x08\x00\x18\x00UI\x04\x001.2\x00")
    assert dataset_sop_instance_uid(raw, ExplicitVRLittleEndian) is None


def test_missing_sop_instance_uid_is_left_to_ingest(tmp_path: Path) -> None:
    ds = make_ct(rows=4, cols=4)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    del ds.SOPInstanceUID
    path = tmp_path / "nouid.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert dataset_sop_instance_uid(path, ExplicitVRLittleEndian) is None


# ------------------------------------------------------------------ statuses


def test_failure_keeps_error_comment_within_lo() -> None:
    status = failure(0xC000, "é" * 100 + "\\")
    assert status.Status == 0xC000
    assert len(status.ErrorComment) == 64 and status.ErrorComment.isascii()


@pytest.mark.parametrize(
    ("status", "is_failure"),
    [
        (0x0000, False),
        (0x0001, False),
        (0xB000, False),
        (0xFF00, False),
        (0xFE00, False),
        (0xA700, True),
        (0xA900, True),
        (0xC000, True),
        (0xCFFF, True),
        (0x0122, True),
        (0x0211, True),
    ],
)
def test_failure_statuses(status: int, is_failure: bool) -> None:
    assert is_failure_status(status) is is_failure


def test_source_names_the_route_and_brackets_ipv6() -> None:
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(address="::1", port=4242, ae_title="MODALITY  "),
        acceptor=SimpleNamespace(ae_title="CHRONICLE"),
    )
    source = source_of(assoc)
    assert (source.protocol, source.calling_ae, source.called_ae) == (
        "DIMSE",
        "MODALITY",
        "CHRONICLE",
    )
    assert source.peer == "[::1]:4242"


def _store_event(tmp_path: Path) -> Any:
    path, uid = _part10(tmp_path, ExplicitVRLittleEndian)
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(address="127.0.0.1", port=1, ae_title="SCU"),
        acceptor=SimpleNamespace(ae_title="CHRONICLE"),
    )
    return SimpleNamespace(
        assoc=assoc,
        request=SimpleNamespace(AffectedSOPInstanceUID=uid),
        dataset_path=path,
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
    )


_raised = st.one_of(
    st.builds(Invalid, st.text(max_size=200), st.integers(min_value=0, max_value=0xFFFF)),
    st.builds(Unavailable, st.text(max_size=200)),
    st.builds(RuntimeError, st.text(max_size=200)),
    st.builds(OSError, st.text(max_size=200)),
)


@given(raised=_raised)
def test_store_handler_never_answers_success_when_ingest_raised(
    tmp_path_factory: pytest.TempPathFactory, raised: Exception
) -> None:
    def store(path: Path, *, source: Any) -> Any:
        raise raised

    settings = Settings(data_dir=tmp_path_factory.mktemp("s"))
    ingest = SimpleNamespace(store_part10_file=store)
    handler = StoreHandler(SimpleNamespace(settings=settings, ingest=ingest))
    answer = handler(_store_event(tmp_path_factory.mktemp("e")))
    assert isinstance(answer, Dataset)
    assert is_failure_status(int(answer.Status))


# -------------------------------------------------------------------- C-FIND


def _identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    ds.ModalitiesInStudy = ""
    ds.ReferencedStudySequence = []
    return ds


def test_response_holds_exactly_the_requested_keys_plus_ours() -> None:
    match = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00081030": {"vr": "LO", "Value": ["unrequested"]},
    }
    response = build_response(match, _identifier(), level="STUDY", ae_title="CHRONICLE")
    assert [elem.keyword for elem in response] == [
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "ModalitiesInStudy",
        "ReferencedStudySequence",
        "PatientName",
        "StudyInstanceUID",
    ]
    assert response.ModalitiesInStudy is None or response.ModalitiesInStudy == ""
    assert list(response.ReferencedStudySequence) == []
    assert "SpecificCharacterSet" not in response


def test_response_character_set_follows_the_values() -> None:
    identifier = _identifier()
    identifier.SpecificCharacterSet = "ISO_IR 100"
    plain = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}}
    accented = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Dœ^Jane"}]}}
    ideographic = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada", "Ideographic": "山田"}]}
    }
    assert (
        build_response(plain, identifier, level="STUDY", ae_title="A").SpecificCharacterSet
        == "ISO_IR 100"
    )
    for match in (accented, ideographic):
        response = build_response(match, identifier, level="STUDY", ae_title="A")
        assert response.SpecificCharacterSet == "ISO_IR 192"


def test_is_ascii_looks_into_sequences() -> None:
    ds = Dataset()
    item = Dataset()
    item.CodeMeaning = "Ü"
    ds.ProcedureCodeSequence = [item]
    assert not is_ascii(ds)
    item.CodeMeaning = "U"
    assert is_ascii(ds)


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (Invalid("bad", 0xA900), 0xA900),
        (Invalid("ok?", 0x0000), 0xC000),
        (Unavailable("down"), 0xA700),
        (ValueError("bug"), 0xC000),
    ],
)
def test_find_failures(raised: Exception, status: int) -> None:
    assert find_failure(raised).Status == status


def test_find_options_accept_all_but_timezone_adjustment() -> None:
    answers = negotiate_options(
        {
            PATIENT_ROOT_FIND: b"\x01\x01\x01\x01",
            STUDY_ROOT_FIND: b"\x01",
            "1.2.840.10008.5.1.4.1.1.2": b"\x01",
        }
    )
    assert answers == {PATIENT_ROOT_FIND: b"\x01\x01\x01\x00", STUDY_ROOT_FIND: b"\x01"}
    assert negotiate_options({STUDY_ROOT_FIND: b"\x00\x00\x01\x00\x07"}) == {
        STUDY_ROOT_FIND: b"\x00\x00\x01\x00"
    }


def test_query_options_read_what_the_association_agreed() -> None:
    def assoc(agreed: dict[str, bytes]) -> Any:
        return SimpleNamespace(acceptor=SimpleNamespace(sop_class_extended=agreed))

    assert QueryOptions.agreed(assoc({}), STUDY_ROOT_FIND) == QueryOptions()
    agreed = QueryOptions.agreed(assoc({STUDY_ROOT_FIND: b"\x01\x00\x01"}), STUDY_ROOT_FIND)
    assert agreed == QueryOptions(relational=True, combined_datetime=False, fuzzy=True)


# --------------------------------------------------------- shared contexts

ALL_SYNTAXES: list[str | bytes | UID] = [*accepted_transfer_syntaxes()]


def test_shared_contexts_copy_cheaply_and_stay_untouched_by_reordering() -> None:
    from pynetdicom.presentation import PresentationContext

    original = PresentationContext()
    original.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    original.transfer_syntax = [*ALL_SYNTAXES]
    [shared] = shared_contexts([original])
    before = list(shared.transfer_syntax)
    per_association = copy.deepcopy([shared])
    assert per_association[0].transfer_syntax is shared.transfer_syntax
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(
            primitive=SimpleNamespace(
                presentation_context_definition_list=[
                    SimpleNamespace(
                        context_id=1,
                        abstract_syntax="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax=[JPEGBaseline8Bit],
                    )
                ]
            )
        ),
        acceptor=SimpleNamespace(supported_contexts=per_association),
    )
    prefer_requestor_order(assoc)
    assert per_association[0].transfer_syntax == [JPEGBaseline8Bit]
    assert shared.transfer_syntax == before
