"""api.transcode: whole instances into every target syntax, pixel-exact when lossless.

Sources are pydicom-data files (native, big endian, JPEG, JPEG-LS, J2K, RLE,
multi-frame, RGB, YBR, palette, 8/12/16/32-bit, signed); the reference is
pydicom's own decode of the original (through api.pixels, which adds the
JPEG lossless plugin). Every output is read back by pydicom (JPEG XL, which
pydicom 3.0 does not know, through api.transcode back to Explicit VR LE).
"""

from __future__ import annotations

import io
import struct
from functools import cache
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

from api import codecs, pixels, transcode
from api.pixels import TranscodeUnsupported
from tests.support import make_ct, part10_bytes, pydicom_file

EXPLICIT, IMPLICIT, DEFLATED = transcode.EXPLICIT, transcode.IMPLICIT, transcode.DEFLATED
LOSSLESS = [IMPLICIT, DEFLATED, *codecs.LOSSLESS_TARGETS]
JPEG_XL = "1.2.840.10008.1.2.4.110"
JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
SOURCES = [
    "CT_small.dcm",  # 16-bit signed
    "MR_small_bigendian.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_RLE.dcm",
    "emri_small_jpeg_2k_lossless.dcm",  # 10 frames, 12 bits stored
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "SC_rgb_rle_2frame.dcm",  # RGB, 2 frames
    "SC_rgb_16bit.dcm",
    "SC_ybr_full_uncompressed.dcm",
    "US1_J2KR.dcm",  # YBR_RCT
    "SC_rgb_jpeg_lossy_gdcm.dcm",  # lossy source: its decoded pixels, re-encoded losslessly
    "OBXXXX1A_rle.dcm",  # palette colour
    "rtdose_1frame.dcm",  # 32-bit
]


@cache
def _source(name: str) -> bytes:
    return pydicom_file(name).read_bytes()


@cache
def _reference(name: str) -> Any:
    """pydicom's decode of the original (as an Explicit VR LE instance)."""
    return dcmread(io.BytesIO(pixels.to_explicit_le(_source(name)))).pixel_array


def _decoded(part10: bytes) -> Any:
    return dcmread(io.BytesIO(transcode.transcode(part10, EXPLICIT))).pixel_array


def _expected_refusal(name: str, target: str) -> str:
    """The documented refusals among the combinations (empty: must succeed)."""
    ds = dcmread(pydicom_file(name), stop_before_pixels=True)
    decoded_photometric = str(ds.PhotometricInterpretation)
    if ds.file_meta.TransferSyntaxUID in pixels.LOSSY_JPEG or decoded_photometric == "YBR_RCT":
        decoded_photometric = "RGB"
    if target == JPEG_XL and ds.PixelRepresentation == 1:
        return "signed"
    if target in JPEG_LOSSLESS and decoded_photometric.startswith("YBR"):
        return "RGB or monochrome"
    if ds.BitsAllocated == 32 and target in codecs.CODECS:
        return "32-bit"
    return ""


@pytest.mark.parametrize("target", LOSSLESS)
@pytest.mark.parametrize("name", SOURCES)
def test_lossless_targets_decode_back_pixel_exact(name: str, target: str) -> None:
    refusal = _expected_refusal(name, target)
    if refusal:
        with pytest.raises(TranscodeUnsupported, match=refusal):
            transcode.transcode(_source(name), target)
        assert transcode.refusal(
            str(dcmread(pydicom_file(name), stop_before_pixels=True).file_meta.TransferSyntaxUID),
            target,
            transcode.spec_of(dcmread(pydicom_file(name))),
        )
        return
    out = transcode.transcode(_source(name), target)

    ds = dcmread(io.BytesIO(out))
    original = dcmread(pydicom_file(name), stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(_decoded(out), _reference(name))
    lossy_source = (
        str(original.get("LossyImageCompression", "")) == "01"
        or str(original.file_meta.TransferSyntaxUID) in pixels.LOSSY_JPEG
    )
    assert (str(ds.get("LossyImageCompression", "")) == "01") == lossy_source


def test_encapsulated_output_has_one_frame_per_fragment_and_an_offset_table() -> None:
    out = transcode.transcode(_source("emri_small.dcm"), "1.2.840.10008.1.2.4.80")
    ds = dcmread(io.BytesIO(out))
    frames = list(generate_frames(ds.PixelData, number_of_frames=10))
    assert len(frames) == 10 and all(f.startswith(b"\xff\xd8\xff\xf7") for f in frames)
    assert ds["PixelData"].VR == "OB" and ds["PixelData"].is_undefined_length
    offsets = struct.unpack("<10L", ds.PixelData[8:48])  # the Basic Offset Table item
    assert offsets[0] == 0 and list(offsets) == sorted(offsets)


def test_colour_photometric_follows_the_codec() -> None:
    rgb = _source("SC_rgb.dcm")
    expected = {
        "1.2.840.10008.1.2.4.90": "YBR_RCT",  # reversible colour transform
        "1.2.840.10008.1.2.4.201": "YBR_RCT",
        "1.2.840.10008.1.2.4.80": "RGB",
        "1.2.840.10008.1.2.4.70": "RGB",
        "1.2.840.10008.1.2.5": "RGB",
    }
    for target, photometric in expected.items():
        ds = dcmread(io.BytesIO(transcode.transcode(rgb, target)))
        assert ds.PhotometricInterpretation == photometric, target
        assert ds.PlanarConfiguration == 0


def test_jpeg_2000_is_a_bare_codestream_with_bits_stored_precision() -> None:
    out = transcode.transcode(_source("emri_small.dcm"), "1.2.840.10008.1.2.4.90")
    frame = next(generate_frames(dcmread(io.BytesIO(out)).PixelData, number_of_frames=10))
    assert frame[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: no JP2 boxes (PS3.5 A.4.4)
    assert (frame[4 + 2 + 36] & 0x7F) + 1 == 12  # Ssiz of the first component


def test_htj2k_rpcl_has_rpcl_order_and_a_tlm_marker() -> None:
    out = transcode.transcode(_source("CT_small.dcm"), "1.2.840.10008.1.2.4.202")
    frame = next(generate_frames(dcmread(io.BytesIO(out)).PixelData, number_of_frames=1))
    markers = _main_header_markers(frame)
    assert markers[0xFF52][1] == 2  # COD: progression order RPCL
    assert 0xFF55 in markers  # TLM
    assert np.array_equal(_decoded(out), _reference("CT_small.dcm"))


def _main_header_markers(codestream: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    pos = 2
    while pos + 4 <= len(codestream):
        marker, length = struct.unpack(">HH", codestream[pos : pos + 4])
        if marker == 0xFF90:  # SOT: the main header ends
            break
        found[marker] = codestream[pos + 4 : pos + 2 + length]
        pos += 2 + length
    return found


def _smooth_rgb() -> bytes:
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    ds = make_ct(rows=64, cols=64)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = rgb.tobytes()
    return part10_bytes(ds)


LOSSY = {
    "1.2.840.10008.1.2.4.50": ("ISO_10918_1", 3.0),
    "1.2.840.10008.1.2.4.81": ("ISO_14495_1", 2.0),
    "1.2.840.10008.1.2.4.91": ("ISO_15444_1", 3.0),
    "1.2.840.10008.1.2.4.203": ("ISO_15444_15", 3.0),
}


@pytest.mark.parametrize(("target", "expected"), LOSSY.items())
def test_lossy_targets_only_when_asked_and_marked(target: str, expected: tuple[str, float]) -> None:
    method, mean_error = expected
    source = _smooth_rgb()
    with pytest.raises(TranscodeUnsupported, match="lossy"):
        transcode.transcode(source, target)

    out = transcode.transcode(source, target, allow_lossy=True, quality=90)

    ds = dcmread(io.BytesIO(out))
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == method
    assert float(ds.LossyImageCompressionRatio) > 1.0
    assert ds.SOPInstanceUID == dcmread(io.BytesIO(source)).SOPInstanceUID  # see module doc
    error = np.abs(_decoded(out).astype(int) - dcmread(io.BytesIO(source)).pixel_array)
    assert error.mean() < mean_error


def test_jpeg_extended_takes_12_bits_and_lossy_history_accumulates() -> None:
    source = _source("MR2_J2KI.dcm")  # already lossy (J2K irreversible), 12 bits stored
    out = transcode.transcode(source, "1.2.840.10008.1.2.4.51", allow_lossy=True)

    ds = dcmread(io.BytesIO(out))
    original = dcmread(pydicom_file("MR2_J2KI.dcm"), stop_before_pixels=True)
    previous = list(np.atleast_1d(original.get("LossyImageCompressionMethod", [])))
    assert list(np.atleast_1d(ds.LossyImageCompressionMethod)) == [*previous, "ISO_10918_1"]
    error = np.abs(_decoded(out).astype(int) - _reference("MR2_J2KI.dcm").astype(int))
    assert error.mean() < 8


def test_quality_changes_the_size() -> None:
    source = _smooth_rgb()
    sizes = [
        len(transcode.transcode(source, "1.2.840.10008.1.2.4.50", allow_lossy=True, quality=q))
        for q in (20, 95)
    ]
    assert sizes[0] < sizes[1]


def test_jpeg_xl_round_trip_through_our_own_decoder() -> None:
    out = transcode.transcode(_source("SC_rgb.dcm"), JPEG_XL)
    assert dcmread(io.BytesIO(out)).file_meta.TransferSyntaxUID == JPEG_XL
    back = transcode.transcode(out, "1.2.840.10008.1.2.4.80")  # JPEG XL -> decode -> JPEG-LS
    assert np.array_equal(dcmread(io.BytesIO(back)).pixel_array, _reference("SC_rgb.dcm"))


def test_refusals_name_the_reason() -> None:
    ct = _source("CT_small.dcm")
    cases = [
        ("1.2.840.10008.1.2.4.92", "not supported"),  # JPEG 2000 Part 2: no encoder
        ("1.2.840.10008.1.2.4.50", "8 to 8 bits stored"),  # 16-bit into baseline
    ]
    for target, reason in cases:
        with pytest.raises(TranscodeUnsupported, match=reason):
            transcode.transcode(ct, target, allow_lossy=True)
    with pytest.raises(TranscodeUnsupported, match="Part-10"):
        transcode.transcode(b"not DICOM", EXPLICIT)
    assert "video" in transcode.refusal("1.2.840.10008.1.2.4.102", EXPLICIT)
    assert "palette" in transcode.refusal(
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.91",
        transcode.spec_of(dcmread(pydicom_file("OBXXXX1A_rle.dcm"))),
        allow_lossy=True,
    )


def test_video_is_refused_with_the_reason() -> None:
    ds = make_ct(rows=8, cols=8)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    data = part10_bytes(ds)
    with pytest.raises(TranscodeUnsupported, match="video"):
        transcode.transcode(data, "1.2.840.10008.1.2.4.80")
    assert transcode.transcode(data, "1.2.840.10008.1.2.4.102") is data


def test_an_instance_without_pixels_is_re_encoded_for_any_target() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2", "1.2.4"
    ds.Modality, ds.PatientName = "SR", "Doe^Jane"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.92")  # no decoder, no pixels
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        ds.SOPClassUID,
        ds.SOPInstanceUID,
    )
    data = part10_bytes(ds)
    for target in (EXPLICIT, IMPLICIT, "1.2.840.10008.1.2.4.80"):
        out = dcmread(io.BytesIO(transcode.transcode(data, target)))
        assert out.file_meta.TransferSyntaxUID == target and out.PatientName == "Doe^Jane"
