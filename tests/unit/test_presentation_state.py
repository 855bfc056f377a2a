"""api.presentation_state: a synthetic GSPS applied to a small CT, checked in rendered pixels.

Expected values come from PS3.3 C.11.2.1.2 (LINEAR window) worked by hand,
and the geometry from PS3.3 C.10.4 / C.10.6 (displayed area in the pixel
coordinates before the spatial transformation; rotation before the flip).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from api.presentation_state import (
    GSPS_SOP_CLASS,
    PresentationStateRefused,
    apply_presentation_state,
    check_references,
)
from api.render import RenderParams, render_frame
from tests.support import make_ct

ROWS, COLS = 4, 6
STORED = np.arange(ROWS * COLS, dtype=np.uint16).reshape(ROWS, COLS)  # make_ct's ramp


def ct() -> Dataset:
    return make_ct(rows=ROWS, cols=COLS)


def item(**attrs: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def gsps_for(image: Dataset, frames: list[int] | None = None, **attrs: Any) -> Dataset:
    """A Grayscale Softcopy Presentation State referencing `image` (optionally some frames)."""
    reference = item(
        ReferencedSOPClassUID=image.SOPClassUID, ReferencedSOPInstanceUID=image.SOPInstanceUID
    )
    if frames:
        reference.ReferencedFrameNumber = frames
    series = item(SeriesInstanceUID=image.SeriesInstanceUID, ReferencedImageSequence=[reference])
    gsps = item(
        SOPClassUID=GSPS_SOP_CLASS,
        SOPInstanceUID=generate_uid(),
        ReferencedSeriesSequence=[series],
        PresentationLUTShape="IDENTITY",
        RescaleSlope=1,
        RescaleIntercept=0,
    )
    for keyword, value in attrs.items():
        setattr(gsps, keyword, value)
    return gsps


def window(center: float, width: float) -> list[Dataset]:
    return [item(WindowCenter=center, WindowWidth=width)]


def rendered(image: Dataset, gsps: Dataset) -> np.ndarray[Any, Any]:
    presentation = apply_presentation_state(image, gsps, 0)
    params = RenderParams(window=presentation.window)
    return np.asarray(render_frame(presentation.image, 0, params))


def linear(values: np.ndarray[Any, Any], center: float, width: float) -> np.ndarray[Any, Any]:
    """PS3.3 C.11.2.1.2.1 LINEAR onto 0..255."""
    level = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.rint(np.clip(level, 0, 1) * 255).astype(np.uint8)


def test_the_softcopy_window_replaces_the_images_own() -> None:
    image = ct()  # its own window (C 40 W 400 on HU = stored - 1024) shows all black
    assert not np.asarray(render_frame(image, 0, RenderParams())).any()
    gsps = gsps_for(image, SoftcopyVOILUTSequence=window(12, 10))
    got = rendered(image, gsps)
    assert got.tolist() == linear(STORED.astype(float), 12, 10).tolist()
    assert 0 < got[1, 2] < 255  # stored 8: inside the window, neither black nor white


def test_inverse_presentation_lut_shape_inverts_the_rendered_pixels() -> None:
    image = ct()
    identity = rendered(image, gsps_for(image, SoftcopyVOILUTSequence=window(12, 10)))
    inverse = gsps_for(image, SoftcopyVOILUTSequence=window(12, 10), PresentationLUTShape="INVERSE")
    assert rendered(image, inverse).tolist() == (255 - identity).tolist()


def test_monochrome1_follows_the_state_not_its_photometric_interpretation() -> None:
    image = ct()
    image.PhotometricInterpretation = "MONOCHROME1"
    gsps = gsps_for(image, SoftcopyVOILUTSequence=window(12, 10))
    assert rendered(image, gsps).tolist() == linear(STORED.astype(float), 12, 10).tolist()


def test_the_states_modality_lut_replaces_the_images_and_absent_is_identity() -> None:
    image = ct()  # Rescale Intercept -1024 in the image
    with_rescale = gsps_for(image, RescaleIntercept=-10, SoftcopyVOILUTSequence=window(2, 10))
    assert rendered(image, with_rescale).tolist() == linear(STORED - 10.0, 2, 10).tolist()
    without = gsps_for(image, SoftcopyVOILUTSequence=window(12, 10))
    del without.RescaleSlope, without.RescaleIntercept
    presentation = apply_presentation_state(image, without, 0)
    assert "identity Modality LUT" in presentation.applied
    assert presentation.image.RescaleIntercept == 0


def test_no_softcopy_voi_maps_the_full_range_of_the_modality_output() -> None:
    image = ct()  # 12 bits stored, unsigned: 0..4095
    presentation = apply_presentation_state(image, gsps_for(image), 0)
    assert presentation.window == (2048.0, 4096.0, "LINEAR")


def test_a_voi_lut_table_goes_to_the_renderer_instead_of_a_window() -> None:
    image = ct()
    table = item(LUTDescriptor=[4, 0, 8], LUTData=[0, 85, 170, 255])
    gsps = gsps_for(image, SoftcopyVOILUTSequence=[item(VOILUTSequence=[table])])
    presentation = apply_presentation_state(image, gsps, 0)
    assert presentation.window is None and "WindowCenter" not in presentation.image
    got = rendered(image, gsps)
    assert got[0, :4].tolist() == [0, 85, 170, 255] and (got[1:] == 255).all()


def test_voi_items_for_other_images_are_not_applied() -> None:
    image = ct()
    other = item(ReferencedSOPInstanceUID=generate_uid())
    voi = item(WindowCenter=12, WindowWidth=10, ReferencedImageSequence=[other])
    presentation = apply_presentation_state(image, gsps_for(image, SoftcopyVOILUTSequence=[voi]), 0)
    assert presentation.window == (2048.0, 4096.0, "LINEAR")


def presented_pixels(image: Dataset, gsps: Dataset) -> np.ndarray[Any, Any]:
    presented = apply_presentation_state(image, gsps, 0).image
    return np.frombuffer(presented.PixelData, "<u2").reshape(presented.Rows, presented.Columns)


@pytest.mark.parametrize(
    ("rotation", "flip", "expected"),
    [
        (90, "N", np.rot90(STORED, -1)),
        (180, "N", STORED[::-1, ::-1]),
        (270, "N", np.rot90(STORED, 1)),
        (0, "Y", STORED[:, ::-1]),
        # rotated clockwise, then mirrored: the transpose (flip-then-rotate would
        # give the anti-transpose)
        (90, "Y", STORED.T),
    ],
)
def test_rotation_then_horizontal_flip(rotation: int, flip: str, expected: Any) -> None:
    image = ct()
    gsps = gsps_for(image, ImageRotation=rotation, ImageHorizontalFlip=flip)
    assert presented_pixels(image, gsps).tolist() == expected.tolist()


def test_displayed_area_crops_and_pads_outside_the_image_with_black() -> None:
    image = ct()
    area = item(
        DisplayedAreaTopLeftHandCorner=[2, 2],  # column \ row, 1-based
        DisplayedAreaBottomRightHandCorner=[7, 3],  # one column beyond the image
        PresentationSizeMode="SCALE TO FIT",
    )
    got = presented_pixels(image, gsps_for(image, DisplayedAreaSelectionSequence=[area]))
    assert got.tolist() == [[7, 8, 9, 10, 11, 0], [13, 14, 15, 16, 17, 0]]
    inverse = gsps_for(image, DisplayedAreaSelectionSequence=[area], PresentationLUTShape="INVERSE")
    assert presented_pixels(image, inverse)[:, -1].tolist() == [4095, 4095]  # black once inverted


def test_displayed_area_is_cut_before_the_rotation() -> None:
    image = ct()
    area = item(DisplayedAreaTopLeftHandCorner=[1, 1], DisplayedAreaBottomRightHandCorner=[2, 4])
    gsps = gsps_for(image, DisplayedAreaSelectionSequence=[area], ImageRotation=90)
    assert presented_pixels(image, gsps).tolist() == np.rot90(STORED[:, :2], -1).tolist()


def test_magnify_is_reported_and_unapplied_content_is_listed() -> None:
    image = ct()
    area = item(
        DisplayedAreaTopLeftHandCorner=[1, 1],
        DisplayedAreaBottomRightHandCorner=[COLS, ROWS],
        PresentationSizeMode="MAGNIFY",
        PresentationPixelMagnificationRatio=2.0,
    )
    gsps = gsps_for(
        image,
        DisplayedAreaSelectionSequence=[area],
        GraphicAnnotationSequence=[item(GraphicLayer="LAYER1")],
        ShutterShape="RECTANGULAR",
    )
    presentation = apply_presentation_state(image, gsps, 0)
    assert presentation.magnification == 2.0
    assert presentation.not_applied == ("graphic annotations", "display shutters")


def test_references_are_checked() -> None:
    image = ct()
    check_references(gsps_for(image), image, 1)
    stranger = ct()
    with pytest.raises(PresentationStateRefused, match="does not reference"):
        apply_presentation_state(stranger, gsps_for(image), 0)
    with pytest.raises(PresentationStateRefused, match="frame 1"):
        check_references(gsps_for(image, frames=[2]), image, 1)
    check_references(gsps_for(image, frames=[1, 2]), image, 2)
    not_gsps = gsps_for(image, SOPClassUID="1.2.840.10008.5.1.4.1.1.11.2")
    with pytest.raises(PresentationStateRefused, match="not a Grayscale Softcopy"):
        check_references(not_gsps, image, 1)


def test_colour_images_are_refused() -> None:
    image = ct()
    image.PhotometricInterpretation = "RGB"
    with pytest.raises(PresentationStateRefused, match="RGB"):
        apply_presentation_state(image, gsps_for(image), 0)
