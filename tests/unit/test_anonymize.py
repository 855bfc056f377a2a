"""api.anonymize: the PS3.15 Annex E Basic Profile applied to pydicom datasets.

Checked against the profile's own table (every action, at the top level and
inside sequences), with hypothesis drawing which attributes an object carries
and what values they hold, plus the UID and de-identification rules.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from api.anonymize import (
    ACTIONS,
    BASIC_PROFILE_CODE,
    NotDeidentifiable,
    UidMap,
    anonymize,
)
from schemas.uids import is_uid
from tests.support import make_ct, part10_bytes

SALT = bytes(range(32))
# Table attributes pydicom knows, with a VR we can give a distinctive value.
_TEXT_VRS = {"AE", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"}
KNOWN = sorted(
    tag
    for tag in ACTIONS
    if dictionary_has_tag(tag) and (dictionary_VR(tag) in _TEXT_VRS | {"UI", "SQ"})
)
SECRET = {
    "AE": "SECRETAE",
    "CS": "SECRET",
    "DA": "20240229",
    "DS": "42.5",
    "DT": "20240229123456",
    "IS": "4242",
    "TM": "123456",
}


def secret_value(vr: str) -> Any:
    return SECRET.get(vr, "Secret^Ident")


def walk(ds: Dataset) -> Iterator[DataElement]:
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item)


def identified_ct() -> Dataset:
    """A CT with identifying content at the top level, nested, private and in overlays."""
    ds = make_ct(patient_name="Doe^Jane", patient_id="MRN-123456")
    ds.OtherPatientIDs = "OTHER-1"
    ds.PatientAddress = "1 Secret Street"
    ds.InstitutionName = "Secret Hospital"
    ds.PerformingPhysicianName = "Cutter^Kim"
    ds.ContentDate, ds.AcquisitionDateTime = "20240115", "20240115101500"
    ds.PatientAge = "054Y"
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = ds.SOPClassUID
    referenced.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = [referenced]
    request = Dataset()
    request.RequestedProcedureID = "RP-1"
    ds.RequestAttributesSequence = [request]
    ds.add_new(0x00091010, "LO", "CHRONICLE TEST")  # private creator
    ds.add_new(0x00091001, "LO", "private identifying value")
    ds.add_new(0x60000010, "US", 4)  # overlay rows
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 8)
    ds.add_new(0x00100000, "UL", 0)  # a retired group length
    return ds


def test_profile_actions_on_a_realistic_ct() -> None:
    ds = identified_ct()
    original = {
        "pixels": ds.PixelData,
        "study": ds.StudyInstanceUID,
        "sop": ds.SOPInstanceUID,
        "frame": ds.FrameOfReferenceUID,
    }
    anonymize(ds, UidMap(SALT))

    # X: gone; Z: present and empty; D: a dummy value
    for keyword in ("OtherPatientIDs", "PatientAddress", "PatientAge", "RequestAttributesSequence"):
        assert keyword not in ds, keyword
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber"):
        assert keyword in ds and not ds[keyword].value, keyword
    assert ds.PatientID == "ANONYMOUS"  # Z/D -> D: Type 1 in some IODs
    assert ds.InstitutionName == "ANONYMOUS"
    assert ds.ContentDate == "19000101"
    assert ds.AcquisitionDateTime == "19000101000000"
    assert "ReferringPhysicianName" in ds and not ds.ReferringPhysicianName
    assert "StudyDescription" not in ds and "SeriesDescription" not in ds
    # private data, overlays and retired group lengths removed
    assert not any(element.tag.is_private for element in walk(ds))
    assert not any(0x6000 <= element.tag.group <= 0x60FF for element in ds)
    assert Tag(0x00100000) not in ds
    # kept: pixels untouched and what describes them, the SOP class, the modality
    assert ds.PixelData == original["pixels"]
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.Modality) == (512, 512, 12, "CT")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert (ds.RescaleIntercept, ds.WindowCenter) == (-1024, 40)
    # U: replaced, consistently inside the object (the nested reference follows)
    assert ds.StudyInstanceUID != original["study"]
    assert ds.SOPInstanceUID != original["sop"]
    assert ds.FrameOfReferenceUID != original["frame"]
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.startswith("2.25.") and is_uid(uid, strict=True)
    # PS3.15 E.1.1: the object says what was done to it
    assert ds.PatientIdentityRemoved == "YES"
    assert "Basic Application Level Confidentiality Profile" in ds.DeidentificationMethod
    code = ds.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == BASIC_PROFILE_CODE


def test_uid_mapping_is_consistent_across_objects_and_secret_per_salt() -> None:
    first, second = make_ct(), make_ct()
    second.StudyInstanceUID = first.StudyInstanceUID
    study = first.StudyInstanceUID
    uids = UidMap(SALT)
    anonymize(first, uids)
    anonymize(second, UidMap(SALT))  # a new map with the same salt: the same answer
    assert first.StudyInstanceUID == second.StudyInstanceUID == uids.replaced[study]
    assert first.SOPInstanceUID != second.SOPInstanceUID
    other = make_ct(study_uid=study)
    anonymize(other, UidMap(bytes(reversed(SALT))))
    assert other.StudyInstanceUID != first.StudyInstanceUID
    with pytest.raises(ValueError, match="salt"):
        UidMap(b"short")


def test_burned_in_annotation_is_refused_without_changing_anything() -> None:
    ds = make_ct(BurnedInAnnotation="YES")
    before = ds.PatientName
    with pytest.raises(NotDeidentifiable, match="Burned In Annotation"):
        anonymize(ds, UidMap(SALT))
    assert ds.PatientName == before and "PatientIdentityRemoved" not in ds


@settings(max_examples=60, deadline=None)
@given(
    chosen=st.lists(st.sampled_from(KNOWN), min_size=1, max_size=25, unique=True),
    nested=st.booleans(),
)
def test_every_table_attribute_gets_its_action(chosen: list[int], nested: bool) -> None:
    """Whatever profile attributes an object carries, top level or inside a kept
    sequence, none keeps its identifying value."""
    ds = make_ct(rows=8, cols=8)
    holder = Dataset()
    target = holder if nested else ds
    if nested:
        ds.ReferencedSeriesSequence = [holder]  # not in the table: kept, items cleaned
    for tag in chosen:
        vr = dictionary_VR(tag)
        if vr == "SQ":
            item = Dataset()
            item.PatientName = "Secret^Nested"
            target.add_new(tag, vr, [item])
        elif vr == "UI":
            target.add_new(tag, vr, "1.2.3.4.5.6.7.8.9")
        else:
            target.add_new(tag, vr, secret_value(vr))
    anonymize(ds, UidMap(SALT))
    result = ds.ReferencedSeriesSequence[0] if nested else ds
    for tag in chosen:
        action = ACTIONS[tag]
        if action == "X":
            assert tag not in result
            continue
        element = result[tag]
        if action == "U" or element.VR == "UI":
            assert element.value != "1.2.3.4.5.6.7.8.9" and is_uid(str(element.value))
        elif element.VR == "SQ":
            # D and Z empty a sequence; U* keeps it but cleans its items.
            assert all("PatientName" not in i or not i.PatientName for i in element.value)
        elif action == "Z":
            assert not element.value
        else:
            assert element.value and element.value != secret_value(element.VR)


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_anonymized_pydicom_files_encode_with_pixels_untouched(name: str) -> None:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    ds = dcmread(path)
    pixels, syntax = ds.PixelData, ds.file_meta.TransferSyntaxUID
    anonymize(ds, UidMap(SALT))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    again = dcmread(io.BytesIO(out.getvalue()))
    assert again.PixelData == pixels
    assert again.file_meta.TransferSyntaxUID == syntax
    assert again.PatientIdentityRemoved == "YES"
    assert not again.get("PatientName")
    assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID


def test_part10_of_the_anonymized_ct_reads_back() -> None:
    ds = identified_ct()
    anonymize(ds, UidMap(SALT))
    again = dcmread(io.BytesIO(part10_bytes(ds)))
    assert again.PatientID == "ANONYMOUS" and again.ReferencedImageSequence
