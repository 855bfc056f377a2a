"""Character sets of C-FIND (api.dimse.find) and the default character set at ingest.

Requests are decoded as ingest decodes stored data (declared set, else the
configured default; invalid bytes fall back to the default). Responses are
encoded in the request's character set when every value fits it, else in
ISO_IR 192 -- checked here on the bytes pynetdicom would put on the wire.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.data import get_charset_files
from pydicom.dataelem import RawDataElement
from pynetdicom import service_class  # type: ignore[attr-defined]
from pynetdicom.dsutils import decode, encode

import api.dimse.find as find_module
from api import matching
from api.dimse.ae import STUDY_ROOT_FIND
from api.dimse.find import (
    UTF8,
    FindHandler,
    build_response,
    decode_identifier,
    fits,
    requested_character_set,
    response_character_set,
)
from api.dimse.find_encode import install_encoded_identifiers
from infra.factory import open_blob_store, open_event_log
from infra.settings import Settings
from ingest.service import IngestService
from schemas.dicom_json import dataset_to_json
from schemas.events import Source
from tests.support import make_ct, write_part10

JIS = ["", "ISO 2022 IR 87"]
JIS_13 = ["ISO 2022 IR 13", "ISO 2022 IR 87"]
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def _response(name: str, description: str = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    if description:
        ds.StudyDescription = description
    return ds


def _identifier(charset: list[str] | str | None = None, name: str = "*") -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = name
    ds.StudyDescription = ""
    return ds


def _on_the_wire(ds: Dataset) -> Dataset:
    """What the peer receives: encoded as pynetdicom encodes, decoded afresh (raw)."""
    return decode(BytesIO(encode(ds, True, True) or b""), True, True)


def _raw(ds: Dataset, keyword: str) -> bytes:
    """The bytes of a value as sent, from a fresh decode (pydicom converts in place)."""
    value = _on_the_wire(ds).get_item(keyword).value
    assert isinstance(value, bytes)
    return value.rstrip(b" ")


# ---------------------------------------------------------------- the request's set


@pytest.mark.parametrize(
    ("charset", "terms"),
    [
        (None, []),
        ("", []),
        ("ISO_IR 100", ["ISO_IR 100"]),
        (JIS, JIS),
        (["ISO 2022 IR 13", "ISO 2022 IR 87"], ["ISO 2022 IR 13", "ISO 2022 IR 87"]),
    ],
)
def test_requested_character_set(charset: Any, terms: list[str]) -> None:
    assert requested_character_set(_identifier(charset)) == terms
    assert requested_character_set(_on_the_wire(_identifier(charset))) == terms


# ---------------------------------------------------------------- the response's set


@pytest.mark.parametrize(
    ("requested", "name", "answered"),
    [
        ([], "Doe^Jane", []),
        (["ISO_IR 100"], "Doe^Jane", ["ISO_IR 100"]),
        (JIS, "Doe^Jane", JIS),
        ([], "Gérard^Dépardieu", [UTF8]),
        (["ISO_IR 100"], "Gérard^Dépardieu", ["ISO_IR 100"]),
        (["ISO_IR 101"], "Gérard^Dépardieu", ["ISO_IR 101"]),  # é is in Latin-2 too
        (["ISO_IR 144"], "Gérard^Dépardieu", [UTF8]),
        (["ISO_IR 100"], "Dœ^Jane", [UTF8]),  # œ is not Latin-1
        (["ISO_IR 144"], "Люкceмбypг", ["ISO_IR 144"]),
        (JIS, JAPANESE, JIS),
        (JIS, "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", [UTF8]),  # half-width katakana need ISO 2022 IR 13
        (
            ["ISO 2022 IR 13", "ISO 2022 IR 87"],
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎",
            ["ISO 2022 IR 13", "ISO 2022 IR 87"],
        ),
        # ISO IR 6 is ASCII: pydicom would write é unescaped with its Latin-1 stand-in.
        (JIS, "Gérard=山田", [UTF8]),
        (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", ["", "ISO 2022 IR 149"]),
        (["GB18030"], "Wang^XiaoDong=王^小东", ["GB18030"]),
        (JIS, "Wang^XiaoDong=王^小东", [UTF8]),  # 东 (simplified) is not in JIS X 0208
        ([UTF8], "Wang^XiaoDong=王^小东", [UTF8]),
        (["ISO_IR 999"], "Gérard", [UTF8]),  # never echo a set we cannot write
        (["ISO_IR 192", "ISO 2022 IR 87"], "山田", [UTF8]),  # stand-alone sets take no others
    ],
)
def test_response_character_set(requested: list[str], name: str, answered: list[str]) -> None:
    assert response_character_set(requested, _response(name)) == answered


def test_values_in_sequences_count() -> None:
    response = _response("Doe^Jane")
    item = Dataset()
    item.CodeMeaning = "Épaule"
    response.ProcedureCodeSequence = [item]
    assert response_character_set(["ISO_IR 100"], response) == ["ISO_IR 100"]
    assert response_character_set([], response) == [UTF8]
    item.CodeMeaning = "肩"
    assert response_character_set(["ISO_IR 100"], response) == [UTF8]


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_non_ascii_outside_text_vrs_never_fits() -> None:
    response = _response("Doe^Jane")
    response.add_new(0x00080060, "CS", "É")  # CS is ASCII in every character set
    assert response_character_set(["ISO_IR 100"], response) == [UTF8]


def test_fits_leaves_the_response_unencoded() -> None:
    """pydicom's PersonName keeps the bytes of its first encoding: checking must
    not encode the response itself, or a later UTF-8 answer would carry Latin-1."""
    response = _response("Gérard^Dépardieu")
    assert fits(response, ["ISO_IR 100"])
    response.SpecificCharacterSet = UTF8
    assert _raw(response, "PatientName") == "Gérard^Dépardieu".encode()


# ---------------------------------------------------------------- on the wire

_STANDARD_H31 = get_charset_files("chrH31.dcm")[0]


def test_japanese_answer_is_the_standard_iso_2022_ir_87_encoding() -> None:
    """PS3.5 H.3.1 (chrH31.dcm): stored, projected to Unicode, asked for in ISO 2022
    IR 87, the answer carries the example's exact bytes, escape sequences included."""
    match = dataset_to_json(pydicom.dcmread(_STANDARD_H31))

    response = build_response(match, _identifier(JIS, "山田^太郎"), level="STUDY", ae_title="A")
    sent = _on_the_wire(response)

    standard = pydicom.dcmread(_STANDARD_H31)
    assert list(sent.SpecificCharacterSet) == JIS
    assert _raw(response, "PatientName") == _raw(standard, "PatientName")
    assert str(sent.PatientName) == JAPANESE


def test_the_same_match_in_another_request_set_is_answered_in_utf8() -> None:
    match = dataset_to_json(pydicom.dcmread(_STANDARD_H31))

    response = build_response(match, _identifier("ISO_IR 100"), level="STUDY", ae_title="A")
    sent = _on_the_wire(response)

    assert sent.SpecificCharacterSet == UTF8
    assert _raw(response, "PatientName") == JAPANESE.encode()


#: Characters from the repertoires in play: ASCII, Latin-1, Latin-2, Cyrillic,
#: JIS X 0201 katakana, JIS X 0208 kana and kanji, Hangul, simplified Chinese.
_ALPHABET = "AZaz09 .-éüßœŁńЖя" + "ｱﾀﾞﾛ" + "あやまだ山田東太郎" + "홍길동" + "东小"
_REQUESTS = [
    [],
    ["ISO_IR 100"],
    ["ISO_IR 101"],
    ["ISO_IR 144"],
    JIS,
    ["ISO 2022 IR 6", "ISO 2022 IR 87"],
    ["ISO 2022 IR 13", "ISO 2022 IR 87"],
    ["", "ISO 2022 IR 149"],
    [UTF8],
    ["GB18030"],
]
_COMPONENT = st.text(alphabet=_ALPHABET, max_size=6).map(str.strip)


@settings(max_examples=300, deadline=None)
@given(
    requested=st.sampled_from(_REQUESTS),
    groups=st.lists(st.lists(_COMPONENT, min_size=1, max_size=3), min_size=1, max_size=3),
    description=st.text(alphabet=_ALPHABET, min_size=1, max_size=10).map(str.strip),
)
def test_every_answer_reads_back_exactly_in_the_set_it_declares(
    requested: list[str], groups: list[list[str]], description: str
) -> None:
    name = "=".join("^".join(group) for group in groups).rstrip("=^")
    response = _response(name or "X", description or "X")
    answered = response_character_set(requested, response)
    if answered:
        response.SpecificCharacterSet = answered if len(answered) > 1 else answered[0]

    sent = _on_the_wire(response)

    assert str(sent.PatientName) == str(response.PatientName)
    assert sent.StudyDescription == response.StudyDescription
    assert answered in (requested, [UTF8])
    if all(c.isascii() for c in name + description):
        assert answered == requested
    if answered == requested and requested in (JIS, ["ISO 2022 IR 6", "ISO 2022 IR 87"]):
        # ASCII and JIS X 0208 both live in G0: 7-bit bytes only, escapes do the rest.
        assert _raw(response, "PatientName").isascii()
        assert _raw(response, "StudyDescription").isascii()
    if requested in (["ISO_IR 100"], ["ISO_IR 144"]):
        single = {"ISO_IR 100": "latin-1", "ISO_IR 144": "iso8859_5"}[requested[0]]
        try:
            (name + description).encode(single)
        except UnicodeEncodeError:
            assert answered == [UTF8]
        else:
            assert answered == requested


# ---------------------------------------------------------------- decoding requests


def _received(identifier: Dataset, declared_instead: bytes | None = None) -> Dataset:
    """The identifier as the SCP gets it: raw elements, decoded on demand."""
    data = encode(identifier, True, True) or b""
    if declared_instead is not None:
        data = data.replace(str(identifier.SpecificCharacterSet).encode(), declared_instead)
    received = decode(BytesIO(data), True, True)
    assert all(isinstance(e, RawDataElement) for e in received._dict.values())
    return received


def test_a_request_without_character_set_is_read_in_the_default() -> None:
    request = _received(_identifier(None, "Bérénice*"))  # pydicom writes Latin-1 bytes

    assert decode_identifier(request, "ISO_IR 100") == []
    assert str(request.PatientName) == "Bérénice*"
    assert str(_received(_identifier(None, "Bérénice*")).PatientName) == "Bérénice*"

    other = _received(_identifier(None, "Bérénice*"))
    decode_identifier(other, "ISO_IR 144")
    assert str(other.PatientName) == "Bérénice*".encode("latin-1").decode("iso8859_5")


def test_bytes_invalid_in_the_declared_set_fall_back_to_the_default() -> None:
    request = _received(_identifier("ISO_IR 100", "Noël*"), declared_instead=b"ISO_IR 192")
    assert request.SpecificCharacterSet == UTF8

    notes = decode_identifier(request, "ISO_IR 100")

    assert str(request.PatientName) == "Noël*"
    assert notes == ["(0010,0010): not valid ISO_IR 192, decoded as ISO_IR 100"]


def test_iso_2022_requests_are_decoded_and_ascii_ones_left_alone() -> None:
    japanese = _received(_identifier(JIS, "=山田^太郎"))
    plain = _received(_identifier("ISO_IR 100", "Doe*"))

    assert decode_identifier(japanese, "ISO_IR 100") == []
    assert decode_identifier(plain, "ISO_IR 100") == []

    assert str(japanese.PatientName) == "=山田^太郎"
    assert isinstance(plain.get_item(0x00100010), RawDataElement)
    query = matching.query_from_identifier(japanese, model="STUDY")
    assert [(m.keyword, m.value) for m in query.matches] == [("PatientName", "=山田^太郎")]


def test_multi_valued_text_is_split_after_decoding() -> None:
    identifier = _identifier("ISO_IR 100")
    identifier.StudyDescription = ["Épaule", "Genou"]
    request = _received(identifier, declared_instead=b"ISO_IR 192")

    decode_identifier(request, "ISO_IR 100")

    assert list(request.StudyDescription) == ["Épaule", "Genou"]


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        "1.2.840.10008.1.2",  # encoded directly (api.dimse.find_encode)
        "1.2.840.10008.1.2.1",  # encoded directly (api.dimse.find_encode)
        "1.2.840.10008.1.2.1.99",  # through pydicom
    ],
)
def test_find_handler_decodes_with_the_configured_default_and_answers_in_utf8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transfer_syntax: str
) -> None:
    seen: list[Any] = []

    def search_page(index: Any, query: Any) -> matching.Page:
        seen.append(query)
        name = {"vr": "PN", "Value": [{"Alphabetic": "Жанна^Д"}]}
        return matching.Page(
            [{"00100010": name, "0020000D": {"vr": "UI", "Value": ["1.2"]}}], False
        )

    monkeypatch.setattr(matching, "search_page", search_page)
    archive = SimpleNamespace(
        settings=Settings(data_dir=tmp_path, default_character_set="ISO_IR 144"),
        index=None,
        read_barrier=lambda: True,
    )
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientName = "Жанна*"
    identifier.SpecificCharacterSet = "ISO_IR 144"
    request = _received(identifier)
    del request.SpecificCharacterSet  # no declaration: the configured default applies
    event = SimpleNamespace(
        identifier=request,
        context=SimpleNamespace(abstract_syntax=STUDY_ROOT_FIND, transfer_syntax=transfer_syntax),
        assoc=SimpleNamespace(
            requestor=SimpleNamespace(ae_title="PEER"),
            acceptor=SimpleNamespace(sop_class_extended={}),
        ),
        is_cancelled=False,
    )

    answers = list(FindHandler(archive)(event))

    assert [m.value for m in seen[0].matches] == ["Жанна*"]
    [(status, response)] = answers
    assert status == find_module.PENDING and response is not None
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    install_encoded_identifiers()
    wire = service_class.encode(response, implicit, True, False)
    received = decode(BytesIO(wire or b""), implicit, True)
    # The request named no set (ASCII): a Cyrillic answer goes out in UTF-8.
    assert received.SpecificCharacterSet == UTF8
    assert str(received.PatientName) == "Жанна^Д"
    assert received.QueryRetrieveLevel == "STUDY" and received.StudyInstanceUID == "1.2"


# ---------------------------------------------------------------- ingest's default


@pytest.mark.parametrize(
    ("default", "expected"), [("ISO_IR 100", "Bérénice^Dupré"), ("ISO_IR 144", None)]
)
def test_ingest_reads_undeclared_text_in_the_configured_default(
    tmp_path: Path, default: str, expected: str | None
) -> None:
    ds = make_ct(rows=4, cols=4, patient_name="Bérénice^Dupré")
    del ds.SpecificCharacterSet  # pydicom writes the name in Latin-1, undeclared
    path = write_part10(ds, tmp_path / "undeclared.dcm")
    log = open_event_log(f"sqlite:///{tmp_path / 'log.db'}")
    blobs = open_blob_store(f"file:///{tmp_path / 'blobs'}")
    service = IngestService(log, blobs, default_charset=default)

    outcome = service.store_part10_file(path, source=Source("DIMSE"))

    name = outcome.event.metadata["00100010"]["Value"][0]["Alphabetic"]
    latin1 = "Bérénice^Dupré".encode("latin-1")
    assert name == (expected or latin1.decode("iso8859_5"))
