"""api.rendering.render_for_print: stored values -> what a grayscale printer is sent.

Expected values are worked out by hand from PS3.3 C.11 (the arithmetic is in
the comments), and a property test checks the window against pydicom's own
apply_modality_lut + apply_windowing, an implementation independent of ours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_modality_lut, apply_windowing
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from api.pixels import TranscodeUnsupported
from api.print_scu import image_box_pixels
from api.rendering import render_for_print

# CT in Hounsfield units after Rescale Intercept -1024 (stored = HU + 1024).
HU = [-200, -100, 0, 39, 40, 41, 239, 240, 3071]
# LINEAR window c=40, w=400: 0 at or below c-0.5-(w-1)/2 = -160, full above
# c-0.5+(w-1)/2 = 239, else ((x-39.5)/399 + 0.5) * top:
#   -100 -> 0.150376, 0 -> 0.401003, 39 -> 0.498747, 40 -> 0.501253,
#   41 -> 0.503759, 239 -> 1.0
CT_8 = [0, 38, 102, 127, 128, 128, 255, 255, 255]
CT_12 = [0, 616, 1642, 2042, 2053, 2063, 4095, 4095, 4095]


def image(
    pixels: NDArray[Any],
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    **attrs: Any,
) -> Dataset:
    """A native Explicit VR LE single-sample image of `pixels` (2-D, or 3-D frames)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    frames = pixels if pixels.ndim == 3 else pixels[np.newaxis]
    if frames.shape[0] > 1:
        ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    allocated = 8 * pixels.dtype.itemsize
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def row(values: list[int], dtype: str = "<u2") -> NDArray[Any]:
    return np.array([values], dtype=dtype)


def ct(**attrs: Any) -> Dataset:
    stored = row([hu + 1024 for hu in HU])
    defaults: dict[str, Any] = {
        "RescaleSlope": 1,
        "RescaleIntercept": -1024,
        "WindowCenter": 40,
        "WindowWidth": 400,
    }
    return image(stored, bits_stored=12, **(defaults | attrs))


def rendered(ds: Dataset, bits: int = 8, frame: int = 0) -> list[int]:
    out = render_for_print(ds, bits=bits, frame=frame)
    assert out.dtype == (np.uint8 if bits == 8 else np.uint16)
    return [int(v) for v in out.ravel()]


# ---------------------------------------------------------------- grayscale


def test_ct_rescale_and_window_in_8_and_12_bits() -> None:
    assert rendered(ct(), 8) == CT_8
    assert rendered(ct(), 12) == CT_12


def test_monochrome1_is_inverted_so_the_printer_gets_monochrome2() -> None:
    assert rendered(ct(PhotometricInterpretation="MONOCHROME1"), 8) == [255 - v for v in CT_8]
    assert rendered(ct(PhotometricInterpretation="MONOCHROME1"), 12) == [4095 - v for v in CT_12]


def test_first_of_several_windows_is_used() -> None:
    several = ct(WindowCenter=[40, 300], WindowWidth=[400, 1500])
    assert rendered(several) == CT_8


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_signed_input_with_slope_and_intercept(bits_stored: int) -> None:
    stored = [-2000, -500, 0, 500, 2000]
    # 12 bits stored: the two's complement is kept in 12 bits, high bits clear,
    # so the decoder must sign-extend from bit 11.
    raw = row(stored, "<i2") if bits_stored == 16 else (row(stored, "<i2") & 0x0FFF)
    ds = image(
        raw.astype("<i2"),
        bits_stored=bits_stored,
        RescaleSlope=2,
        RescaleIntercept=10,
        WindowCenter=10,
        WindowWidth=4001,
    )
    # values 2x+10: -3990, -990, 10, 1010, 4010; window edges -1990.5 / 2009.5;
    # ((x-9.5)/4000 + 0.5)*255: -990 -> 63.78, 10 -> 127.53, 1010 -> 191.28
    assert rendered(ds) == [0, 64, 128, 191, 255]


def test_no_window_maps_min_to_black_and_max_to_white() -> None:
    ds = image(row([100, 200, 300, 500]), bits_stored=12)
    # (x-100)/400: 0, 0.25, 0.5, 1 (ties round to even)
    assert rendered(ds, 8) == [0, 64, 128, 255]
    assert rendered(ds, 12) == [0, 1024, 2048, 4095]
    assert rendered(image(row([7, 7, 7]))) == [0, 0, 0]


def test_linear_exact_and_sigmoid_voi_functions() -> None:
    values = row([0, 50, 100, 150, 200])
    exact = image(values, WindowCenter=100, WindowWidth=200, VOILUTFunction="LINEAR_EXACT")
    # (x-100)/200 + 0.5: 0, 0.25, 0.5, 0.75, 1
    assert rendered(exact) == [0, 64, 128, 191, 255]
    sigmoid = image(values, WindowCenter=100, WindowWidth=200, VOILUTFunction="SIGMOID")
    # 255 / (1 + exp(-4(x-100)/200)) = 255 / (1 + e^2, e^1, e^0, e^-1, e^-2):
    # 30.40, 68.58, 127.5, 186.42, 224.60
    assert rendered(sigmoid) == [30, 69, 128, 186, 225]


def test_window_width_one_is_a_threshold() -> None:
    ds = image(row([9, 10, 11]), WindowCenter=10, WindowWidth=1)
    # LINEAR, w=1: black at or below c-0.5, white above
    assert rendered(ds) == [0, 255, 255]


def _voi_lut(lut_data: Any, vr: str) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4, 10, 8]  # 4 entries, first maps 10, 8-bit entries
    item.add_new(0x00283006, vr, lut_data)
    return item


@pytest.mark.parametrize(
    ("lut_data", "vr"),
    [([0, 50, 200, 255], "US"), (np.array([0, 50, 200, 255], "<u2").tobytes(), "OW")],
)
def test_voi_lut_sequence(lut_data: Any, vr: str) -> None:
    ds = image(row([5, 10, 11, 12, 13, 20]), VOILUTSequence=[_voi_lut(lut_data, vr)])
    # index clip(x - 10, 0, 3) -> entries 0, 0, 50, 200, 255, 255 of 255
    assert rendered(ds, 8) == [0, 0, 50, 200, 255, 255]
    # x 4095/255: 50 -> 802.94, 200 -> 3211.76
    assert rendered(ds, 12) == [0, 0, 803, 3212, 4095, 4095]


def test_window_is_preferred_to_a_voi_lut() -> None:
    lut = _voi_lut([255, 255, 255, 255], "US")
    ds = image(row([0, 50, 100]), VOILUTSequence=[lut], WindowCenter=50, WindowWidth=100)
    # ((50-49.5)/99 + 0.5) * 255 = 128.79; the all-white LUT is not used
    assert rendered(ds) == [0, 129, 255]


def test_modality_lut_sequence() -> None:
    item = Dataset()
    item.LUTDescriptor = [4, 0, 12]
    item.ModalityLUTType = "HU"
    item.LUTData = [0, 1000, 2000, 4095]
    ds = image(row([0, 1, 2, 3]), ModalityLUTSequence=[item])
    # values 0, 1000, 2000, 4095, min-max: 62.27, 124.54
    assert rendered(ds) == [0, 62, 125, 255]


def test_enhanced_multi_frame_takes_each_frames_window() -> None:
    frames = np.array([[[0, 100, 200, 300, 400]]] * 2, dtype="<u2")

    def group(center: int) -> Dataset:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = center, 400, "LINEAR_EXACT"
        item = Dataset()
        item.FrameVOILUTSequence = [voi]
        return item

    shared = Dataset()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, 0, "US"
    shared.PixelValueTransformationSequence = [transform]
    ds = image(
        frames,
        SharedFunctionalGroupsSequence=[shared],
        PerFrameFunctionalGroupsSequence=[group(200), group(400)],
    )
    # frame 1: (x-200)/400 + 0.5; frame 2: (x-400)/400 + 0.5
    assert rendered(ds, frame=0) == [0, 64, 128, 191, 255]
    assert rendered(ds, frame=1) == [0, 0, 0, 64, 128]


# ---------------------------------------------------------------- colour, codecs, limits


def test_colour_prints_as_luminance() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    ds = image(rgb[..., 0], photometric="RGB")
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = rgb.tobytes()
    # BT.601: 0.299*255, 0.587*255, 0.114*255
    assert rendered(ds) == [76, 150, 29, 255]


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
)
def test_compressed_images_render_like_their_uncompressed_twin(name: str) -> None:
    reference = render_for_print(dcmread(_testdata("MR_small.dcm")), bits=12)
    assert np.array_equal(render_for_print(dcmread(_testdata(name)), bits=12), reference)


def test_undecodable_pixels_are_refused_with_the_reason() -> None:
    ds = ct()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG-2: never decoded
    with pytest.raises(TranscodeUnsupported, match="video"):
        render_for_print(ds)


def test_only_8_or_12_bits() -> None:
    with pytest.raises(ValueError, match="bits"):
        render_for_print(ct(), bits=10)


def _testdata(name: str) -> str:
    found = get_testdata_file(name)
    assert isinstance(found, str), name
    return found


# ---------------------------------------------------------------- against pydicom


@settings(max_examples=60, deadline=None)
@given(
    stored=st.lists(st.integers(0, 4095), min_size=1, max_size=40),
    slope=st.sampled_from([1.0, 0.5, 2.0, 1.5]),
    intercept=st.integers(-2048, 2048),
    center=st.integers(-3000, 5000),
    width=st.integers(2, 6000),
    exact=st.booleans(),
    bits=st.sampled_from([8, 12]),
)
def test_window_agrees_with_pydicom(
    stored: list[int],
    slope: float,
    intercept: int,
    center: int,
    width: int,
    exact: bool,
    bits: int,
) -> None:
    function = "LINEAR_EXACT" if exact else "LINEAR"
    ds = image(
        row(stored),
        bits_stored=12,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=center,
        WindowWidth=width,
        VOILUTFunction=function,
    )
    # pydicom windows onto the rescaled stored range [y_min, y_max]
    y_min, y_max = intercept, 4095 * slope + intercept
    windowed = apply_windowing(apply_modality_lut(row(stored), ds), ds)
    top = (1 << bits) - 1
    expected = np.rint((windowed - y_min) / (y_max - y_min) * top)
    assert np.abs(render_for_print(ds, bits=bits).astype(int) - expected).max() <= 1


# ---------------------------------------------------------------- image box item


def test_image_box_item_for_8_and_12_bits() -> None:
    eight = image_box_pixels(np.array([[0, 255]], dtype=np.uint8))
    assert (eight.BitsAllocated, eight.BitsStored, eight.HighBit) == (8, 8, 7)
    assert eight["PixelData"].VR == "OB" and eight.PixelData == b"\x00\xff"
    twelve = image_box_pixels(np.array([[0, 4095]], dtype=np.uint16))
    assert (twelve.BitsAllocated, twelve.BitsStored, twelve.HighBit) == (16, 12, 11)
    assert twelve["PixelData"].VR == "OW" and twelve.PixelData == b"\x00\x00\xff\x0f"
    for item in (eight, twelve):
        assert item.PhotometricInterpretation == "MONOCHROME2"
        assert (item.SamplesPerPixel, item.PixelRepresentation) == (1, 0)
        assert (item.Rows, item.Columns) == (1, 2)
    with pytest.raises(ValueError):
        image_box_pixels(np.array([[4096]], dtype=np.uint16))
