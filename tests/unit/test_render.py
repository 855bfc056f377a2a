"""api.render: the rendered-image pipeline, checked pixel by pixel.

Expected grey levels are worked out by hand from PS3.3 C.11 (arithmetic in
the comments) or computed by pydicom's own LUT functions, which are
independent of ours; colour is checked against the PS3.3 C.7.6.3.1.2 YBR
equations and against pydicom-data's RGB twins of the YBR and palette files.
"""

from __future__ import annotations

import io
from typing import Any

import imagecodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from api.pixels import TranscodeUnsupported
from api.render import (
    RenderParams,
    display_frame_ms,
    encode_images,
    grayscale_level,
    render_frame,
)
from api.render_geometry import MAX_OUTPUT_PIXELS, fitted_size

# CT in Hounsfield units, stored = HU + 1024.
HU = [-200, -100, 0, 39, 40, 41, 239, 240, 3071]
# LINEAR c=40 w=400: 0 at or below -160, 255 above 239, else
# ((x-39.5)/399 + 0.5) * 255: -100 -> 38.3, 0 -> 102.2, 39 -> 127.2, 40 -> 127.8, 41 -> 128.5
CT_40_400 = [0, 38, 102, 127, 128, 128, 255, 255, 255]


def image(pixels: NDArray[Any], photometric: str = "MONOCHROME2", **attrs: Any) -> Dataset:
    """A native single-sample image of `pixels` (2-D, or 3-D frames)."""
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
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def ct(**attrs: Any) -> Dataset:
    stored = np.array([[hu + 1024 for hu in HU]], dtype="<u2")
    return image(stored, RescaleSlope=1, RescaleIntercept=-1024, **attrs)


def grey(ds: Dataset, params: RenderParams | None = None, frame: int = 0) -> list[int]:
    rendered = render_frame(ds, frame, params or RenderParams())
    assert rendered.mode == "L"
    return [int(v) for v in np.asarray(rendered).ravel()]


def pixels_of(ds: Dataset, params: RenderParams | None = None, frame: int = 0) -> NDArray[Any]:
    return np.asarray(render_frame(ds, frame, params or RenderParams())).astype(np.int64)


def pydicom_file(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return dcmread(path)


# ---------------------------------------------------------------- grayscale


def test_window_parameter_maps_known_hounsfield_units() -> None:
    assert grey(ct(), RenderParams(window=(40, 400, "linear"))) == CT_40_400


def test_dataset_window_when_no_parameter_and_parameter_overrides_it() -> None:
    assert grey(ct(WindowCenter=40, WindowWidth=400)) == CT_40_400
    # A presentation state (or the window parameter) passes its own VOI: it wins.
    narrow = ct(WindowCenter=1000, WindowWidth=10, VOILUTFunction="SIGMOID")
    assert grey(narrow, RenderParams(window=(40, 400, "LINEAR"))) == CT_40_400


def test_window_parameter_wins_over_a_voi_lut_sequence() -> None:
    lut = Dataset()
    lut.LUTDescriptor = [2, 0, 8]
    lut.LUTData = [255, 255]
    assert grey(ct(VOILUTSequence=[lut]), RenderParams(window=(40, 400, "linear"))) == CT_40_400


def test_linear_exact_and_sigmoid_window_functions() -> None:
    values = np.array([[0, 50, 100, 150, 200]], dtype="<u2")
    # (x-100)/200 + 0.5 = 0, 0.25, 0.5, 0.75, 1 (x255, ties to even)
    exact = RenderParams(window=(100, 200, "linear-exact"))
    assert grey(image(values), exact) == [0, 64, 128, 191, 255]
    # 255 / (1 + exp(-4(x-100)/200)): 30.40, 68.58, 127.5, 186.42, 224.60
    sigmoid = RenderParams(window=(100, 200, "sigmoid"))
    assert grey(image(values), sigmoid) == [30, 69, 128, 186, 225]


def test_monochrome1_and_inverse_presentation_lut_are_inverted() -> None:
    params = RenderParams(window=(40, 400, "linear"))
    inverted = [255 - v for v in CT_40_400]
    assert grey(ct(PhotometricInterpretation="MONOCHROME1"), params) == inverted
    assert grey(ct(PresentationLUTShape="INVERSE"), params) == inverted
    # MONOCHROME1 with INVERSE (as DX For Presentation declares it) inverts once.
    both = ct(PhotometricInterpretation="MONOCHROME1", PresentationLUTShape="INVERSE")
    assert grey(both, params) == inverted


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    signed=st.booleans(),
    spread=st.integers(1, 3000),
    slope=st.sampled_from([1.0, 0.5, 2.0, -1.0]),
    intercept=st.integers(-1024, 1024),
    window=st.one_of(
        st.none(),
        st.tuples(
            st.floats(-2000, 2000),
            st.floats(0.5, 4000),
            st.sampled_from(["linear", "linear-exact", "sigmoid"]),
        ),
    ),
)
def test_table_path_equals_the_per_pixel_pipeline(
    seed: int,
    signed: bool,
    spread: int,
    slope: float,
    intercept: int,
    window: tuple[float, float, str] | None,
) -> None:
    # 64 x 64 integer pixels over a narrower range than their count: the table path.
    rng = np.random.default_rng(seed)
    low = -spread // 2 if signed else 0
    stored = rng.integers(low, low + spread, (64, 64)).astype("<i2" if signed else "<u2")
    ds = image(stored, RescaleSlope=slope, RescaleIntercept=intercept)
    params = RenderParams(window=window)
    expected = np.rint(np.clip(grayscale_level(stored, ds, 0, params.window), 0, 1) * 255)
    assert np.array_equal(pixels_of(ds, params), expected.astype(np.int64))


def test_no_window_maps_the_frame_range() -> None:
    ds = image(np.array([[100, 200, 300, 500]], dtype="<u2"))
    # (x-100)/400 = 0, 0.25, 0.5, 1
    assert grey(ds) == [0, 64, 128, 255]


def test_modality_lut_sequence_matches_pydicom() -> None:
    ds = pydicom_file("mlut_18.dcm")
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = np.rint((values - values.min()) / (values.max() - values.min()) * 255)
    assert np.array_equal(pixels_of(ds), expected.astype(np.int64))


def test_voi_lut_sequence_matches_pydicom() -> None:
    ds = pydicom_file("vlut_04.dcm")
    depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    expected = np.rint(apply_voi_lut(ds.pixel_array, ds).astype(np.float64) * 255 / (2**depth - 1))
    assert np.array_equal(pixels_of(ds), expected.astype(np.int64))


def test_multi_frame_renders_the_frame_asked_for() -> None:
    frames = np.array([[[0, 10]], [[0, 20]], [[5, 30]]], dtype="<u2")
    ds = image(frames, WindowCenter=10, WindowWidth=20, VOILUTFunction="LINEAR_EXACT")
    # (x-10)/20 + 0.5: 0 -> 0, 10 -> 0.5, 20 -> 1, 5 -> 0.25, 30 -> 1.5 (clipped)
    assert [grey(ds, frame=f) for f in range(3)] == [[0, 128], [0, 255], [64, 255]]
    with pytest.raises(ValueError, match="frame 4"):
        render_frame(ds, 3, RenderParams())


@pytest.mark.parametrize(
    "compressed",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_and_other_encodings_render_like_the_native_file(compressed: str) -> None:
    native = pixels_of(pydicom_file("MR_small.dcm"))
    assert np.array_equal(pixels_of(pydicom_file(compressed)), native)


def test_multi_frame_compressed_frames_match_native_frames() -> None:
    native, rle = pydicom_file("emri_small.dcm"), pydicom_file("emri_small_RLE.dcm")
    for frame in (0, 4, 9):
        assert np.array_equal(pixels_of(rle, frame=frame), pixels_of(native, frame=frame))


def test_instance_without_pixels_is_unsupported() -> None:
    with pytest.raises(TranscodeUnsupported, match="no Pixel Data"):
        render_frame(pydicom_file("test-SR.dcm"), 0, RenderParams())


# ---------------------------------------------------------------- colour


def test_palette_colour_through_its_lookup_tables() -> None:
    ds = image(np.array([[0, 1, 128, 255]], dtype="u1"), photometric="PALETTE COLOR")
    for colour, entries in (
        ("Red", [i * 257 for i in range(256)]),  # 16-bit entries i*257 -> 8-bit i
        ("Green", [(255 - i) * 257 for i in range(256)]),
        ("Blue", [65535] * 256),
    ):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(entries, "<u2").tobytes())
    rendered = render_frame(ds, 0, RenderParams())
    assert rendered.mode == "RGB"
    expected = [(0, 255, 255), (1, 254, 255), (128, 127, 255), (255, 0, 255)]
    assert [tuple(int(c) for c in p) for p in np.asarray(rendered)[0]] == expected


def test_palette_file_matches_pydicoms_colour_lut() -> None:
    ds = pydicom_file("OBXXXX1A.dcm")
    rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    top = 65535.0 if rgb.max() > 255 else 255.0
    expected = np.rint(rgb * 255 / top).astype(np.int64)
    assert np.abs(pixels_of(ds) - expected).max() <= 1


def ybr_to_rgb(y: float, cb: float, cr: float) -> list[int]:
    """PS3.3 C.7.6.3.1.2 YBR_FULL -> RGB."""
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    return [int(np.clip(round(v), 0, 255)) for v in (r, g, b)]


def test_ybr_full_is_converted_with_the_standard_equations() -> None:
    samples = [(128, 128, 128), (76, 85, 255), (150, 44, 21), (29, 255, 107)]
    ds = image(np.zeros((1, 4), dtype="u1"))
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = np.array([samples], dtype="u1").tobytes()
    rendered = np.asarray(render_frame(ds, 0, RenderParams())).astype(int)
    for got, sample in zip(rendered[0], samples, strict=True):
        assert np.abs(got - ybr_to_rgb(*sample)).max() <= 1


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [
        # The files' own YBR samples were rounded to 8 bits: a few levels off.
        ("SC_ybr_full_uncompressed.dcm", 8),
        ("SC_ybr_full_422_uncompressed.dcm", 8),
        ("SC_rgb_16bit.dcm", 0),
        ("SC_rgb_rle.dcm", 0),
        ("SC_rgb_jpeg_dcmtk.dcm", 24),  # lossy baseline JPEG of the same picture
    ],
)
def test_colour_files_render_like_their_rgb_original(name: str, tolerance: int) -> None:
    original = pixels_of(pydicom_file("SC_rgb.dcm"))
    rendered = pixels_of(pydicom_file(name))
    assert rendered.shape == original.shape == (100, 100, 3)
    assert np.abs(rendered - original).max() <= tolerance


# ---------------------------------------------------------------- geometry and text


def test_region_crops_and_reversed_bounds_flip() -> None:
    ds = image(np.arange(16, dtype="u1").reshape(4, 4) * 16)  # min-max: x * 16 * 255/240
    whole = pixels_of(ds)
    crop = pixels_of(ds, RenderParams(region=(0.5, 0.0, 1.0, 0.5)))
    assert np.array_equal(crop, whole[0:2, 2:4])
    flipped = pixels_of(ds, RenderParams(region=(1.0, 0.5, 0.5, 0.0)))
    assert np.array_equal(flipped, whole[0:2, 2:4][::-1, ::-1])


def test_viewport_fits_keeping_aspect_and_zero_leaves_a_side_free() -> None:
    ds = image(np.zeros((60, 120), dtype="u1"))
    assert render_frame(ds, 0, RenderParams(viewport=(64, 64))).size == (64, 32)
    assert render_frame(ds, 0, RenderParams(viewport=(0, 240))).size == (240, 120)
    assert render_frame(ds, 0, RenderParams(viewport=(30, 0))).size == (60, 30)


@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(0, 2000), st.integers(0, 2000))
def test_fitted_size_stays_inside_the_viewport(
    width: int, height: int, rows: int, cols: int
) -> None:
    if rows == cols == 0:
        return
    fitted = fitted_size((width, height), (rows, cols))
    assert fitted[0] >= 1 and fitted[1] >= 1
    assert rows == 0 or fitted[1] <= max(rows, 1)
    assert cols == 0 or fitted[0] <= max(cols, 1)
    # One side touches the viewport (up to rounding of the other).
    assert fitted[1] == rows or fitted[0] == cols or 1 in fitted


def test_huge_viewport_is_refused() -> None:
    ds = image(np.zeros((2, 2), dtype="u1"))
    with pytest.raises(ValueError, match="larger"):
        render_frame(ds, 0, RenderParams(viewport=(32767, 32767)))
    assert MAX_OUTPUT_PIXELS < 32767 * 32767


def test_annotation_is_burned_into_the_corners_only() -> None:
    ds = ct(PatientName="Doe^Jane", PatientID="P-42", Modality="CT", KVP=120)
    stored = np.full((256, 256), 1024, dtype="<u2")  # all 0 HU
    ds.Rows, ds.Columns, ds.PixelData = 256, 256, stored.tobytes()
    plain = pixels_of(ds, RenderParams(window=(40, 400, "linear")))
    both = frozenset({"patient", "technique"})
    marked = pixels_of(ds, RenderParams(window=(40, 400, "linear"), annotation=both))
    changed = np.argwhere(marked != plain)
    assert len(changed) > 50
    top = changed[changed[:, 0] < 128]
    bottom = changed[changed[:, 0] >= 128]
    assert len(top) and len(bottom), "patient at the top, technique at the bottom"
    assert changed[:, 1].min() < 20 and np.array_equal(plain[120:136, 200:], marked[120:136, 200:])


@pytest.mark.parametrize(
    "bad",
    [
        {"window": (40, 0, "linear")},
        {"window": (40, 400, "cubic")},
        {"quality": 0},
        {"quality": 101},
        {"viewport": (0, 0)},
        {"region": (0.5, 0.5, 0.5, 1.0)},
        {"region": (0.0, 0.0, 1.5, 1.0)},
        {"annotation": frozenset({"everything"})},
    ],
)
def test_params_refuse_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RenderParams(**bad)


def test_window_function_spellings_are_normalized() -> None:
    assert RenderParams(window=(1, 2, "linear-exact")).window == (1.0, 2.0, "LINEAR_EXACT")
    assert RenderParams(window=(1, 2, "SIGMOID")).window == (1.0, 2.0, "SIGMOID")


# ---------------------------------------------------------------- encoding


def gradient(value: int) -> Image.Image:
    return Image.fromarray((np.arange(64, dtype="u1").reshape(8, 8) + value).astype("u1"))


def test_png_round_trips_exactly_and_jpeg_decodes_to_the_same_size() -> None:
    picture = gradient(10)
    png = Image.open(io.BytesIO(encode_images([picture], "image/png")))
    assert np.array_equal(np.asarray(png), np.asarray(picture))
    jpeg = Image.open(io.BytesIO(encode_images([picture], "image/jpeg", quality=95)))
    assert jpeg.format == "JPEG" and jpeg.size == picture.size


def test_jpeg_quality_changes_the_size() -> None:
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype="u1"))
    small = encode_images([noisy], "image/jpeg", quality=5)
    large = encode_images([noisy], "image/jpeg", quality=100)
    assert len(small) < len(large) / 2


def test_gif_of_several_images_animates_every_frame() -> None:
    frames = [gradient(v) for v in (0, 50, 100, 150)]
    encoded = encode_images(frames, "image/gif", frame_duration_ms=40)
    gif = Image.open(io.BytesIO(encoded))
    assert (
        getattr(gif, "n_frames", 1) == 4
        and gif.info.get("loop") == 0
        and gif.info["duration"] == 40
    )
    # giflib (through imagecodecs) decodes every frame; Pillow's reader garbles mode changes.
    decoded = imagecodecs.gif_decode(encoded)
    assert decoded.shape == (4, 8, 8, 3)
    for got, frame in zip(decoded, frames, strict=True):
        assert np.array_equal(got[..., 0], np.asarray(frame))


def test_encode_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="image/gif"):
        encode_images([gradient(0), gradient(1)], "image/jpeg")
    with pytest.raises(ValueError, match="not a rendered image"):
        encode_images([gradient(0)], "image/jp2")
    with pytest.raises(ValueError):
        encode_images([], "image/png")


def test_display_frame_time_from_the_dataset() -> None:
    ds = Dataset()
    assert display_frame_ms(ds) == 100
    ds.CineRate = 25
    assert display_frame_ms(ds) == 40
    ds.FrameTime = 33.3
    assert display_frame_ms(ds) == 33
    ds.FrameTime = 1
    assert display_frame_ms(ds) == 20
