"""The pure parts of C-MOVE/C-GET/send: identifiers, contexts, delivery choice, files."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from api.dimse import retrieve
from api.dimse.find import STUDY_ROOT_FIND
from api.dimse.retrieve import (
    EXPLICIT,
    IMPLICIT,
    MAX_CONTEXTS,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    TRANSCODE_TARGETS,
    Delivery,
    Outgoing,
    SubOperationFailed,
    choose_delivery,
    negotiate_retrieve_options,
    on_sop_extended,
    part10_file,
    retrieve_failure,
    storage_contexts,
    unique_key_identifier,
)
from api.pixels import to_implicit_le
from infra.errors import Invalid, Unavailable
from tests.support import make_ct, part10_bytes, pydicom_file

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
MPEG2 = "1.2.840.10008.1.2.4.100"


def _identifier(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _item(sop_class: str, ts: str, data: bytes = b"") -> Outgoing:
    return Outgoing(sop_class, generate_uid(), ts, lambda: io.BytesIO(data))


# -- identifiers ----------------------------------------------------------------


def test_identifier_keeps_only_unique_keys_at_or_above_its_level() -> None:
    ds = _identifier(
        QueryRetrieveLevel="SERIES",
        PatientID="P1",
        StudyInstanceUID="1.2.3",
        SeriesInstanceUID="1.2.3.4\\1.2.3.5",
        PatientName="Doe^J*",
        Modality="CT",
    )

    reduced = unique_key_identifier(ds, model="STUDY")

    assert reduced.QueryRetrieveLevel == "SERIES"
    assert reduced.StudyInstanceUID == "1.2.3"
    assert list(reduced.SeriesInstanceUID) == ["1.2.3.4", "1.2.3.5"]
    assert "PatientID" not in reduced  # Study Root has no patient level
    assert "PatientName" not in reduced and "Modality" not in reduced


def test_patient_root_keeps_the_patient_id() -> None:
    ds = _identifier(QueryRetrieveLevel="STUDY", PatientID="P1", StudyInstanceUID="1.2.3")

    reduced = unique_key_identifier(ds, model="PATIENT")

    assert reduced.PatientID == "P1" and reduced.StudyInstanceUID == "1.2.3"


@pytest.mark.parametrize(
    ("model", "keys"),
    [
        ("STUDY", {"QueryRetrieveLevel": "STUDY"}),  # no key of its own level
        ("STUDY", {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1.2"}),
        ("STUDY", {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}),  # not in Study Root
        ("PATIENT", {"QueryRetrieveLevel": "FRAME", "SOPInstanceUID": "1.2"}),
        ("PATIENT", {}),
    ],
)
def test_identifier_without_its_levels_key_does_not_match_the_sop_class(
    model: str, keys: dict[str, str]
) -> None:
    with pytest.raises(Invalid) as caught:
        unique_key_identifier(_identifier(**keys), model=model)

    assert caught.value.status == 0xA900


def test_failures_before_any_sub_operation_say_why() -> None:
    assert retrieve_failure(Invalid("bad key", 0xA900)).Status == 0xA900
    assert retrieve_failure(Invalid("not a failure status", 0x0000)).Status == 0xC000
    unavailable = retrieve_failure(Unavailable("index down"))
    assert unavailable.Status == 0xA701 and "index down" in unavailable.ErrorComment
    assert retrieve_failure(RuntimeError("boom")).Status == 0xC000


def _catalog_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def list_instances(index: Any, *uids: Any) -> list[Any]:
        calls.append(uids)
        sop = uids[2] if len(uids) > 2 else "1.9"
        return [SimpleNamespace(sop_instance_uid=sop), SimpleNamespace(sop_instance_uid="1.8")]

    monkeypatch.setattr(retrieve.catalog, "list_instances", list_instances)
    monkeypatch.setattr(retrieve.matching, "search_page", _no_engine)
    return calls


def _no_engine(index: Any, query: Any) -> Any:
    raise AssertionError("the catalog should have answered")


def test_uid_keys_are_looked_up_in_the_catalog_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _catalog_calls(monkeypatch)

    studies = retrieve.resolve(
        None,  # type: ignore[arg-type]
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=["1.2", "1.3", "1.2"]),
        model="STUDY",
        relational=False,
    )
    images = retrieve.resolve(
        None,  # type: ignore[arg-type]
        _identifier(
            QueryRetrieveLevel="IMAGE",
            StudyInstanceUID="1.2",
            SeriesInstanceUID="1.2.1",
            SOPInstanceUID="1.8",
        ),
        model="STUDY",
        relational=False,
    )

    assert calls == [("1.2",), ("1.3",), ("1.2",), ("1.2", "1.2.1")]
    assert [r.sop_instance_uid for r in studies] == ["1.9", "1.8"]  # each instance once
    assert [r.sop_instance_uid for r in images] == ["1.8"]


# -- negotiation -------------------------------------------------------------------


def test_relational_retrieval_is_accepted_and_multiframe_conversion_declined() -> None:
    asked = {STUDY_ROOT_MOVE: b"\x01\x01", STUDY_ROOT_GET: b"\x01", CT: b"\x01"}

    answers = negotiate_retrieve_options(asked)

    assert answers == {STUDY_ROOT_MOVE: b"\x01\x00", STUDY_ROOT_GET: b"\x01"}


def test_one_extended_negotiation_handler_answers_find_move_and_get() -> None:
    event = SimpleNamespace(
        app_info={STUDY_ROOT_FIND: b"\x01\x01\x01\x01", PATIENT_ROOT_MOVE: b"\x00"}
    )

    answers = on_sop_extended(event)

    assert answers[STUDY_ROOT_FIND] == b"\x01\x01\x01\x00"
    assert answers[PATIENT_ROOT_MOVE] == b"\x00"


# -- presentation contexts ---------------------------------------------------------


def _by_class(contexts: list[Any]) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = {}
    for cx in contexts:
        found.setdefault(str(cx.abstract_syntax), []).append([str(t) for t in cx.transfer_syntax])
    return found


def test_each_sop_class_gets_uncompressed_and_each_stored_syntax_its_own_context() -> None:
    items = [_item(CT, EXPLICIT), _item(CT, JPEG_LS), _item(CT, JPEG_LS), _item(MR, IMPLICIT)]

    contexts = _by_class(storage_contexts(items))

    transcoding = list(TRANSCODE_TARGETS)  # lossless targets, after the stored ones
    assert contexts[CT] == [[EXPLICIT, IMPLICIT], [JPEG_LS], transcoding]
    assert contexts[MR] == [[IMPLICIT, EXPLICIT], transcoding]  # the stored one first


def test_uncompressed_contexts_come_first_when_the_budget_runs_out() -> None:
    classes = [f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(100)]
    items = [_item(sop, ts) for sop in classes for ts in (JPEG_LS, J2K)]

    contexts = storage_contexts(items)

    assert len(contexts) == MAX_CONTEXTS
    assert set(_by_class(contexts)) == set(classes)


syntaxes = st.sampled_from([EXPLICIT, IMPLICIT, JPEG_LS, J2K, RLE])
classes = st.sampled_from([f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(1, 200)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(classes, syntaxes), min_size=1, max_size=400))
def test_contexts_cover_what_fits_in_128(pairs: list[tuple[str, str]]) -> None:
    contexts = storage_contexts(_item(sop, ts) for sop, ts in pairs)
    offered = _by_class(contexts)

    assert len(contexts) <= MAX_CONTEXTS
    sop_classes = {sop for sop, _ in pairs}
    if len(sop_classes) <= MAX_CONTEXTS:
        # Every SOP class can always go out uncompressed.
        assert all(sorted(offered[sop][0]) == sorted([EXPLICIT, IMPLICIT]) for sop in sop_classes)
    for sop, lists in offered.items():
        stored = [ts for ts in lists[1:] if ts != list(TRANSCODE_TARGETS)]
        assert all(len(ts) == 1 and (sop, ts[0]) in pairs for ts in stored)
        # The transcoding context comes last, after every stored syntax.
        assert list(TRANSCODE_TARGETS) not in lists[:-1]
    compressed = {p for p in pairs if p[1] not in (EXPLICIT, IMPLICIT)}
    if 2 * len(sop_classes) + len(compressed) <= 128:
        assert len(contexts) == 2 * len(sop_classes) + len(compressed)


# -- delivery --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "accepted", "expected"),
    [
        (JPEG_LS, {JPEG_LS, EXPLICIT}, Delivery.AS_STORED),
        (JPEG_LS, {EXPLICIT, IMPLICIT}, Delivery.EXPLICIT_LE),
        (JPEG_LS, {IMPLICIT}, Delivery.IMPLICIT_LE),
        (EXPLICIT, {IMPLICIT}, Delivery.IMPLICIT_LE),
        (IMPLICIT, {EXPLICIT, IMPLICIT}, Delivery.AS_STORED),
        (JPEG_LS, {J2K}, Delivery(J2K)),  # lossless to lossless: transcoded
        (JPEG_LS, {J2K, RLE}, Delivery(J2K)),  # the first of TRANSCODE_TARGETS
        (JPEG_LS, {"1.2.840.10008.1.2.4.50"}, None),  # never lossy over DIMSE
        (MPEG2, {J2K}, None),  # video: as stored only
        (JPEG_LS, set(), None),
    ],
)
def test_delivery_prefers_the_stored_syntax_then_explicit_then_implicit(
    stored: str, accepted: set[str], expected: Delivery | None
) -> None:
    assert choose_delivery(stored, accepted) == expected


def test_a_blob_file_goes_out_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "blob.dcm"
    path.write_bytes(part10_bytes(make_ct(rows=8, cols=8)))
    item = Outgoing(CT, "1.2", EXPLICIT, lambda: path.open("rb"))

    with part10_file(item, Delivery.AS_STORED, tmp_path / "spool") as sent:
        assert sent.path == path and sent.size == path.stat().st_size


def test_a_stream_without_a_file_is_spooled_and_removed(tmp_path: Path) -> None:
    data = part10_bytes(make_ct(rows=8, cols=8))
    item = _item(CT, EXPLICIT, data)

    with part10_file(item, Delivery.AS_STORED, tmp_path) as sent:
        assert sent.path.read_bytes() == data and sent.file.read() == data
    assert not sent.path.exists()


@pytest.mark.parametrize("delivery", [Delivery.EXPLICIT_LE, Delivery.IMPLICIT_LE])
def test_lossless_instances_are_decoded_pixel_exact(tmp_path: Path, delivery: Delivery) -> None:
    source = pydicom_file("MR_small_jpeg_ls_lossless.dcm")
    item = Outgoing(MR, "1.2", JPEG_LS, lambda: source.open("rb"))

    with part10_file(item, delivery, tmp_path) as sent:
        decoded = dcmread(sent.path)

    expected = EXPLICIT if delivery is Delivery.EXPLICIT_LE else IMPLICIT
    assert decoded.file_meta.TransferSyntaxUID == expected
    assert np.array_equal(decoded.pixel_array, dcmread(source).pixel_array)


def test_an_undecodable_instance_fails_its_sub_operation(tmp_path: Path) -> None:
    item = _item(MR, "1.2.840.10008.1.2.4.100", b"not DICOM at all")  # MPEG2: never decoded

    with pytest.raises(SubOperationFailed), part10_file(item, Delivery.EXPLICIT_LE, tmp_path):
        pass


def test_implicit_re_encoding_keeps_every_value() -> None:
    ds = make_ct(rows=16, cols=16, PatientName="Müller^Jürgen")
    explicit = part10_bytes(ds)

    implicit = dcmread(io.BytesIO(to_implicit_le(explicit)))

    assert implicit.file_meta.TransferSyntaxUID == IMPLICIT
    assert implicit.PatientName == "Müller^Jürgen"
    assert implicit.PixelData == ds.PixelData
    assert implicit.SOPInstanceUID == ds.SOPInstanceUID


def test_contexts_count_instances_per_class() -> None:
    items = [_item(CT, EXPLICIT)] * 3 + [_item(MR, EXPLICIT)]

    first = storage_contexts(items)[0]

    assert str(first.abstract_syntax) == CT  # busiest class first
    # Each class: uncompressed, then the transcoding context.
    assert Counter(str(cx.abstract_syntax) for cx in storage_contexts(items)) == {CT: 2, MR: 2}
