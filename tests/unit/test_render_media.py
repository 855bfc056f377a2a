"""api.render_media: categories of instances and the media type each Accept gets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from api.negotiation import parse_accept
from api.render_media import (
    IMAGE_OFFERS,
    Kind,
    choose_frames,
    choose_parts,
    choose_single,
    kind_of_dataset,
    kind_of_metadata,
    part_type,
    series_number,
)
from schemas.dicom_json import dataset_to_json

PDF = Kind("document", "application/pdf")


@pytest.mark.parametrize(
    ("accept", "offers", "chosen"),
    [
        (None, IMAGE_OFFERS, "image/jpeg"),
        ("*/*", IMAGE_OFFERS, "image/jpeg"),
        ("image/*", IMAGE_OFFERS, "image/jpeg"),
        ("image/png", IMAGE_OFFERS, "image/png"),
        ("image/webp, image/gif;q=0.5, image/png;q=0.4", IMAGE_OFFERS, "image/gif"),
        ("text/html", IMAGE_OFFERS, None),
        ('multipart/related; type="image/jpeg"', IMAGE_OFFERS, None),
        ("text/*", Kind("sr").offers, "text/html"),
        ("text/plain, text/html;q=0.1", Kind("sr").offers, "text/plain"),
        ("application/*", PDF.offers, "application/pdf"),
        ("image/jpeg", PDF.offers, None),
    ],
)
def test_choose_single(accept: str | None, offers: tuple[str, ...], chosen: str | None) -> None:
    assert choose_single(parse_accept(accept), offers) == chosen


@pytest.mark.parametrize(
    ("accept", "pattern"),
    [
        (None, "*/*"),
        ('multipart/related; type="image/png"', "image/png"),
        ("multipart/related", "*/*"),
        ("image/jpeg, multipart/related; type=text/html", "text/html"),
        ("image/jpeg", None),
    ],
)
def test_choose_parts(accept: str | None, pattern: str | None) -> None:
    assert choose_parts(parse_accept(accept)) == pattern


def test_part_type_per_kind() -> None:
    assert part_type("*/*", Kind("image")) == "image/jpeg"
    assert part_type("*/*", Kind("sr")) == "text/html"
    assert part_type("*/*", PDF) == "application/pdf"
    assert part_type("image/png", Kind("sr")) is None
    assert part_type("image/*", Kind("image")) == "image/jpeg"
    assert part_type("*/*", Kind("video")) is None
    assert part_type("*/*", Kind("other")) is None


@pytest.mark.parametrize(
    ("accept", "choice"),
    [
        ("image/gif", (False, "image/gif")),
        ("image/*", (False, "image/gif")),
        ("*/*", (True, "image/jpeg")),
        ('multipart/related; type="image/png"', (True, "image/png")),
        ("image/jpeg, image/gif;q=0.5", (False, "image/gif")),
        ("image/jpeg", None),
        ('multipart/related; type="text/html"', None),
    ],
)
def test_choose_frames(accept: str, choice: tuple[bool, str] | None) -> None:
    assert choose_frames(parse_accept(accept)) == choice


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("CT_small.dcm", "image"),
        ("emri_small_jpeg_2k_lossless.dcm", "image"),
        ("OBXXXX1A.dcm", "image"),
        ("test-SR.dcm", "sr"),
        ("reportsi.dcm", "sr"),
        ("rtplan.dcm", "other"),
    ],
)
def test_metadata_and_dataset_agree_on_the_category(name: str, category: str) -> None:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    ds = dcmread(path)
    assert kind_of_dataset(ds).category == category
    meta = orjson.loads(orjson.dumps(dataset_to_json(ds, bulk_offset_base=0)))
    ts = str(ds.file_meta.TransferSyntaxUID)
    assert kind_of_metadata(meta, ts).category == category


def test_document_and_video_kinds() -> None:
    ds = Dataset()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4"
    assert kind_of_dataset(ds) == PDF
    meta: dict[str, Any] = {
        "00420011": {"vr": "OB", "BulkDataURI": "bulkdata/10-8"},
        "00420012": {"vr": "LO", "Value": ["application/PDF"]},
    }
    assert kind_of_metadata(meta, "1.2.840.10008.1.2.1") == PDF
    pixels = {"7FE00010": {"vr": "OB"}, "00280010": {"vr": "US", "Value": [480]}}
    assert kind_of_metadata(pixels, "1.2.840.10008.1.2.4.102").category == "video"
    assert kind_of_metadata(pixels, "1.2.840.10008.1.2.4.50").category == "image"


def test_series_number_from_metadata() -> None:
    assert series_number({"00200011": {"vr": "IS", "Value": [7]}}) == 7
    assert series_number({"00200011": {"vr": "IS"}}) is None
    assert series_number({}) is None
