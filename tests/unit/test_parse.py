"""ingest.parse: header parsed once from disk, blob coordinates, frames, and refusals."""

from __future__ import annotations

import hashlib
import io
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

from infra.errors import Invalid
from ingest.parse import (
    CHRONICLE_IMPLEMENTATION_CLASS_UID,
    CHRONICLE_VERSION_NAME,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    ParsedInstance,
    build_file_meta,
    parse_dataset,
    parse_part10,
)
from schemas.dicom_json import dataset_to_json
from schemas.uids import is_uid


def _testdata(name: str) -> str:
    """Path of a pydicom test file (pydicom-data is installed)."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _blob(parsed: ParsedInstance, source: Path) -> bytes:
    return parsed.file_meta + source.read_bytes()[parsed.dataset_offset :]


def _frame_bytes(parsed: ParsedInstance, blob: bytes) -> list[bytes]:
    assert parsed.frames is not None
    return [b"".join(blob[o : o + n] for o, n in frame) for frame in parsed.frames]


def _range(uri: str) -> tuple[int, int]:
    offset, length = uri.removeprefix("bulkdata/").split("-")
    return int(offset), int(length)


def _ct(rows: int = 4, columns: int = 4, frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.PatientID = "P-1"
    ds.IssuerOfPatientID = "SITE"
    ds.PatientName = "Doe^Jane"
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = np.arange(rows * columns * frames, dtype=np.int16) - 7
    ds.PixelData = pixels.tobytes()
    return ds


def _write_part10(ds: Dataset, path: Path, ts: str = EXPLICIT_VR_LE, **meta: Any) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(ts)
    for keyword, value in meta.items():
        setattr(ds.file_meta, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_dataset(
    ds: Dataset, path: Path, *, implicit: bool, little: bool, prefix: bytes = b""
) -> Path:
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=implicit, little_endian=little, enforce_file_format=False)
    path.write_bytes(prefix + buffer.getvalue())
    return path


# ---------------------------------------------------------------- identity and blob layout


def test_ct_small_identity_metadata_and_pixel_range() -> None:
    path = Path(_testdata("CT_small.dcm"))
    parsed = parse_part10(path)
    ds = pydicom.dcmread(path)
    assert parsed.sop_class_uid == ds.SOPClassUID
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.study_instance_uid == ds.StudyInstanceUID
    assert parsed.series_instance_uid == ds.SeriesInstanceUID
    assert parsed.patient_id == ds.PatientID
    assert parsed.transfer_syntax_uid == EXPLICIT_VR_LE
    data = path.read_bytes()
    assert parsed.dataset_length == len(data) - parsed.dataset_offset
    assert parsed.dataset_sha256 == hashlib.sha256(data[parsed.dataset_offset :]).hexdigest()
    blob = _blob(parsed, path)
    assert _frame_bytes(parsed, blob) == [ds.PixelData]
    offset, length = _range(parsed.metadata["7FE00010"]["BulkDataURI"])
    assert blob[offset : offset + length] == ds.PixelData
    bulk = {k for k, v in parsed.metadata.items() if "BulkDataURI" in v}
    assert bulk == {"7FE00010", "00431029"}  # Pixel Data and a 2 KiB private OB
    inline = dataset_to_json(ds)
    assert {k: v for k, v in parsed.metadata.items() if k not in bulk} == {
        k: v for k, v in inline.items() if k not in bulk
    }


def test_file_meta_is_deterministic_and_readable() -> None:
    meta = build_file_meta(CT_IMAGE, "1.2.3.4.5.6", EXPLICIT_VR_LE)
    assert meta == build_file_meta(CT_IMAGE, "1.2.3.4.5.6", EXPLICIT_VR_LE)
    assert meta[:132] == b"\x00" * 128 + b"DICM"
    read = pydicom.dcmread(io.BytesIO(meta)).file_meta
    assert read.MediaStorageSOPClassUID == CT_IMAGE
    assert read.MediaStorageSOPInstanceUID == "1.2.3.4.5.6"
    assert read.TransferSyntaxUID == EXPLICIT_VR_LE
    assert read.ImplementationClassUID == CHRONICLE_IMPLEMENTATION_CLASS_UID
    assert read.ImplementationVersionName == CHRONICLE_VERSION_NAME
    assert read.FileMetaInformationVersion == b"\x00\x01"
    assert read.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert "SourceApplicationEntityTitle" not in read


def test_implementation_class_uid_is_fixed_under_the_pydicom_root() -> None:
    assert CHRONICLE_IMPLEMENTATION_CLASS_UID.startswith(PYDICOM_ROOT_UID)
    assert is_uid(CHRONICLE_IMPLEMENTATION_CLASS_UID, strict=True)
    entropy = ["Chronicle PACS implementation"]
    assert (
        generate_uid(PYDICOM_ROOT_UID, entropy_srcs=entropy) == CHRONICLE_IMPLEMENTATION_CLASS_UID
    )


def test_same_dataset_gives_the_same_blob_whatever_the_route(tmp_path: Path) -> None:
    a = parse_part10(_write_part10(_ct(), tmp_path / "a.dcm", SourceApplicationEntityTitle="CT1"))
    b = parse_part10(
        _write_part10(
            _ct(), tmp_path / "b.dcm", ImplementationClassUID="1.2.3", ImplementationVersionName="X"
        )
    )
    raw = _write_dataset(_ct(), tmp_path / "c.raw", implicit=False, little=True, prefix=b"PDV!")
    c = parse_dataset(raw, EXPLICIT_VR_LE, offset=4)
    for parsed, path in ((b, tmp_path / "b.dcm"), (c, raw)):
        assert parsed.file_meta == a.file_meta
        assert parsed.dataset_sha256 == a.dataset_sha256
        assert parsed.metadata == a.metadata
        assert parsed.frames == a.frames
        assert _blob(parsed, path) == _blob(a, tmp_path / "a.dcm")


# ---------------------------------------------------------------- frames


def test_native_multiframe_ranges(tmp_path: Path) -> None:
    path = _write_part10(_ct(3, 5, frames=4), tmp_path / "mf.dcm")
    parsed = parse_part10(path)
    pixels = pydicom.dcmread(path).PixelData
    assert _frame_bytes(parsed, _blob(parsed, path)) == [
        pixels[i * 30 : (i + 1) * 30] for i in range(4)
    ]


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("emri_small_jpeg_2k_lossless.dcm", 10),
        ("color3d_jpeg_baseline.dcm", 120),
        ("SC_rgb_rle_2frame.dcm", 2),
        ("rtdose_rle.dcm", 15),
        ("JPEG2000.dcm", 1),
    ],
)
def test_encapsulated_frames_match_pydicom(name: str, count: int) -> None:
    path = Path(_testdata(name))
    parsed = parse_part10(path)
    ds = pydicom.dcmread(path)
    expected = list(generate_frames(ds.PixelData, number_of_frames=count))
    assert [f.rstrip(b"\x00") for f in _frame_bytes(parsed, _blob(parsed, path))] == [
        f.rstrip(b"\x00") for f in expected
    ]


def test_native_frames_of_a_real_multiframe() -> None:
    path = Path(_testdata("emri_small.dcm"))
    parsed = parse_part10(path)
    pixels = pydicom.dcmread(path).PixelData
    size = len(pixels) // 10
    assert _frame_bytes(parsed, _blob(parsed, path)) == [
        pixels[i * size : (i + 1) * size] for i in range(10)
    ]


def _jpeg_like(i: int, size: int = 12) -> bytes:
    return b"\xff\xd8" + bytes([i]) * (size - 4) + b"\xff\xd9"


@pytest.mark.parametrize("how", ["bot", "eot", "end-marker", "single-frame"])
def test_frames_spanning_several_fragments(tmp_path: Path, how: str) -> None:
    frames = [_jpeg_like(i, 16) for i in range(3 if how != "single-frame" else 1)]
    ds = _ct(4, 4, frames=len(frames))
    if how == "eot":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            frames
        )
    else:
        ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=how == "bot")
    path = _write_part10(ds, tmp_path / "enc.dcm", ts=JPEG_BASELINE)
    parsed = parse_part10(path)
    assert parsed.frames is not None and parsed.frames_note == ""
    assert _frame_bytes(parsed, _blob(parsed, path)) == frames
    if how in ("bot", "end-marker"):
        assert all(len(frame) == 2 for frame in parsed.frames)


def test_encapsulated_bulk_uri_covers_items_up_to_the_delimiter(tmp_path: Path) -> None:
    ds = _ct(4, 4, frames=2)
    ds.PixelData = encapsulate([_jpeg_like(1), _jpeg_like(2)], has_bot=True)
    path = _write_part10(ds, tmp_path / "enc.dcm", ts=JPEG_BASELINE)
    parsed = parse_part10(path)
    blob = _blob(parsed, path)
    offset, length = _range(parsed.metadata["7FE00010"]["BulkDataURI"])
    assert parsed.metadata["7FE00010"]["vr"] == "OB"
    assert blob[offset : offset + length] == ds.PixelData
    assert blob[offset : offset + 4] == b"\xfe\xff\x00\xe0"
    assert blob[offset + length : offset + length + 8] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def test_unmappable_fragments_give_no_frames_and_say_why(tmp_path: Path) -> None:
    ds = _ct(4, 4, frames=3)
    ds.PixelData = encapsulate(
        [b"\x01\x02" * 5, b"\x03\x04" * 5, b"\x05\x06" * 5], fragments_per_frame=2, has_bot=False
    )
    path = _write_part10(ds, tmp_path / "enc.dcm", ts="1.2.840.10008.1.2.5")
    parsed = parse_part10(path)
    assert parsed.frames is None and "fragments for 3 frames" in parsed.frames_note


def test_bits_allocated_1_and_big_endian_and_deflated_frames_are_computed_on_read() -> None:
    liver = parse_part10(Path(_testdata("liver.dcm")))
    assert liver.frames is None and "not byte aligned" in liver.frames_note
    big = parse_part10(Path(_testdata("MR_small_bigendian.dcm")))
    assert big.frames is None and big.frames_note == "big endian: computed on read"
    assert big.transfer_syntax_uid == EXPLICIT_VR_BE
    little = parse_part10(Path(_testdata("MR_small.dcm")))

    def comparable(metadata: dict[str, Any]) -> dict[str, Any]:
        # only the little endian file has Data Set Trailing Padding
        return {k: v for k, v in metadata.items() if "BulkDataURI" not in v and k != "FFFCFFFC"}

    assert comparable(big.metadata) == comparable(little.metadata)


def test_deflated_dataset() -> None:
    path = Path(_testdata("image_dfl.dcm"))
    parsed = parse_part10(path)
    ds = pydicom.dcmread(path)
    assert parsed.frames is None and parsed.frames_note.startswith("deflated: computed on read")
    assert parsed.metadata["7FE00010"] == {"vr": ds["PixelData"].VR}  # no range exists
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    data = path.read_bytes()
    assert parsed.dataset_sha256 == hashlib.sha256(data[parsed.dataset_offset :]).hexdigest()
    expected = dataset_to_json(ds)
    assert {k: v for k, v in parsed.metadata.items() if k != "7FE00010"} == {
        k: v for k, v in expected.items() if k != "7FE00010"
    }


# ---------------------------------------------------------------- sequences and positions


@pytest.mark.parametrize("undefined", [True, False])
def test_bulk_inside_sequences_points_at_its_bytes(tmp_path: Path, undefined: bool) -> None:
    ds = _ct()
    inner = Dataset()
    inner.add_new(0x00290010, "LO", "ACME")
    inner.add_new(0x00291001, "OB", bytes(range(256)) * 8)
    outer = Dataset()
    outer.ReferencedSOPInstanceUID = "1.2.3"
    outer.ReferencedImageSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([outer])
    for seq, item in ((ds.ReferencedImageSequence, outer), (outer.ReferencedImageSequence, inner)):
        seq.is_undefined_length = undefined
        item.is_undefined_length_sequence_item = undefined
    path = _write_part10(ds, tmp_path / "nested.dcm")
    parsed = parse_part10(path)
    nested = parsed.metadata["00081140"]["Value"][0]["00081140"]["Value"][0]["00291001"]
    offset, length = _range(nested["BulkDataURI"])
    assert _blob(parsed, path)[offset : offset + length] == bytes(range(256)) * 8


def test_sequence_sent_as_undefined_length_un_is_read_as_implicit_items(tmp_path: Path) -> None:
    uid = b"1.2.840.10008.5.1.4.1.1.2\x00"
    item = struct.pack("<HHL", 0x0008, 0x1150, len(uid)) + uid
    un_sequence = (
        struct.pack("<HH2s2xL", 0x0008, 0x1140, b"UN", 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    head = _write_dataset(_ct(), tmp_path / "h", implicit=False, little=True).read_bytes()
    split = head.index(b"\x10\x00\x20\x00")  # (0010,0020) PatientID: after (0008,xxxx)
    path = tmp_path / "un.raw"
    path.write_bytes(head[:split] + un_sequence + head[split:])
    parsed = parse_dataset(path, EXPLICIT_VR_LE)
    assert parsed.metadata["00081140"] == {
        "vr": "SQ",
        "Value": [{"00081150": {"vr": "UI", "Value": [uid.decode().rstrip("\x00")]}}],
    }


def test_sequences_nested_too_deep_are_refused(tmp_path: Path) -> None:
    ds = _ct()
    item = Dataset()
    for _ in range(70):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([item])
        item = outer
    ds.ReferencedImageSequence = Sequence([item])
    with pytest.raises(Invalid, match="nested deeper"):
        parse_part10(_write_part10(ds, tmp_path / "deep.dcm"))


# ---------------------------------------------------------------- without File Meta


@pytest.mark.parametrize(
    ("implicit", "little", "ts"),
    [(True, True, IMPLICIT_VR_LE), (False, True, EXPLICIT_VR_LE), (False, False, EXPLICIT_VR_BE)],
)
def test_bare_datasets_get_their_transfer_syntax_sniffed(
    tmp_path: Path, implicit: bool, little: bool, ts: str
) -> None:
    path = _write_dataset(_ct(), tmp_path / "bare", implicit=implicit, little=little)
    parsed = parse_part10(path)
    assert parsed.transfer_syntax_uid == ts
    assert parsed.dataset_offset == 0
    assert parsed.metadata["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert parse_dataset(path, ts) == parsed


def test_bare_compressed_dataset_is_refused(tmp_path: Path) -> None:
    ds = _ct()
    del ds.PixelData
    head = _write_dataset(ds, tmp_path / "h", implicit=False, little=True).read_bytes()
    pixel = struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF)
    pixel += encapsulate([_jpeg_like(1)]) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    path = tmp_path / "bare"
    path.write_bytes(head + pixel)
    assert parse_dataset(path, JPEG_BASELINE).frames is not None  # fine when told the syntax
    with pytest.raises(Invalid, match="transfer syntax unknown"):
        parse_part10(path)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not DICOM at all\n" * 20, b"\x00" * 128 + b"DICM", bytes(range(256)) * 4],
)
def test_non_dicom_bytes_are_invalid(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(Invalid) as caught:
        parse_part10(path)
    assert caught.value.status == 0xC000


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("MR_truncated.dcm", "truncated"),
        ("rtplan_truncated.dcm", "truncated"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated"),
        ("JPEGLSNearLossless_08.dcm", r"Series Instance UID \(0020,000E\) is missing"),
        ("bad_sequence.dcm", "not digits and dots"),
    ],
)
def test_broken_real_files_are_invalid(name: str, match: str) -> None:
    with pytest.raises(Invalid, match=match) as caught:
        parse_part10(Path(_testdata(name)))
    assert caught.value.status == 0xC000


def test_dataset_contradicting_its_file_meta_is_0xa900() -> None:
    with pytest.raises(Invalid, match="contradicts its File Meta") as caught:
        parse_part10(Path(_testdata("rtplan.dcm")))
    assert caught.value.status == 0xA900


@pytest.mark.parametrize(
    "keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_missing_identity_is_invalid(tmp_path: Path, keyword: str) -> None:
    ds = _ct()
    delattr(ds, keyword)
    path = _write_dataset(ds, tmp_path / "d", implicit=False, little=True)
    with pytest.raises(Invalid, match="is missing"):
        parse_dataset(path, EXPLICIT_VR_LE)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_malformed_uid_is_invalid(tmp_path: Path) -> None:
    ds = _ct()
    ds.StudyInstanceUID = "1.2.abc"
    path = _write_dataset(ds, tmp_path / "d", implicit=False, little=True)
    with pytest.raises(Invalid, match=r"Study Instance UID \(0020,000D\) '1.2.abc' is not digits"):
        parse_dataset(path, EXPLICIT_VR_LE)


def test_bad_offset_and_bad_transfer_syntax_are_invalid(tmp_path: Path) -> None:
    path = _write_dataset(_ct(), tmp_path / "d", implicit=False, little=True)
    with pytest.raises(Invalid, match="outside the file"):
        parse_dataset(path, EXPLICIT_VR_LE, offset=10**9)
    with pytest.raises(Invalid):
        parse_dataset(path, "not-a-uid")


def _fuzz_sources() -> list[bytes]:
    """Small files that exercise every reading path: encapsulated, implicit VR with
    undefined-length sequences, big endian, deflated."""
    encapsulated = _ct(4, 4, frames=2)
    encapsulated.ReferencedImageSequence = Sequence([Dataset()])
    encapsulated.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    encapsulated.PixelData = encapsulate([_jpeg_like(1), _jpeg_like(2)], has_bot=True)
    nested = _ct(2, 2)
    item = Dataset()
    item.add_new(0x00291001, "OB", b"\x01" * 1100)
    nested.ReferencedImageSequence = Sequence([item])
    sources = []
    with tempfile.TemporaryDirectory() as tmp:
        for ds, ts in (
            (encapsulated, JPEG_BASELINE),
            (nested, IMPLICIT_VR_LE),
            (_ct(2, 2), EXPLICIT_VR_BE),
            (_ct(2, 2), "1.2.840.10008.1.2.1.99"),
        ):
            sources.append(_write_part10(ds, Path(tmp) / "f.dcm", ts=ts).read_bytes())
    return sources


_FUZZ_SOURCES = _fuzz_sources()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.sampled_from(_FUZZ_SOURCES).flatmap(
        lambda source: st.tuples(
            st.just(source),
            st.integers(0, len(source)),
            st.lists(st.tuples(st.integers(0, len(source) - 1), st.integers(0, 255)), max_size=4),
        )
    )
)
def test_truncated_or_corrupted_files_never_crash(
    data: tuple[bytes, int, list[tuple[int, int]]],
) -> None:
    source, cut, flips = data
    damaged = bytearray(source[:cut])
    for position, value in flips:
        if position < len(damaged):
            damaged[position] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.dcm"
        path.write_bytes(bytes(damaged))
        try:
            parsed = parse_part10(path)
        except Invalid:
            return
        assert parsed.dataset_length == len(damaged) - parsed.dataset_offset
        for frame in parsed.frames or ():
            for offset, length in frame:
                assert (
                    offset >= 0 and offset + length <= len(parsed.file_meta) + parsed.dataset_length
                )


def test_decoding_problems_are_reported_as_warnings(tmp_path: Path) -> None:
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    path = _write_dataset(ds, tmp_path / "d", implicit=False, little=True)
    data = path.read_bytes().replace(b"Doe^Jane", b"D\xf6e^Jane")  # Latin-1 bytes, not UTF-8
    path.write_bytes(data)
    parsed = parse_dataset(path, EXPLICIT_VR_LE, default_charset="ISO_IR 100")
    assert parsed.metadata["00100010"]["Value"] == [{"Alphabetic": "Döe^Jane"}]
    assert parsed.warnings == ("(0010,0010): not valid ISO_IR 192, decoded as ISO_IR 100",)
