"""api.pixels: conversion to Explicit VR Little Endian keeps the pixels (and everything else).

References are independent of the code under test wherever one exists: the
uncompressed twin of a pydicom test file, pydicom's own pillow decode for
JPEG baseline, liblj92 (imagecodecs.ljpeg_decode) for JPEG lossless, and
dcmtk's dcmdjpeg output (pinned by hash) for 12-bit JPEG extended.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import imagecodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    JPEG2000MC,
    MPEG4HP41,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from api import pixels
from api.pixels import TranscodeUnsupported, can_transcode, to_explicit_le

# pydicom says so when a file labelled RGB carries a JFIF (YCbCr) codestream.
pytestmark = pytest.mark.filterwarnings("ignore:.*JFIF APP marker:UserWarning")

# Pixel-module attributes a decompression may legitimately change.
_PIXEL_MODULE = {
    "PixelData",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "LossyImageCompression",
    "NumberOfFrames",
}


def _path(name: str) -> str:
    found = get_testdata_file(name)
    assert found is not None, name
    return str(found)


def _twin(name: str) -> Callable[[], NDArray[Any]]:
    return lambda: dcmread(_path(name)).pixel_array


def _pillow(name: str) -> Callable[[], NDArray[Any]]:
    return lambda: pixel_array(_path(name), decoding_plugin="pillow")


def _liblj92(name: str) -> Callable[[], NDArray[Any]]:
    def decode() -> NDArray[Any]:
        ds = dcmread(_path(name))
        frames = generate_frames(ds.PixelData, number_of_frames=1)
        decoded: NDArray[Any] = imagecodecs.ljpeg_decode(next(frames))
        return decoded

    return decode


def _converted(name: str) -> Dataset:
    with open(_path(name), "rb") as fh:
        return dcmread(io.BytesIO(to_explicit_le(fh.read())))


CASES = [
    # (file, reference, expected Photometric Interpretation)
    ("SC_rgb_jpeg_dcmtk.dcm", _pillow("SC_rgb_jpeg_dcmtk.dcm"), "RGB"),
    ("examples_ybr_color.dcm", _pillow("examples_ybr_color.dcm"), "RGB"),
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", _pillow("SC_rgb_dcmtk_+eb+cy+s2.dcm"), "RGB"),
    ("SC_jpeg_no_color_transform.dcm", _pillow("SC_jpeg_no_color_transform.dcm"), "RGB"),
    ("JPEG-LL.dcm", _liblj92("JPEG-LL.dcm"), "MONOCHROME2"),
    ("SC_rgb_jpeg_gdcm.dcm", _twin("SC_rgb.dcm"), "RGB"),
    ("emri_small_jpeg_2k_lossless.dcm", _twin("emri_small.dcm"), "MONOCHROME2"),
    ("emri_small_jpeg_ls_lossless.dcm", _twin("emri_small.dcm"), "MONOCHROME2"),
    ("MR_small_jpeg_ls_lossless.dcm", _twin("MR_small.dcm"), "MONOCHROME2"),
    ("MR_small_RLE.dcm", _twin("MR_small.dcm"), "MONOCHROME2"),
    ("SC_rgb_rle_2frame.dcm", _twin("SC_rgb_2frame.dcm"), "RGB"),
    ("MR_small_bigendian.dcm", _twin("MR_small.dcm"), "MONOCHROME2"),
    ("emri_small_big_endian.dcm", _twin("emri_small.dcm"), "MONOCHROME2"),
    ("MR_small_implicit.dcm", _twin("MR_small.dcm"), "MONOCHROME2"),
    ("image_dfl.dcm", _twin("image_dfl.dcm"), "MONOCHROME2"),
]


@pytest.mark.parametrize(("name", "reference", "photometric"), CASES, ids=[c[0] for c in CASES])
def test_pixels_survive_conversion(
    name: str, reference: Callable[[], NDArray[Any]], photometric: str
) -> None:
    out = _converted(name)
    expected = reference()
    got = out.pixel_array
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == photometric
    assert got.shape == expected.shape
    # Same bits: the reference may differ only in signed/unsigned view.
    unsigned = f"u{got.dtype.itemsize}"
    assert np.array_equal(got.view(unsigned), expected.view(unsigned))
    if out.get("SamplesPerPixel", 1) > 1:
        assert out.PlanarConfiguration == 0


def test_jpeg_extended_12_bit_matches_dcmtk() -> None:
    # sha256 of `dcmdjpeg JPGExtended.dcm` pixel data (dcmtk 3.6), little endian.
    out = _converted("JPGExtended.dcm")
    assert out.BitsStored == 12
    digest = hashlib.sha256(out.pixel_array.astype("<u2").tobytes()).hexdigest()
    assert digest == "d30242775a414c01d616447854ebe3f2b20259822894bcd6891f879bcdcbf313"
    assert out.LossyImageCompression == "01"


def test_everything_but_the_pixel_module_is_kept() -> None:
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        original = dcmread(_path(name))
        out = _converted(name)
        assert out.SOPInstanceUID == original.SOPInstanceUID
        assert out.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        for element in original:
            if element.keyword not in _PIXEL_MODULE:
                assert out[element.tag].value == element.value, (name, element.keyword)


def test_lossy_source_is_marked_and_offset_tables_dropped() -> None:
    out = _converted("SC_rgb_jpeg_dcmtk.dcm")
    assert out.LossyImageCompression == "01"
    assert "ExtendedOffsetTable" not in out
    assert not out["PixelData"].is_undefined_length


def test_explicit_le_comes_back_untouched_and_streams_are_read() -> None:
    with open(_path("MR_small.dcm"), "rb") as fh:
        data = fh.read()
    assert to_explicit_le(data) is data
    with open(_path("MR_small_RLE.dcm"), "rb") as fh:
        assert dcmread(io.BytesIO(to_explicit_le(fh))).file_meta.TransferSyntaxUID == (
            ExplicitVRLittleEndian
        )


def _file(ds: Dataset, ts: str, *, little: bool = True, implicit: bool = False) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    fds = FileDataset("", ds, file_meta=meta, preamble=b"\0" * 128)
    out = io.BytesIO()
    dcmwrite(out, fds, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    return out.getvalue()


def _image(rows: int, cols: int, frames: int, spp: int, bits: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, spp
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "RGB" if spp == 3 else "MONOCHROME2"
    if spp == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _pixels(draw: st.DrawFn) -> tuple[Dataset, NDArray[Any]]:
    rows, cols = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    frames, spp = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3]))
    bits = 8 if spp == 3 else draw(st.sampled_from([8, 16]))
    shape = (frames, rows, cols, spp)
    seed = draw(st.integers(0, 2**32 - 1))
    arr = np.random.default_rng(seed).integers(0, 2**bits, size=shape, dtype=f"u{bits // 8}")
    return _image(rows, cols, frames, spp, bits), arr


@st.composite
def images(draw: st.DrawFn) -> tuple[Dataset, NDArray[Any]]:
    return _pixels(draw)


def _expected(ds: Dataset, arr: NDArray[Any]) -> NDArray[Any]:
    out = arr[0] if arr.shape[0] == 1 else arr
    return out[..., 0] if ds.SamplesPerPixel == 1 else out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images(), st.sampled_from(["rle", "jpegls", "ljpeg"]))
def test_lossless_codecs_round_trip_exactly(
    image: tuple[Dataset, NDArray[Any]], codec: str
) -> None:
    ds, arr = image
    if codec == "rle":
        ds.PixelData = arr.tobytes()
        ds.compress(RLELossless, arr=_expected(ds, arr), generate_instance_uid=False)
        ts = RLELossless
    else:
        # pyjpegls' encoder overflows on tiny noise images; CharLS via imagecodecs does not.
        plain = arr[..., 0] if ds.SamplesPerPixel == 1 else arr
        if codec == "jpegls":
            ts, frames = JPEGLSLossless, [imagecodecs.jpegls_encode(f) for f in plain]
        else:
            ts = JPEGLosslessSV1
            frames = [imagecodecs.jpeg8_encode(f, lossless=True, predictor=1) for f in plain]
        ds.PixelData = encapsulate([bytes(f) for f in frames])
        ds["PixelData"].VR = "OB"
    got = dcmread(io.BytesIO(to_explicit_le(_file(ds, ts)))).pixel_array
    assert np.array_equal(got, _expected(ds, arr))


@settings(max_examples=25, deadline=None)
@given(images(), st.binary(min_size=0, max_size=16).filter(lambda b: len(b) % 2 == 0))
def test_big_endian_binary_values_are_swapped(
    image: tuple[Dataset, NDArray[Any]], private: bytes
) -> None:
    ds, arr = image
    big = arr.astype(arr.dtype.newbyteorder(">"))
    ds.PixelData = big.tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    ds.private_block(0x0011, "CHRONICLE TEST", create=True).add_new(0x01, "OW", private)
    ds.WindowCenter = 40
    out = dcmread(io.BytesIO(to_explicit_le(_file(ds, ExplicitVRBigEndian, little=False))))
    assert np.array_equal(out.pixel_array, _expected(ds, arr))
    swapped = np.frombuffer(private, ">u2").astype("<u2").tobytes()
    assert (out.private_block(0x0011, "CHRONICLE TEST")[0x01].value or b"") == swapped
    assert out.Rows == ds.Rows and out.WindowCenter == 40


def test_encapsulated_icon_in_a_sequence_is_decoded_too() -> None:
    ds, arr = _image(6, 5, 1, 1, 16), np.arange(30, dtype="<u2").reshape(6, 5)
    ds.PixelData = arr.tobytes()
    ds.compress(RLELossless, arr, generate_instance_uid=False)
    icon, icon_arr = _image(4, 4, 1, 1, 8), np.arange(16, dtype="u1").reshape(4, 4)
    icon.PixelData = icon_arr.tobytes()
    icon.file_meta = FileMetaDataset()
    icon.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    icon.compress(RLELossless, icon_arr, generate_instance_uid=False)
    del icon.file_meta
    ds.IconImageSequence = [icon]
    out = dcmread(io.BytesIO(to_explicit_le(_file(ds, RLELossless))))
    assert np.array_equal(out.pixel_array, arr)
    nested = out.IconImageSequence[0]
    assert not nested["PixelData"].is_undefined_length
    assert nested.PixelData == icon_arr.tobytes()


def test_implicit_private_elements_are_kept() -> None:
    ds = _image(2, 2, 1, 1, 8)
    ds.PixelData = bytes(range(4))
    ds.private_block(0x0011, "CHRONICLE TEST", create=True).add_new(0x02, "LO", "kept")
    out = dcmread(io.BytesIO(to_explicit_le(_file(ds, ImplicitVRLittleEndian, implicit=True))))
    assert out.private_block(0x0011, "CHRONICLE TEST")[0x02].value in ("kept", b"kept")
    assert out.pixel_array.tobytes() == bytes(range(4))


def test_video_is_never_decoded() -> None:
    ds = _image(2, 2, 1, 3, 8)
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 12])
    with pytest.raises(TranscodeUnsupported, match="video"):
        to_explicit_le(_file(ds, MPEG4HP41))
    assert not can_transcode(MPEG4HP41, ExplicitVRLittleEndian)
    assert can_transcode(MPEG4HP41, MPEG4HP41)


def test_undecodable_and_corrupt_data_are_refused() -> None:
    ds = _image(2, 2, 1, 1, 8)
    ds.PixelData = encapsulate([b"\xff\xd8 not a codestream \xff\xd9"])
    with pytest.raises(TranscodeUnsupported, match="no decoder"):
        to_explicit_le(_file(ds, JPEG2000MC))
    with pytest.raises(TranscodeUnsupported, match="cannot decode"):
        to_explicit_le(_file(ds, JPEGBaseline8Bit))
    with pytest.raises(TranscodeUnsupported, match="Part-10"):
        to_explicit_le(b"not dicom at all")


def test_can_transcode_matrix() -> None:
    explicit = str(ExplicitVRLittleEndian)
    for ts in (
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
        JPEGBaseline8Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.51",
    ):
        assert can_transcode(str(ts), explicit), ts
    assert can_transcode(explicit, explicit)
    assert not can_transcode(str(JPEG2000MC), explicit)
    assert not can_transcode("1.2.840.10008.1.2.4.110", explicit)  # JPEG XL: unknown to pydicom
    assert not can_transcode(explicit, str(JPEGBaseline8Bit))  # encoding comes later
    assert set(pixels.decodable_transfer_syntaxes()) >= {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    }
