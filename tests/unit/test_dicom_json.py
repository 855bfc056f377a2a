"""DICOM JSON (PS3.18 Annex F): exact values, round trips, agreement with pydicom."""

from __future__ import annotations

import base64
import struct
import tempfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import DSfloat

from infra.errors import Invalid
from ingest.parse import EXPLICIT_VR_LE, parse_dataset
from schemas.dicom_json import absolutize_bulk_uris, dataset_to_json
from schemas.dicom_json_decode import json_to_dataset


def _testdata(name: str) -> str:
    """Path of a pydicom test file (pydicom-data is installed)."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path


# ---------------------------------------------------------------- strategies
# Each strategy draws (VR, pydicom value, expected Annex F "Value" list or None).

_TEXT_CHARS = st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\\^=")


def _trimmed(alphabet: st.SearchStrategy[str], max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=1, max_size=max_size).map(str.strip).filter(bool)


_WORD = _trimmed(_TEXT_CHARS)
_PN_COMPONENT = st.text(st.characters(categories=["L"]), min_size=1, max_size=6)
_PATTERNS = {
    "AE": r"[A-Z][A-Z0-9_]{0,15}",
    "AS": r"[0-9]{3}[DWMY]",
    "CS": r"[A-Z0-9_]{1,16}",
    "DA": r"(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])",
    "TM": r"([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9](\.[0-9]{1,6})?",
    "DT": r"20[0-9]{2}(0[1-9]|1[0-2])[0-2][1-8][01][0-9][0-5][0-9]",
    "UI": r"[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,6}",
}
_STRUCT_RANGES: dict[str, st.SearchStrategy[Any]] = {
    "US": st.integers(0, 0xFFFF),
    "SS": st.integers(-0x8000, 0x7FFF),
    "UL": st.integers(0, 0xFFFFFFFF),
    "SL": st.integers(-(2**31), 2**31 - 1),
    "UV": st.integers(0, 2**64 - 1),
    "SV": st.integers(-(2**63), 2**63 - 1),
    "FL": st.floats(allow_nan=False, allow_infinity=False, width=32),
    "FD": st.floats(allow_nan=False, allow_infinity=False),
}
_BINARY_UNIT = {"OB": 2, "UN": 2, "OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


@st.composite
def _person_name(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    groups = [
        "^".join(draw(st.lists(_PN_COMPONENT, min_size=1, max_size=5)))
        if draw(st.booleans()) or i == 0
        else ""
        for i in range(draw(st.integers(1, 3)))
    ]
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return "=".join(groups), {names[i]: g for i, g in enumerate(groups) if g}


def _one_value(vr: str) -> st.SearchStrategy[tuple[Any, Any]]:
    """(pydicom value, JSON value) for a single value of `vr`."""
    if vr in _PATTERNS:
        return st.from_regex(_PATTERNS[vr], fullmatch=True).map(lambda s: (s, s))
    if vr in ("SH", "LO", "UC"):
        return _WORD.map(lambda s: (s, s))
    if vr == "PN":
        return _person_name()
    if vr == "IS":
        return st.integers(-(2**31), 2**31 - 1).map(lambda i: (i, i))
    if vr == "DS":
        floats = st.floats(-1e12, 1e12, allow_nan=False)
        return floats.map(lambda f: DSfloat(f, auto_format=True)).map(lambda d: (d, float(str(d))))
    if vr == "AT":
        return st.integers(0, 0xFFFFFFFF).map(lambda t: (t, f"{t:08X}"))
    if vr in ("UV", "SV"):
        return _STRUCT_RANGES[vr].map(lambda i: (i, i if abs(i) <= 2**53 - 1 else str(i)))
    return _STRUCT_RANGES[vr].map(lambda v: (v, v))


@st.composite
def _element(draw: st.DrawFn, depth: int) -> tuple[str, Any, dict[str, Any]]:
    choices = [*_PATTERNS, "SH", "LO", "UC", "PN", "IS", "DS", "AT", *_STRUCT_RANGES]
    choices += ["ST", "LT", "UT", "UR", *_BINARY_UNIT] + (["SQ"] if depth < 2 else [])
    vr = draw(st.sampled_from(choices))
    if vr == "SQ":
        items = draw(st.lists(_dataset(depth + 1), max_size=2))
        expected = {"vr": "SQ", "Value": [j for _, j in items]} if items else {"vr": "SQ"}
        return vr, Sequence([ds for ds, _ in items]), expected
    if vr in _BINARY_UNIT:
        unit = _BINARY_UNIT[vr]
        data = draw(st.binary(min_size=0, max_size=24).map(lambda b: b[: len(b) // unit * unit]))
        if not data:
            return vr, b"", {"vr": vr}
        return vr, data, {"vr": vr, "InlineBinary": base64.b64encode(data).decode()}
    if vr in ("ST", "LT", "UT"):
        text = draw(st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30))
        text = text.rstrip(" ")
        return vr, text, ({"vr": vr, "Value": [text]} if text else {"vr": vr})
    if vr == "UR":
        uri = draw(st.from_regex(r"https?://[a-z]{1,8}\.org/[a-z0-9/]{0,10}", fullmatch=True))
        return vr, uri, {"vr": vr, "Value": [uri]}
    pairs = draw(st.lists(_one_value(vr), min_size=0, max_size=3))
    if not pairs:
        return vr, (None if vr in _STRUCT_RANGES or vr in ("AT", "IS", "DS") else ""), {"vr": vr}
    values = [p for p, _ in pairs]
    return vr, values[0] if len(values) == 1 else values, {"vr": vr, "Value": [j for _, j in pairs]}


@st.composite
def _dataset(draw: st.DrawFn, depth: int = 0) -> tuple[Dataset, dict[str, Any]]:
    """Private elements (0009,10xx) of random VRs, in a UTF-8 dataset."""
    ds, expected = Dataset(), {}
    ds.add_new(0x00080005, "CS", "ISO_IR 192")
    expected["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    ds.add_new(0x00090010, "LO", "CHRONICLE TEST")
    expected["00090010"] = {"vr": "LO", "Value": ["CHRONICLE TEST"]}
    for i, (vr, value, json) in enumerate(draw(st.lists(_element(depth), max_size=8))):
        ds.add(DataElement(0x00091000 + i, vr, value))
        expected[f"{0x00091000 + i:08X}"] = json
    return ds, expected


_UIDS = {
    "00080016": "1.2.840.10008.5.1.4.1.1.7",
    "00080018": "1.2.3.4.5",
    "0020000D": "1.2.3.4",
    "0020000E": "1.2.3.4.6",
}


def _with_identity(ds: Dataset, expected: dict[str, Any]) -> dict[str, Any]:
    for key, uid in _UIDS.items():
        ds.add_new(int(key, 16), "UI", uid)
    return dict(
        sorted({**expected, **{k: {"vr": "UI", "Value": [v]} for k, v in _UIDS.items()}}.items())
    )


# ---------------------------------------------------------------- properties

_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_dataset())
def test_converted_elements_give_the_expected_json(drawn: tuple[Dataset, dict[str, Any]]) -> None:
    ds, expected = drawn
    assert dataset_to_json(ds) == expected


@_SETTINGS
@given(_dataset())
def test_json_to_dataset_round_trips(drawn: tuple[Dataset, dict[str, Any]]) -> None:
    _, expected = drawn
    assert dataset_to_json(json_to_dataset(expected)) == expected


@_SETTINGS
@given(_dataset())
def test_encoded_bytes_decode_to_the_same_json(drawn: tuple[Dataset, dict[str, Any]]) -> None:
    """The raw-bytes fast path (file walker) agrees with the converted-value path."""
    ds, expected = drawn
    expected = _with_identity(ds, expected)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ds"
        path.write_bytes(buffer.getvalue())
        assert parse_dataset(path, EXPLICIT_VR_LE).metadata == expected


# ---------------------------------------------------------------- agreement with pydicom

_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm"]
_CHARSET_FILES = sorted(get_charset_files("chr*.dcm"))
_STRIP_BOTH = {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "SH", "LO"}


def _as_pydicom_would_if_it_followed_our_rules(attrs: dict[str, Any]) -> dict[str, Any]:
    """pydicom's to_json_dict with the documented intentional differences applied:
    group lengths dropped; insignificant spaces stripped per PS3.5; empty values
    inside a multi-value are null; empty PN groups left out; no "Value" for an
    empty sequence."""
    out = {}
    for key, attr in attrs.items():
        if key.endswith("0000"):
            continue
        attr = dict(attr)
        vr, values = attr["vr"], attr.get("Value")
        if vr == "SQ" and values is not None:
            values = [_as_pydicom_would_if_it_followed_our_rules(item) for item in values]
        elif vr == "PN" and values is not None:
            values = [{g: t for g, t in (v or {}).items() if t} or None for v in values]
        elif vr in _STRIP_BOTH and values is not None:
            values = [(v.strip() if isinstance(v, str) else v) or None for v in values]
        elif values is not None:
            values = [None if v == "" else v for v in values]
        if values is not None:
            attr["Value"] = values
        if attr.get("Value") == []:
            del attr["Value"]
        out[key] = attr
    return out


def _without_binary(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        key: (
            {**attr, "Value": [_without_binary(i) for i in attr["Value"]]}
            if attr["vr"] == "SQ" and "Value" in attr
            else attr
        )
        for key, attr in attrs.items()
        if "InlineBinary" not in attr and "BulkDataURI" not in attr
    }


@pytest.mark.parametrize("path", [_testdata(n) for n in _FILES] + _CHARSET_FILES)
def test_agrees_with_pydicom_to_json_dict(path: str) -> None:
    ours = dataset_to_json(pydicom.dcmread(path))
    theirs = pydicom.dcmread(path).to_json_dict(bulk_data_threshold=1 << 30)
    assert _without_binary(ours) == _without_binary(
        _as_pydicom_would_if_it_followed_our_rules(theirs)
    )
    # binary values agree too (little endian files: InlineBinary bytes are identical)
    assert {k: v for k, v in ours.items() if "InlineBinary" in v} == {
        k: v for k, v in theirs.items() if "InlineBinary" in v
    }


def test_person_names_in_iso_2022_japanese() -> None:
    metadata = dataset_to_json(pydicom.dcmread(_charset_file("chrH32.dcm")))
    assert metadata["00100010"]["Value"] == [
        {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


def _charset_file(name: str) -> str:
    return next(p for p in _CHARSET_FILES if p.endswith(name))


# ---------------------------------------------------------------- encoding rules


def _json_of(*elements: tuple[int, str, Any], charset: str | None = None) -> dict[str, Any]:
    ds = Dataset()
    for tag, vr, value in elements:
        ds.add_new(tag, vr, value)
    return dataset_to_json(ds, default_charset=charset or "ISO_IR 100")


def test_numbers_strings_and_nulls() -> None:
    assert _json_of((0x00200013, "IS", "12"))["00200013"] == {"vr": "IS", "Value": [12]}
    ds = Dataset()
    ds.add(DataElement(0x00280030, "DS", "0.5\\\\2", already_converted=True))
    ds.add(DataElement(0x00181000, "IS", "abc", already_converted=True))
    ds.add_new(0x00080008, "CS", ["ORIGINAL ", "", " PRIMARY"])
    out = dataset_to_json(ds)
    assert out["00280030"] == {"vr": "DS", "Value": [0.5, None, 2.0]}
    assert out["00181000"] == {"vr": "IS", "Value": ["abc"]}  # not a number: kept as string
    assert out["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "PRIMARY"]}


def test_group_lengths_dropped_and_tags_sorted() -> None:
    out = _json_of((0x00100020, "LO", "P"), (0x00080000, "UL", 4), (0x00080060, "CS", "CT"))
    assert list(out) == ["00080060", "00100020"]


def test_empty_values_have_no_value_key() -> None:
    out = _json_of((0x00100010, "PN", ""), (0x00081140, "SQ", []), (0x00280010, "US", None))
    assert out == {"00081140": {"vr": "SQ"}, "00100010": {"vr": "PN"}, "00280010": {"vr": "US"}}


def test_big_64_bit_integers_stay_strings() -> None:
    out = _json_of((0x00091001, "UV", [1, 2**60]), (0x00091000 + 2, "SV", -(2**60)))
    assert out["00091001"]["Value"] == [1, str(2**60)]
    assert out["00091002"]["Value"] == [str(-(2**60))]


def test_bulk_elements_become_relative_uris_at_blob_offsets() -> None:
    path = _testdata("CT_small.dcm")
    ds = pydicom.dcmread(path, defer_size=1024)
    start = 1000  # pretend the dataset starts at file offset 1000, the blob's at 300
    out = dataset_to_json(ds, bulk_offset_base=300, dataset_start=start)
    uri = out["7FE00010"]["BulkDataURI"]
    offset, length = (int(x) for x in uri.removeprefix("bulkdata/").split("-"))
    position = offset - 300 + start
    assert Path(path).read_bytes()[position : position + length] == ds.PixelData
    inline = dataset_to_json(pydicom.dcmread(path))["7FE00010"]
    assert base64.b64decode(inline["InlineBinary"]) == ds.PixelData


def _raw_dataset(*elements: tuple[int, str, bytes]) -> Dataset:
    """A dataset as read from a file: RawDataElements holding the encoded bytes."""
    return Dataset(
        {
            BaseTag(tag): RawDataElement(BaseTag(tag), vr, len(v), v, 0, False, True)
            for tag, vr, v in elements
        }
    )


def test_bad_bytes_fall_back_to_the_default_charset_and_are_noted() -> None:
    notes: list[str] = []
    raw = _raw_dataset((0x00080005, "CS", b"ISO_IR 192"), (0x00100010, "PN", b"M\xfcller^Hans"))
    out = dataset_to_json(raw, notes=notes)
    assert out["00100010"]["Value"] == [{"Alphabetic": "Müller^Hans"}]
    assert notes and "(0010,0010)" in notes[0]


def test_bytes_invalid_in_every_charset_are_replaced_and_noted() -> None:
    notes: list[str] = []
    raw = _raw_dataset((0x00080005, "CS", b"ISO_IR 192"), (0x00100020, "LO", b"A\xff"))
    out = dataset_to_json(raw, notes=notes, default_charset="ISO_IR 192")
    assert out["00100020"]["Value"] == ["A\ufffd"]
    assert notes and "replaced" in notes[0]


def test_unknown_charset_uses_the_default_and_is_noted() -> None:
    notes: list[str] = []
    raw = _raw_dataset((0x00080005, "CS", b"ISO_IR 999"), (0x00100020, "LO", b"\xe9t\xe9 "))
    out = dataset_to_json(raw, notes=notes, default_charset="ISO_IR 100")
    assert out["00100020"]["Value"] == ["été"]
    assert any("ISO_IR 999" in n for n in notes)


def test_missing_charset_uses_the_default() -> None:
    raw = _raw_dataset((0x00100020, "LO", b"\xe9t\xe9 "))
    assert dataset_to_json(raw)["00100020"]["Value"] == ["été"]
    assert dataset_to_json(raw, default_charset="ISO_IR 144")["00100020"]["Value"] == ["щtщ"]


def test_big_endian_inline_binary_is_little_endian() -> None:
    little = dataset_to_json(pydicom.dcmread(_testdata("MR_small.dcm")))
    big = dataset_to_json(pydicom.dcmread(_testdata("MR_small_bigendian.dcm")))
    assert big["7FE00010"] == little["7FE00010"]


def test_json_to_dataset_resolves_bulk_uris_through_the_loader() -> None:
    obj = {"7FE00010": {"vr": "OW", "BulkDataURI": "bulkdata/10-4"}}
    assert json_to_dataset(obj, bulk_loader=lambda uri: b"\x01\x02\x03\x04").PixelData == (
        b"\x01\x02\x03\x04"
    )
    assert json_to_dataset(obj)[0x7FE00010].value in (b"", None)


@pytest.mark.parametrize(
    "bad",
    [
        {"0010": {"vr": "PN"}},
        {"00100010": {}},
        {"00100010": {"vr": "PN", "Value": "x"}},
        {"00280010": {"vr": "US", "Value": ["x"]}},
        {"7FE00010": {"vr": "OB", "InlineBinary": "*"}},
    ],
)
def test_json_to_dataset_rejects_malformed_json(bad: dict[str, Any]) -> None:
    with pytest.raises(Invalid):
        json_to_dataset(bad)


def test_absolutize_bulk_uris_recurses_into_sequences() -> None:
    obj: dict[str, Any] = {
        "00089121": {
            "vr": "SQ",
            "Value": [{"00091010": {"vr": "OB", "BulkDataURI": "bulkdata/1-2"}}],
        },
        "7FE00010": {"vr": "OB", "BulkDataURI": "bulkdata/3-4"},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "A"}]},
    }
    out = absolutize_bulk_uris(obj, "http://h/dicomweb/studies/1/series/2/instances/3/")
    base = "http://h/dicomweb/studies/1/series/2/instances/3"
    assert out["7FE00010"]["BulkDataURI"] == f"{base}/bulkdata/3-4"
    assert out["00089121"]["Value"][0]["00091010"]["BulkDataURI"] == f"{base}/bulkdata/1-2"
    assert obj["7FE00010"]["BulkDataURI"] == "bulkdata/3-4"  # input untouched


def test_implicit_and_big_endian_files_give_the_same_metadata_as_explicit() -> None:
    def values(name: str) -> dict[str, Any]:
        out = dataset_to_json(pydicom.dcmread(_testdata(name)))
        return _without_binary(out)

    assert values("MR_small_implicit.dcm") == values("MR_small.dcm")
    assert values("MR_small_bigendian.dcm") == values("MR_small.dcm")


def test_float_values_are_exact() -> None:
    value = struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert _json_of((0x00189087, "FD", 0.1))["00189087"]["Value"] == [0.1]
    assert _json_of((0x00091001, "FL", value))["00091001"]["Value"] == [value]


def test_misspelled_charset_terms_are_corrected_and_noted() -> None:
    notes: list[str] = []
    raw = _raw_dataset((0x00080005, "CS", b"ISO IR 144"), (0x00100020, "LO", b"\xe9t\xe9 "))
    assert dataset_to_json(raw, notes=notes)["00100020"]["Value"] == ["щtщ"]
    assert notes == ["Specific Character Set 'ISO IR 144' read as 'ISO_IR 144'"]
