"""STOW-RS metadata + bulk data requests made into Part-10 files (api.stow_metadata).

Pure: spooled parts in a temporary folder in, a Part-10 file out, read back
with pydicom and with the ingest parser that will store it.
"""

from __future__ import annotations

import base64
import struct
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import EncapsulatedPDFStorage, generate_uid

from api.stow_metadata import (
    MalformedMetadata,
    MetadataInstance,
    assemble_part10,
    read_request,
)
from api.stow_response import Failed
from infra.errors import Invalid
from ingest.multipart import Part
from ingest.parse import parse_part10
from schemas.dicom_json import JSON, dataset_to_json
from schemas.dicom_xml import json_to_xml
from tests.support import dataset_bytes, make_ct, part10_bytes, pydicom_file

BASE = "http://archive.example/dicomweb/studies"
JSON_TYPE = "application/dicom+json"
XML_TYPE = "application/dicom+xml"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def _parts(folder: Path, *specs: tuple[dict[str, str], bytes]) -> list[Part]:
    parts = []
    for number, (headers, body) in enumerate(specs, start=1):
        path = folder / f"part-{number:05d}"
        path.write_bytes(body)
        parts.append(Part({k.lower(): v for k, v in headers.items()}, path, len(body)))
    return parts


def _identity(sop_class: str = EncapsulatedPDFStorage) -> JSON:
    return {
        "00080016": {"vr": "UI", "Value": [sop_class]},
        "00080018": {"vr": "UI", "Value": [generate_uid()]},
        "0020000D": {"vr": "UI", "Value": [generate_uid()]},
        "0020000E": {"vr": "UI", "Value": [generate_uid()]},
        "00100020": {"vr": "LO", "Value": ["PID-1"]},
    }


def _assemble(tmp_path: Path, *specs: tuple[dict[str, str], bytes]) -> tuple[Path, str]:
    request = read_request(_parts(tmp_path, *specs), JSON_TYPE, BASE)
    [instance] = [item for item in request.items if isinstance(item, MetadataInstance)]
    target = tmp_path / "assembled.dcm"
    return target, assemble_part10(instance, request.bulk, target)


def _json_part(*instances: JSON) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": JSON_TYPE}, orjson.dumps(list(instances))


def _bulk(location: str, body: bytes, media_type: str = "application/octet-stream") -> Any:
    return {"Content-Type": media_type, "Content-Location": location}, body


# -- the request's parts ----------------------------------------------------


def test_a_json_array_is_one_instance_each_and_xml_one_per_part(tmp_path: Path) -> None:
    first, second, third = _identity(), _identity(), _identity()
    xml = {"Content-Type": XML_TYPE}, json_to_xml(third)
    request = read_request(_parts(tmp_path, _json_part(first, second), xml), JSON_TYPE, BASE)
    instances = [i for i in request.items if isinstance(i, MetadataInstance)]
    assert [i.sop_instance_uid for i in instances] == [
        first["00080018"]["Value"][0],
        second["00080018"]["Value"][0],
        third["00080018"]["Value"][0],
    ]
    assert [i.name for i in instances] == ["part 1 instance 1", "part 1 instance 2", "part 2"]


def test_an_untyped_part_without_location_is_metadata_of_the_root_type(tmp_path: Path) -> None:
    request = read_request(_parts(tmp_path, ({}, json_to_xml(_identity()))), XML_TYPE, BASE)
    assert isinstance(request.items[0], MetadataInstance)


def test_application_json_and_xml_labels_are_taken_as_metadata(tmp_path: Path) -> None:
    specs = (
        ({"Content-Type": "application/json"}, orjson.dumps([_identity()])),
        ({"Content-Type": "application/xml"}, json_to_xml(_identity())),
        ({"Content-Type": "application/xml", "Content-Location": "cda"}, b"<ClinicalDocument/>"),
    )
    request = read_request(_parts(tmp_path, *specs), JSON_TYPE, BASE)
    assert [type(i) for i in request.items] == [MetadataInstance, MetadataInstance]
    assert len(request.bulk) == 1


@pytest.mark.parametrize(
    ("media_type", "body"),
    [
        (JSON_TYPE, b"[{not json"),
        (JSON_TYPE, b"[1, 2]"),
        (XML_TYPE, b"<NativeDicomModel><DicomAttribute"),
        (XML_TYPE, b"<Other/>"),
        (JSON_TYPE, b"[]"),
    ],
)
def test_malformed_metadata_is_a_syntax_failure(
    tmp_path: Path, media_type: str, body: bytes
) -> None:
    request = read_request(_parts(tmp_path, ({"Content-Type": media_type}, body)), media_type, BASE)
    failures = [item for item in request.items if isinstance(item, Failed)]
    assert failures and all(f.malformed and f.failure_reason == 0xC000 for f in failures)


@pytest.mark.parametrize("missing", ["00080016", "00080018"])
def test_an_instance_without_its_sop_uids_fails_on_its_own(tmp_path: Path, missing: str) -> None:
    broken, good = _identity(), _identity()
    del broken[missing]
    request = read_request(_parts(tmp_path, _json_part(broken, good)), JSON_TYPE, BASE)
    failed, kept = request.items
    assert isinstance(failed, Failed) and failed.failure_reason == 0xC000
    assert not failed.malformed and "missing" in failed.detail
    assert isinstance(kept, MetadataInstance)


def test_a_bulk_part_without_content_location_is_reported(tmp_path: Path) -> None:
    specs = _json_part(_identity()), ({"Content-Type": "application/pdf"}, PDF)
    request = read_request(_parts(tmp_path, *specs), JSON_TYPE, BASE)
    assert any(isinstance(i, Failed) and "Content-Location" in i.detail for i in request.items)


def test_application_dicom_parts_are_passed_on_as_part10(tmp_path: Path) -> None:
    specs = _json_part(_identity()), ({"Content-Type": "application/dicom"}, b"DICM")
    request = read_request(_parts(tmp_path, *specs), JSON_TYPE, BASE)
    assert isinstance(request.items[1], Part)


# -- assembly -----------------------------------------------------------------


def test_encapsulated_pdf_is_kept_byte_for_byte(tmp_path: Path) -> None:
    meta = _identity() | {"00420011": {"vr": "OB", "BulkDataURI": "report.pdf"}}
    target, ts = _assemble(tmp_path, _json_part(meta), _bulk("report.pdf", PDF, "application/pdf"))
    ds = dcmread(target)
    assert ts == "1.2.840.10008.1.2.1"
    assert ds.EncapsulatedDocument == PDF
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.SOPInstanceUID == meta["00080018"]["Value"][0]


def test_an_odd_length_document_is_padded_and_its_length_kept(tmp_path: Path) -> None:
    odd = PDF + b"x"
    meta = _identity() | {"00420011": {"vr": "OB", "BulkDataURI": "report.pdf"}}
    target, _ = _assemble(tmp_path, _json_part(meta), _bulk("report.pdf", odd, "application/pdf"))
    ds = dcmread(target)
    assert ds.EncapsulatedDocument == odd + b"\x00"
    assert ds.EncapsulatedDocumentLength == len(odd)


@pytest.mark.parametrize(
    ("uri", "location"),
    [
        ("report.pdf", "http://archive.example/dicomweb/report.pdf"),  # RFC 3986 5.2
        ("http://archive.example/dicomweb/bulk/1", "/dicomweb/bulk/1"),
        ("/dicomweb/bulk/a%20b", "http://archive.example/dicomweb/bulk/a b"),
        ("cid:doc@example", None),
    ],
)
def test_relative_and_absolute_references_meet(
    tmp_path: Path, uri: str, location: str | None
) -> None:
    meta = _identity() | {"00420011": {"vr": "OB", "BulkDataURI": uri}}
    headers = {"Content-Type": "application/pdf"}
    headers |= {"Content-Location": location} if location else {"Content-ID": "<doc@example>"}
    target, _ = _assemble(tmp_path, _json_part(meta), (headers, PDF))
    assert dcmread(target).EncapsulatedDocument == PDF


def test_a_missing_bulk_part_fails_with_a900(tmp_path: Path) -> None:
    meta = _identity() | {"00420011": {"vr": "OB", "BulkDataURI": "absent.pdf"}}
    with pytest.raises(Invalid) as raised:
        _assemble(tmp_path, _json_part(meta), _bulk("other.pdf", PDF, "application/pdf"))
    assert raised.value.status == 0xA900
    assert "absent.pdf" in str(raised.value)
    assert not (tmp_path / "assembled.dcm").exists()


def test_native_ct_is_the_dataset_that_was_described(tmp_path: Path) -> None:
    ct = make_ct(rows=32, cols=32)
    original = part10_bytes(ct)
    meta = dataset_to_json(dcmread(BytesIO(original)))
    meta["7FE00010"] = {"vr": "OW", "BulkDataURI": "pixels"}
    target, ts = _assemble(tmp_path, _json_part(meta), _bulk("pixels", ct.PixelData))
    assert ts == "1.2.840.10008.1.2.1"
    assert dataset_bytes(target.read_bytes()) == dataset_bytes(original)
    assert np.array_equal(dcmread(target).pixel_array, ct.pixel_array)


def test_native_frames_in_several_parts_are_joined_in_frame_order(tmp_path: Path) -> None:
    ct = make_ct(rows=8, cols=8, NumberOfFrames=3)
    frames = [bytes([n]) * 128 for n in (1, 2, 3)]
    meta = dataset_to_json(ct) | {"7FE00010": {"vr": "OW", "BulkDataURI": "px"}}
    specs = [_bulk(f"px/frames/{n}", frames[n - 1]) for n in (3, 1, 2)]
    target, _ = _assemble(tmp_path, _json_part(meta), *specs)
    assert dcmread(target).PixelData == b"".join(frames)
    assert not list(tmp_path.glob("*.bulk"))  # the joined copy is gone


def test_bulk_data_inside_a_sequence_and_on_a_numeric_vr(tmp_path: Path) -> None:
    waveform = struct.pack("<6h", 1, -2, 3, -4, 5, -6)
    meta = _identity("1.2.840.10008.5.1.4.1.1.9.1.1") | {
        "00189219": {"vr": "FD", "BulkDataURI": "numbers"},
        "54000100": {
            "vr": "SQ",
            "Value": [{"54001010": {"vr": "OW", "BulkDataURI": "wave"}}],
        },
    }
    specs = _bulk("wave", waveform), _bulk("numbers", struct.pack("<2d", 1.5, -2.25))
    target, _ = _assemble(tmp_path, _json_part(meta), *specs)
    ds = dcmread(target)
    assert ds.WaveformSequence[0].WaveformData == waveform
    assert list(ds[0x00189219].value) == [1.5, -2.25]


def test_inline_binary_and_file_meta_in_the_metadata(tmp_path: Path) -> None:
    meta = _identity() | {
        "00420011": {"vr": "OB", "InlineBinary": base64.b64encode(PDF).decode()},
        "00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2.4.50"]},
        "00080000": {"vr": "UL", "Value": [4]},
    }
    target, ts = _assemble(tmp_path, _json_part(meta))
    ds = dcmread(target)
    assert ts == "1.2.840.10008.1.2.1" and ds.EncapsulatedDocument == PDF
    assert 0x00080000 not in ds


def test_unicode_text_without_a_character_set_is_stored_as_utf8(tmp_path: Path) -> None:
    meta = _identity() | {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Zoë^Łucja"}]}}
    target, _ = _assemble(tmp_path, _json_part(meta))
    ds = dcmread(target)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Zoë^Łucja"


def test_undecodable_json_values_are_malformed_metadata(tmp_path: Path) -> None:
    meta = _identity() | {"00280010": {"vr": "US", "Value": ["many"]}}
    with pytest.raises(MalformedMetadata):
        _assemble(tmp_path, _json_part(meta))


# -- compressed pixel data -------------------------------------------------------


def _compressed(name: str, *, keep_pixel_description: bool = True) -> tuple[Dataset, JSON]:
    original = dcmread(pydicom_file(name))
    meta = dataset_to_json(original)
    del meta["7FE00010"]
    if not keep_pixel_description:
        for key in ("00280002", "00280004", "00280006", "00280010", "00280011"):
            meta.pop(key, None)
        for key in ("00280100", "00280101", "00280102", "00280103", "00282110"):
            meta.pop(key, None)
    meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "pixels"}
    return original, meta


def _frames(ds: Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def test_jpeg_baseline_is_stored_as_jpeg_baseline_from_the_codestream(tmp_path: Path) -> None:
    original, meta = _compressed("SC_rgb_jpeg_dcmtk.dcm")
    [frame] = _frames(original)
    target, ts = _assemble(tmp_path, _json_part(meta), _bulk("pixels", frame, "image/jpeg"))
    assert ts == "1.2.840.10008.1.2.4.50"
    stored = dcmread(target)
    assert _frames(stored) == [frame]
    assert np.array_equal(stored.pixel_array, original.pixel_array)
    parsed = parse_part10(target)
    assert parsed.transfer_syntax_uid == ts and parsed.frames and len(parsed.frames) == 1


def test_omitted_pixel_description_comes_from_the_codestream(tmp_path: Path) -> None:
    original, meta = _compressed("MR_small_jpeg_ls_lossless.dcm", keep_pixel_description=False)
    [frame] = _frames(original)
    target, ts = _assemble(tmp_path, _json_part(meta), _bulk("pixels", frame, "image/jls"))
    stored = dcmread(target)
    assert ts == "1.2.840.10008.1.2.4.80"
    assert (stored.Rows, stored.Columns, stored.SamplesPerPixel) == (64, 64, 1)
    assert (stored.BitsAllocated, stored.BitsStored, stored.HighBit) == (16, 16, 15)
    assert stored.PhotometricInterpretation == "MONOCHROME2"
    # Pixel Representation cannot be read from a JPEG-LS header: 0 is assumed
    expected = original.pixel_array.astype(np.uint16)
    assert np.array_equal(stored.pixel_array.astype(np.uint16), expected)


def test_multi_frame_j2k_per_frame_parts_in_any_order(tmp_path: Path) -> None:
    original, meta = _compressed("emri_small_jpeg_2k_lossless.dcm")
    frames = _frames(original)
    order = [4, 1, 10, 2, 3, 5, 9, 6, 7, 8]
    specs = [_bulk(f"pixels/frames/{n}", frames[n - 1], "image/jp2") for n in order]
    target, ts = _assemble(tmp_path, _json_part(meta), *specs)
    stored = dcmread(target)
    assert ts == "1.2.840.10008.1.2.4.90"
    assert _frames(stored) == frames
    assert np.array_equal(stored.pixel_array, original.pixel_array)
    parsed = parse_part10(target)
    assert parsed.frames is not None and len(parsed.frames) == 10


def test_a_stated_transfer_syntax_is_used_when_the_codestream_allows_it(tmp_path: Path) -> None:
    original, meta = _compressed("SC_rgb_jpeg_dcmtk.dcm")
    [frame] = _frames(original)
    media = 'image/jpeg; transfer-syntax="1.2.840.10008.1.2.4.51"'
    _, ts = _assemble(tmp_path, _json_part(meta), _bulk("pixels", frame, media))
    assert ts == "1.2.840.10008.1.2.4.51"  # baseline is a subset of extended


@pytest.mark.parametrize(
    ("media", "status"),
    [
        ("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.70", 0xA900),  # lossy stream
        ("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.90", 0xC122),  # not a JPEG syntax
        ("image/png", 0xC000),  # not a bulk data media type
    ],
)
def test_a_transfer_syntax_the_part_cannot_carry_is_refused(
    tmp_path: Path, media: str, status: int
) -> None:
    original, meta = _compressed("SC_rgb_jpeg_dcmtk.dcm")
    [frame] = _frames(original)
    with pytest.raises(Invalid) as raised:
        _assemble(tmp_path, _json_part(meta), _bulk("pixels", frame, media))
    assert raised.value.status == status


def test_frame_parts_must_match_number_of_frames(tmp_path: Path) -> None:
    original, meta = _compressed("emri_small_jpeg_2k_lossless.dcm")
    frames = _frames(original)
    specs = [_bulk("pixels", frame, "image/jp2") for frame in frames[:3]]
    with pytest.raises(Invalid) as raised:
        _assemble(tmp_path, _json_part(meta), *specs)
    assert raised.value.status == 0xA900 and "one part per frame" in str(raised.value)


def test_a_gap_in_frame_numbers_fails(tmp_path: Path) -> None:
    original, meta = _compressed("emri_small_jpeg_2k_lossless.dcm")
    frames = _frames(original)
    specs = [_bulk(f"pixels/frames/{n}", frames[n - 1], "image/jp2") for n in (1, 2, 4)]
    with pytest.raises(Invalid, match="frame 3"):
        _assemble(tmp_path, _json_part(meta), *specs)


def test_video_is_one_fragment(tmp_path: Path) -> None:
    stream = b"\x00\x00\x01\xb3" + bytes(range(256)) * 4  # an MPEG-2 sequence header start
    meta = _identity("1.2.840.10008.5.1.4.1.1.77.1.1.1") | {
        "00280008": {"vr": "IS", "Value": [25]},
        "7FE00010": {"vr": "OB", "BulkDataURI": "video"},
    }
    target, ts = _assemble(tmp_path, _json_part(meta), _bulk("video", stream, "video/mpeg2"))
    assert ts == "1.2.840.10008.1.2.4.100"
    stored = dcmread(target)
    assert list(generate_frames(stored.PixelData, number_of_frames=1)) == [stream]
