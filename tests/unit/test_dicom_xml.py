"""PS3.19 Native DICOM Model: shape, round trips with DICOM JSON, safe parsing."""

from __future__ import annotations

import base64
import shutil
import subprocess
from typing import Any
from xml.etree import ElementTree

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from infra.errors import Invalid
from schemas.dicom_json import dataset_to_json
from schemas.dicom_xml import NAMESPACE, json_to_xml, xml_to_json


def _testdata(name: str) -> str:
    """Path of a pydicom test file (pydicom-data is installed)."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path


NS = {"n": NAMESPACE}

# ---------------------------------------------------------------- JSON strategies (Annex F)

_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\\"), max_size=12)
_STRING_VRS = ["AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"]
_COMPONENT = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="^=\\"),
    min_size=1,
    max_size=6,
)


def _xml_safe(text: str) -> bool:
    """Characters XML 1.0 can carry (C0 controls other than tab, LF, CR cannot)."""
    return (
        all(c in "\t\n\r" or ord(c) >= 32 for c in text)
        and "\ufffe" not in text
        and "\uffff" not in text
    )


_SAFE_TEXT = _TEXT.filter(bool).filter(_xml_safe)
_PERSON_NAME = st.fixed_dictionaries(
    {},
    optional={
        g: st.lists(_COMPONENT, min_size=1, max_size=5).map("^".join)
        for g in ("Alphabetic", "Ideographic", "Phonetic")
    },
).map(lambda d: d or None)


def _values(vr: str) -> st.SearchStrategy[Any]:
    if vr == "PN":
        return _PERSON_NAME
    if vr in ("US", "UL", "SS", "SL", "IS"):
        return st.integers(-(2**31), 2**31 - 1)
    if vr in ("UV", "SV"):
        return st.integers(-(2**63), 2**64 - 1).map(lambda i: i if abs(i) <= 2**53 - 1 else str(i))
    if vr in ("FL", "FD", "DS"):
        return st.floats(allow_nan=False, allow_infinity=False)
    if vr == "AT":
        return st.integers(0, 0xFFFFFFFF).map(lambda t: f"{t:08X}")
    return _SAFE_TEXT


def _attribute(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    vrs = [*_STRING_VRS, "PN", "US", "UL", "SS", "SL", "IS", "UV", "SV", "FL", "FD", "DS", "AT"]
    plain = st.sampled_from(vrs).flatmap(
        lambda vr: st.lists(st.one_of(st.none(), _values(vr)), max_size=3).map(
            lambda vs: {"vr": vr, "Value": vs} if any(v is not None for v in vs) else {"vr": vr}
        )
    )
    binary = st.sampled_from(["OB", "OW", "UN"]).flatmap(
        lambda vr: st.one_of(
            st.binary(min_size=1, max_size=16).map(
                lambda b: {"vr": vr, "InlineBinary": base64.b64encode(b).decode()}
            ),
            st.integers(0, 10**9).map(lambda o: {"vr": vr, "BulkDataURI": f"bulkdata/{o}-2"}),
        )
    )
    options = [plain, binary]
    if depth < 2:
        options.append(
            st.lists(st.one_of(_dataset(depth + 1), st.just({})), max_size=2).map(
                lambda items: {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            )
        )
    return st.one_of(options)


def _dataset(depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    keys = (
        st.integers(0x00080000, 0x7FE0FFFF).filter(lambda t: t & 0xFFFF).map(lambda t: f"{t:08X}")
    )
    return st.dictionaries(keys, _attribute(depth), max_size=6).map(
        lambda d: dict(sorted(d.items()))
    )


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dataset())
def test_json_xml_json_round_trip(obj: dict[str, Any]) -> None:
    assert xml_to_json(json_to_xml(obj)) == obj


# ---------------------------------------------------------------- shape


def test_native_dicom_model_shape() -> None:
    obj = {
        "00100010": {
            "vr": "PN",
            "Value": [{"Alphabetic": "Doe^Jane^^Dr", "Ideographic": "山田^太郎"}],
        },
        "00280030": {"vr": "DS", "Value": [0.5, None, 2.0]},
        "00091010": {"vr": "LO", "Value": ["private"]},
        "00090010": {"vr": "LO", "Value": ["ACME 1.0"]},
        "00081140": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}, {}]},
        "7FE00010": {"vr": "OB", "BulkDataURI": "bulkdata/100-20"},
        "00291001": {"vr": "OB", "InlineBinary": "AAEC"},
        "00100020": {"vr": "LO"},
    }
    root = ElementTree.fromstring(json_to_xml(obj))
    assert root.tag == f"{{{NAMESPACE}}}NativeDicomModel"
    tags = [a.get("tag") for a in root.findall("n:DicomAttribute", NS)]
    assert tags == sorted(obj)
    name = root.find("n:DicomAttribute[@tag='00100010']", NS)
    assert name is not None and name.get("keyword") == "PatientName" and name.get("vr") == "PN"
    alphabetic = name.find("n:PersonName[@number='1']/n:Alphabetic", NS)
    assert alphabetic is not None
    assert [(c.tag.split("}")[1], c.text) for c in alphabetic] == [
        ("FamilyName", "Doe"),
        ("GivenName", "Jane"),
        ("NamePrefix", "Dr"),
    ]
    spacing = root.find("n:DicomAttribute[@tag='00280030']", NS)
    assert spacing is not None
    assert [(v.get("number"), v.text) for v in spacing] == [("1", "0.5"), ("2", None), ("3", "2.0")]
    private = root.find("n:DicomAttribute[@tag='00091010']", NS)
    assert private is not None and private.get("privateCreator") == "ACME 1.0"
    assert private.get("keyword") is None
    pixel = root.find("n:DicomAttribute[@tag='7FE00010']/n:BulkData", NS)
    assert pixel is not None and pixel.get("uri") == "bulkdata/100-20"
    items = root.findall("n:DicomAttribute[@tag='00081140']/n:Item", NS)
    assert [i.get("number") for i in items] == ["1", "2"]
    assert xml_to_json(json_to_xml(obj)) == dict(sorted(obj.items()))


def test_carriage_returns_and_markup_survive() -> None:
    obj = {
        "00081030": {"vr": "LO", "Value": ["a<b>&c"]},
        "00204000": {"vr": "LT", "Value": ["x\r\ny\rz"]},
    }
    assert xml_to_json(json_to_xml(obj)) == obj


def test_reads_dcmtk_native_model_output() -> None:
    """dcmtk's dcm2xml writes the Native DICOM Model too (no namespace, base64 binary)."""
    dcm2xml = shutil.which("dcm2xml")
    assert dcm2xml is not None, "dcmtk is part of the test environment"
    path = _testdata("MR_small.dcm")
    xml = subprocess.run(
        [dcm2xml, "--native-format", "--encode-base64", path], check=True, capture_output=True
    ).stdout
    theirs = {k: v for k, v in xml_to_json(xml).items() if not k.startswith("0002")}
    ours = dataset_to_json(pydicom.dcmread(path))
    # dcmtk 3.6.7 writes OW words big endian in base64; Annex F/PS3.19 bytes are little endian
    assert theirs.pop("7FE00010")["vr"] == ours.pop("7FE00010")["vr"] == "OW"
    assert theirs == ours


# ---------------------------------------------------------------- safety

_XXE = b"""<?xml version="1.0"?>
<!DOCTYPE NativeDicomModel [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<NativeDicomModel><DicomAttribute tag="00100010" vr="LO"><Value number="1">&xxe;</Value>
</DicomAttribute></NativeDicomModel>"""
_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<NativeDicomModel>&lol2;</NativeDicomModel>"""


@pytest.mark.parametrize(
    "data",
    [
        _XXE,
        _LAUGHS,
        b"<NativeDicomModel>&undefined;</NativeDicomModel>",
        b"<oops",
        b"<Other/>",
        b'<NativeDicomModel><DicomAttribute tag="zz" vr="LO"/></NativeDicomModel>',
        b'<NativeDicomModel><DicomAttribute tag="00100010" vr="LO">'
        b'<Value number="x">a</Value></DicomAttribute></NativeDicomModel>',
    ],
)
def test_refuses_doctype_entities_and_malformed_documents(data: bytes) -> None:
    with pytest.raises(Invalid):
        xml_to_json(data)
