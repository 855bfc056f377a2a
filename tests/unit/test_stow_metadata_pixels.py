"""Compressed bulk parts (api.stow_pixels) and finding bulk parts by URI (api.stow_bulk)."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from pydicom.dataset import Dataset

from api.stow_bulk import BulkParts
from api.stow_pixels import (
    MEDIA_SYNTAXES,
    Codestream,
    describe_pixels,
    pixel_transfer_syntax,
    read_codestream,
)
from infra.errors import Invalid
from ingest.multipart import Part

TS = "1.2.840.10008.1.2.4."
GREY = (np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64)
GREY12 = (np.arange(48 * 64) % 4000).astype(np.uint16).reshape(48, 64)
RGB = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)


@pytest.mark.parametrize(
    ("codestream", "syntax", "samples", "precision"),
    [
        (imagecodecs.jpeg8_encode(GREY, level=90), TS + "50", 1, 8),
        (imagecodecs.jpeg8_encode(RGB, level=90), TS + "50", 3, 8),
        (
            imagecodecs.jpeg8_encode(GREY12, lossless=True, predictor=1, bitspersample=12),
            TS + "70",
            1,
            12,
        ),
        (imagecodecs.jpeg8_encode(GREY, lossless=True, predictor=6), TS + "57", 1, 8),
        (imagecodecs.jpegls_encode(GREY), TS + "80", 1, 8),
        (imagecodecs.jpegls_encode(GREY, level=2), TS + "81", 1, 8),
        (imagecodecs.jpeg2k_encode(GREY12, reversible=True, codecformat="j2k"), TS + "90", 1, 16),
        (
            imagecodecs.jpeg2k_encode(RGB, level=80, reversible=False, codecformat="j2k"),
            TS + "91",
            3,
            8,
        ),
        (imagecodecs.htj2k_encode(RGB, level=80), TS + "203", 3, 8),
    ],
)
def test_the_codestream_header_names_its_process(
    codestream: bytes, syntax: str, samples: int, precision: int
) -> None:
    found = read_codestream(codestream)
    assert found is not None
    assert found.transfer_syntax == syntax
    assert (found.rows, found.columns, found.samples, found.precision) == (
        48,
        64,
        samples,
        precision,
    )


def test_extended_jpeg_sof1_is_jpeg_extended() -> None:
    baseline = bytearray(imagecodecs.jpeg8_encode(GREY, level=90))
    sof0 = baseline.find(b"\xff\xc0")
    baseline[sof0 + 1] = 0xC1  # same segment layout, extended process
    found = read_codestream(bytes(baseline))
    assert found is not None and found.transfer_syntax == TS + "51"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00\x01\xb3", imagecodecs.jpeg2k_encode(RGB, codecformat="jp2"), b"\xff\xd8\xff"],
)
def test_anything_else_has_no_header(data: bytes) -> None:
    assert read_codestream(data) is None


def test_without_a_parameter_the_codestream_wins_over_the_default() -> None:
    baseline = read_codestream(imagecodecs.jpeg8_encode(GREY, level=90))
    assert pixel_transfer_syntax("image/jpeg", "", baseline) == TS + "50"
    assert pixel_transfer_syntax("image/jpeg", "", None) == TS + "70"


@pytest.mark.parametrize(
    ("media_type", "default"),
    [
        ("image/jpeg", TS + "70"),
        ("image/jls", TS + "80"),
        ("image/x-jls", TS + "80"),
        ("image/jp2", TS + "90"),
        ("image/jpx", TS + "92"),
        ("image/jphc", TS + "201"),
        ("image/jxl", TS + "110"),
        ("image/dicom-rle", "1.2.840.10008.1.2.5"),
        ("image/x-dicom-rle", "1.2.840.10008.1.2.5"),
        ("video/mpeg2", TS + "100"),
        ("video/mp4", TS + "102"),
    ],
)
def test_ps3_18_defaults(media_type: str, default: str) -> None:
    assert pixel_transfer_syntax(media_type, "", None) == default
    assert MEDIA_SYNTAXES[media_type][0] == default


def test_a_stated_syntax_must_suit_the_codestream() -> None:
    lossless = read_codestream(imagecodecs.jpeg2k_encode(GREY, reversible=True, codecformat="j2k"))
    assert pixel_transfer_syntax("image/jp2", TS + "91", lossless) == TS + "91"
    lossy = read_codestream(imagecodecs.jpeg2k_encode(GREY, level=50, codecformat="j2k"))
    with pytest.raises(Invalid) as raised:
        pixel_transfer_syntax("image/jp2", TS + "90", lossy)
    assert raised.value.status == 0xA900


def test_colour_photometric_interpretation_follows_the_syntax() -> None:
    for codestream, syntax, photometric in [
        (Codestream(TS + "50", 8, 8, 3, 8, subsampled=True), TS + "50", "YBR_FULL_422"),
        (Codestream(TS + "50", 8, 8, 3, 8), TS + "50", "YBR_FULL"),
        (Codestream(TS + "90", 8, 8, 3, 8, colour_transform=True), TS + "90", "YBR_RCT"),
        (Codestream(TS + "91", 8, 8, 3, 8, colour_transform=True), TS + "91", "YBR_ICT"),
        (Codestream(TS + "70", 8, 8, 3, 8), TS + "70", "RGB"),
    ]:
        ds = Dataset()
        describe_pixels(ds, codestream, 1, syntax)
        assert ds.PhotometricInterpretation == photometric
        assert ds.PlanarConfiguration == 0


def test_what_the_sender_gave_is_kept() -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelRepresentation = 1
    describe_pixels(ds, Codestream(TS + "70", 4, 5, 1, 12), 3, TS + "70")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PixelRepresentation == 1
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (4, 5, 16, 12, 11)
    assert ds.NumberOfFrames == 3
    assert "LossyImageCompression" not in ds


# -- finding parts ----------------------------------------------------------------


def _part(tmp_path: Path, name: str, **headers: str) -> Part:
    path = tmp_path / name
    path.write_bytes(name.encode())
    return Part({k.replace("_", "-"): v for k, v in headers.items()}, path, len(name))


def test_parts_with_one_location_are_frames_in_request_order(tmp_path: Path) -> None:
    bulk = BulkParts("http://h/dicomweb/studies")
    for name in ("b", "a", "c"):
        assert bulk.add(_part(tmp_path, name, content_location="/px", content_type="image/jp2"))
    assert [p.path.name for p in bulk.find("http://h/px")] == ["b", "a", "c"]
    assert [p.media_type for p in bulk.find("/px")] == ["image/jp2"] * 3


def test_transfer_syntax_parameter_is_kept(tmp_path: Path) -> None:
    bulk = BulkParts("http://h/")
    media = f'image/jpeg; transfer-syntax="{TS}50"'
    bulk.add(_part(tmp_path, "x", content_location="x", content_type=media))
    [part] = bulk.find("x")
    assert (part.media_type, part.transfer_syntax) == ("image/jpeg", TS + "50")


def test_unnamed_parts_are_not_indexed_and_unknown_uris_find_nothing(tmp_path: Path) -> None:
    bulk = BulkParts("http://h/")
    assert not bulk.add(_part(tmp_path, "x", content_type="application/pdf"))
    assert bulk.find("x") == [] and bulk.find("") == [] and len(bulk) == 0


def test_content_id_is_a_cid_uri(tmp_path: Path) -> None:
    bulk = BulkParts("http://h/")
    bulk.add(_part(tmp_path, "x", content_id="<frame1@h>"))
    assert [p.path.name for p in bulk.find("cid:frame1@h")] == ["x"]
    assert [p.path.name for p in bulk.find("CID:%3Cframe1@h%3E")] == ["x"]
