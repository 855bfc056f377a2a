"""C-FIND responses encoded directly say exactly what the pydicom path says."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pynetdicom.dsutils import decode, encode

from api.dimse.find import build_response, requested_character_set
from api.dimse.find_encode import EncodedIdentifier, encode_response

#: (keyword, tag, VR) of study-level keys a viewer asks for.
KEYS = [
    ("StudyDate", 0x00080020, "DA"),
    ("AccessionNumber", 0x00080050, "SH"),
    ("ModalitiesInStudy", 0x00080061, "CS"),
    ("StudyDescription", 0x00081030, "LO"),
    ("PatientName", 0x00100010, "PN"),
    ("PatientID", 0x00100020, "LO"),
    ("StudyInstanceUID", 0x0020000D, "UI"),
    ("NumberOfStudyRelatedInstances", 0x00201208, "IS"),
    ("PatientWeight", 0x00101030, "DS"),
]
TEXTS = (
    st.text(
        alphabet=st.sampled_from(list("ABCXYZ abc019-éÉçøЖанДйЖ日本語山田")),
        min_size=1,
        max_size=12,
    )
    .map(str.strip)
    .filter(bool)
)
CHARSETS = [[], ["ISO_IR 100"], ["ISO_IR 144"], ["ISO_IR 192"], ["ISO_IR 6"]]


def _value(vr: str, draw: Any) -> Any:
    if vr == "PN":
        return {"Alphabetic": draw(TEXTS).replace("\\", "")}
    if vr in ("SH", "LO"):
        return draw(TEXTS)
    if vr == "IS":
        return draw(st.integers(0, 10**6))
    if vr == "DS":
        return draw(st.sampled_from([0.5, 72.0, 81.25, 100]))
    if vr == "DA":
        return draw(st.sampled_from(["20240101", "19991231"]))
    if vr == "CS":
        return draw(st.sampled_from(["CT", "MR", "US"]))
    return "1.2.840.99." + str(draw(st.integers(0, 10**9)))


@st.composite
def matches(draw: Any) -> tuple[dict[str, Any], list[str]]:
    match: dict[str, Any] = {}
    for _, tag, vr in KEYS:
        if draw(st.booleans()):
            count = 2 if vr == "CS" and draw(st.booleans()) else 1
            match[f"{tag:08X}"] = {"vr": vr, "Value": [_value(vr, draw) for _ in range(count)]}
    return match, draw(st.sampled_from(CHARSETS))


def _identifier(requested: list[str]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword, _, _ in KEYS:
        setattr(identifier, keyword, "")
    if requested:
        identifier.SpecificCharacterSet = requested[0]
    return identifier


def _received(encoded: bytes, implicit: bool) -> Dataset:
    ds = decode(BytesIO(encoded), implicit, True)
    ds.decode()
    return ds


@pytest.mark.parametrize("implicit", [True, False])
@settings(max_examples=150, deadline=None)
@given(case=matches())
def test_direct_encoding_reads_back_as_the_pydicom_response(
    case: tuple[dict[str, Any], list[str]], implicit: bool
) -> None:
    match, requested = case
    identifier = _identifier(requested)
    keys = [(int(e.tag), str(e.VR)) for e in identifier if e.keyword != "QueryRetrieveLevel"]
    keys = [k for k in keys if k[0] != 0x00080005]
    direct = encode_response(
        match,
        keys,
        level="STUDY",
        ae_title="CHRONICLE",
        requested=requested_character_set(identifier),
        implicit_vr=implicit,
    )
    reference = build_response(match, identifier, level="STUDY", ae_title="CHRONICLE")
    expected = _received(encode(reference, implicit, True) or b"", implicit)
    assert direct is not None, "study-level text answers take the direct path"
    got = _received(direct, implicit)
    assert [e.tag for e in got] == [e.tag for e in expected]
    for element in expected:
        assert got[element.tag].value == element.value, element.keyword


def test_sequences_and_code_extensions_take_the_general_path() -> None:
    sequence = {"00081110": {"vr": "SQ", "Value": [{}]}}
    keys = [(0x00081110, "SQ")]
    assert encode_response(sequence, keys, level="STUDY", ae_title="A", requested=[],
                           implicit_vr=False) is None  # fmt: skip
    name = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "山田^太郎"}]}}
    kanji = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert encode_response(name, [(0x00100010, "PN")], level="STUDY", ae_title="A",
                           requested=kanji, implicit_vr=False) is None  # fmt: skip


def test_an_encoded_identifier_refuses_another_syntax() -> None:
    identifier = EncodedIdentifier(b"\x08\x00\x52\x00CS\x06\x00STUDY ", implicit_vr=False)
    assert identifier.encoded_for(False, True, False) is not None
    assert identifier.encoded_for(True, True, False) is None
    assert identifier.encoded_for(False, True, True) is None
