"""Rendered and thumbnail resources through the real app on the embedded defaults.

A real SQLite log, folder blob store and chDB index; instances go in through
ingest and come out through GET .../rendered and .../thumbnail (Starlette's
TestClient). Pixel values are checked against what PS3.3 C.11 gives for known
stored values; pydicom-data files (JPEG, RLE, multi-frame, palette, RGB, SR)
render as the media types PS3.18 names.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import imagecodecs
import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from api.app import create_app
from api.wiring import Archive, open_archive
from infra.settings import load_settings
from schemas.events import Source
from tests.support import make_ct, pydicom_file, split_multipart, write_part10

SOURCE = Source("DIMSE", calling_ae="MODALITY", called_ae="CHRONICLE", peer="127.0.0.1:5000")
HU = [-200, -100, 0, 39, 40, 41, 239, 240, 3071]
# LINEAR c=40 w=400 (PS3.3 C.11.2.1.2.1): ((x-39.5)/399 + 0.5) * 255 clipped
CT_40_400 = [0, 38, 102, 127, 128, 128, 255, 255, 255]
# Constant HU per instance of the CT series: level 0, 128 (40 HU), 255.
SERIES_HU = {1: -500, 2: 40, 3: 500}
PDF_BYTES = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"  # odd length: DICOM pads it
FILES = {
    "ct": "CT_small.dcm",
    "mr": "MR_small.dcm",
    "mr_rle": "MR_small_RLE.dcm",
    "jpeg": "SC_rgb_jpeg_dcmtk.dcm",
    "rgb": "SC_rgb.dcm",
    "ybr": "SC_ybr_full_422_uncompressed.dcm",
    "multiframe": "emri_small.dcm",
    "palette": "OBXXXX1A.dcm",
}


@dataclass
class Corpus:
    study: str
    ct_series: str
    urls: dict[str, str] = field(default_factory=dict)  # name -> instance URL
    datasets: dict[str, Dataset] = field(default_factory=dict)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data_dir = tmp_path_factory.mktemp("rendered")
    settings = load_settings({"data_dir": str(data_dir), "min_free_bytes": 0}, environ={})
    opened = open_archive(settings)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def ct_pixels(hu: list[int] | int, rows: int = 16, cols: int = 16) -> bytes:
    """Stored CT values (HU + 1024): a constant, or the first row set to `hu`."""
    stored = np.full((rows, cols), 1024 + (hu if isinstance(hu, int) else 0), dtype="<u2")
    if isinstance(hu, list):
        stored[0, : len(hu)] = np.array(hu) + 1024
    return stored.tobytes()


def pdf_instance(study: str, series: str) -> Dataset:
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID, ds.SOPInstanceUID = EncapsulatedPDFStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Render^Rita", "REN-1", "DOC"
    ds.SeriesNumber, ds.InstanceNumber = 4, 1
    ds.DocumentTitle, ds.MIMETypeOfEncapsulatedDocument = "Referral letter", "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.EncapsulatedDocument = PDF_BYTES + b"\x00"
    ds.EncapsulatedDocumentLength = len(PDF_BYTES)
    return ds


def renamed(name: str, study: str, series_number: int) -> Dataset:
    """A pydicom-data file under fresh UIDs in `study` (MR_small and its RLE twin share UIDs)."""
    ds = dcmread(pydicom_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = series_number
    return ds


def url_of(ds: Dataset) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


@pytest.fixture(scope="module")
def corpus(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    folder = tmp_path_factory.mktemp("rendered-files")
    study, ct_series = generate_uid(), generate_uid()
    found = Corpus(study, ct_series)
    made: dict[str, Dataset] = {}
    for number, hu in SERIES_HU.items():
        made[f"ct{number}"] = make_ct(
            study, ct_series, rows=16, cols=16, InstanceNumber=number, SeriesNumber=1
        )
        made[f"ct{number}"].PixelData = ct_pixels(hu)
    made["known"] = make_ct(study, rows=16, cols=16, SeriesNumber=2)
    made["known"].PixelData = ct_pixels(HU)
    made["mono1"] = make_ct(study, rows=16, cols=16, SeriesNumber=2, InstanceNumber=2)
    made["mono1"].PixelData = ct_pixels(HU)
    made["mono1"].PhotometricInterpretation = "MONOCHROME1"
    sr = renamed("test-SR.dcm", study, 0)  # numbered first, but not an image
    made["sr"] = sr
    made["pdf"] = pdf_instance(study, generate_uid())
    for index, (key, name) in enumerate(FILES.items()):
        made[key] = renamed(name, study, 10 + index)
    for key, ds in made.items():
        path = write_part10(ds, folder / f"{key}.dcm")
        archive.ingest.store_part10_file(path, source=SOURCE)
        found.urls[key], found.datasets[key] = url_of(ds), ds
    return found


def get(client: TestClient, url: str, media: str | None = None, **params: str) -> Any:
    headers = {"Accept": media} if media else {}
    return client.get(url, headers=headers, params=params)


def picture(response: Any) -> NDArray[Any]:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


# ---------------------------------------------------------------- pixel values


def test_window_parameter_gives_the_expected_grey_levels(
    client: TestClient, corpus: Corpus
) -> None:
    url = corpus.urls["known"] + "/rendered"
    png = picture(get(client, url, "image/png", window="40,400,linear"))
    assert png.shape == (16, 16)
    assert png[0, : len(HU)].tolist() == CT_40_400
    assert (png[1:] == 102).all(), "0 HU elsewhere"
    # Without the parameter the dataset's own window (40/400) applies.
    assert picture(get(client, url, "image/png"))[0, : len(HU)].tolist() == CT_40_400
    # linear-exact: (x-40)/400 + 0.5 -> 0 HU = 0.4 -> 102
    exact = picture(get(client, url, "image/png", window="40,400,linear-exact"))
    assert exact[1, 0] == 102 and exact[0, 4] == 128


def test_monochrome1_is_inverted(client: TestClient, corpus: Corpus) -> None:
    png = picture(get(client, corpus.urls["mono1"] + "/rendered", "image/png"))
    assert png[0, : len(HU)].tolist() == [255 - v for v in CT_40_400]


def test_default_is_jpeg_and_accept_query_parameter_wins(
    client: TestClient, corpus: Corpus
) -> None:
    response = get(client, corpus.urls["known"] + "/rendered")
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    by_query = get(client, corpus.urls["known"] + "/rendered", "image/jpeg", accept="image/png")
    assert by_query.headers["content-type"] == "image/png"


@pytest.mark.parametrize("key", list(FILES))
def test_pydicom_files_render_at_their_size(client: TestClient, corpus: Corpus, key: str) -> None:
    ds = corpus.datasets[key]
    jpeg = get(client, corpus.urls[key] + "/rendered", "image/jpeg")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert picture(jpeg).shape[:2] == (ds.Rows, ds.Columns)


def test_rle_renders_exactly_like_its_native_twin(client: TestClient, corpus: Corpus) -> None:
    native = picture(get(client, corpus.urls["mr"] + "/rendered", "image/png"))
    rle = picture(get(client, corpus.urls["mr_rle"] + "/rendered", "image/png"))
    assert np.array_equal(native, rle)


def test_colour_palette_and_ybr_render_as_rgb(client: TestClient, corpus: Corpus) -> None:
    palette = picture(get(client, corpus.urls["palette"] + "/rendered", "image/png"))
    assert palette.shape == (600, 800, 3)
    rgb = picture(get(client, corpus.urls["rgb"] + "/rendered", "image/png")).astype(int)
    ybr = picture(get(client, corpus.urls["ybr"] + "/rendered", "image/png")).astype(int)
    assert np.abs(rgb - ybr).max() <= 8  # the file's YBR samples were rounded to 8 bits


def test_annotation_burns_text_in(client: TestClient, corpus: Corpus) -> None:
    url = corpus.urls["ct"] + "/rendered"
    plain = picture(get(client, url, "image/png"))
    annotated = picture(get(client, url, "image/png", annotation="patient,technique"))
    assert (plain != annotated).sum() > 50


def test_viewport_and_quality(client: TestClient, corpus: Corpus) -> None:
    url = corpus.urls["palette"] + "/rendered"
    assert picture(get(client, url, "image/png", viewport="200,200")).shape == (150, 200, 3)
    flipped = picture(get(client, url, "image/png", viewport="800,600,800,0,-800,600"))
    whole = picture(get(client, url, "image/png"))
    assert np.array_equal(flipped, whole[:, ::-1])
    low = get(client, url, "image/jpeg", quality="5").content
    high = get(client, url, "image/jpeg", quality="95").content
    assert len(low) < len(high) / 2


# ---------------------------------------------------------------- multi-frame


def test_gif_animates_every_frame_of_a_multi_frame_instance(
    client: TestClient, corpus: Corpus
) -> None:
    response = get(client, corpus.urls["multiframe"] + "/rendered", "image/gif")
    assert response.headers["content-type"] == "image/gif"
    frames = imagecodecs.gif_decode(response.content)
    assert frames.shape[:3] == (10, 64, 64)
    # Each frame is the frame rendered on its own.
    for number in (1, 5, 10):
        single = picture(
            get(client, f"{corpus.urls['multiframe']}/frames/{number}/rendered", "image/png")
        )
        assert np.array_equal(frames[number - 1][..., 0], single)


def test_frame_lists(client: TestClient, corpus: Corpus) -> None:
    url = corpus.urls["multiframe"] + "/frames/2,4,6/rendered"
    gif = get(client, url, "image/gif")
    assert imagecodecs.gif_decode(gif.content).shape[0] == 3
    multipart = get(client, url, 'multipart/related; type="image/png"')
    parts = split_multipart(multipart.content, multipart.headers["content-type"])
    assert [h["content-type"] for h, _ in parts] == ["image/png"] * 3
    locations = [h["content-location"] for h, _ in parts]
    assert [loc.rsplit("/", 2)[-2] for loc in locations] == ["2", "4", "6"]
    assert get(client, url, "image/jpeg").status_code == 406


# ---------------------------------------------------------------- documents


def test_pdf_is_the_encapsulated_document(client: TestClient, corpus: Corpus) -> None:
    for accept in ("application/pdf", "*/*", None):
        response = get(client, corpus.urls["pdf"] + "/rendered", accept)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/pdf"
        assert response.content == PDF_BYTES
    assert get(client, corpus.urls["pdf"] + "/rendered", "image/jpeg").status_code == 406


def test_sr_renders_its_content_items(client: TestClient, corpus: Corpus) -> None:
    url = corpus.urls["sr"] + "/rendered"
    text = get(client, url, "text/plain")
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    for expected in ("Diagnosis", "A mass of", "was detected.", "Diameter", "Sample Text"):
        assert expected in text.text
    page = get(client, url)
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<li>" in page.text and "A mass of" in page.text


# ---------------------------------------------------------------- studies and series


def test_study_renders_as_multipart_with_a_part_per_instance(
    client: TestClient, corpus: Corpus
) -> None:
    response = get(client, f"/dicomweb/studies/{corpus.study}/rendered", "*/*")
    assert response.headers["content-type"].startswith("multipart/related")
    parts = split_multipart(response.content, response.headers["content-type"])
    types = [h["content-type"] for h, _ in parts]
    assert len(parts) == len(corpus.urls)
    assert types.count("application/pdf") == 1 and types.count("text/html; charset=utf-8") == 1
    assert all(h["content-location"].endswith("/rendered") for h, _ in parts)
    images = get(
        client, f"/dicomweb/studies/{corpus.study}/rendered", "multipart/related; type=image/png"
    )
    image_parts = split_multipart(images.content, images.headers["content-type"])
    assert {h["content-type"] for h, _ in image_parts} == {"image/png"}
    assert len(image_parts) == len(corpus.urls) - 2  # not the SR, not the PDF


def test_series_renders_its_instances_in_order(client: TestClient, corpus: Corpus) -> None:
    url = f"/dicomweb/studies/{corpus.study}/series/{corpus.ct_series}/rendered"
    response = get(client, url, 'multipart/related; type="image/png"')
    parts = split_multipart(response.content, response.headers["content-type"])
    levels = [int(np.asarray(Image.open(io.BytesIO(body)))[8, 8]) for _, body in parts]
    assert levels == [0, 128, 255]
    assert get(client, url, "image/jpeg").status_code == 406


# ---------------------------------------------------------------- thumbnails


def test_instance_thumbnails_fit_128(client: TestClient, corpus: Corpus) -> None:
    for key in ("palette", "ct", "multiframe", "rgb"):
        thumbnail = Image.open(io.BytesIO(get(client, corpus.urls[key] + "/thumbnail").content))
        assert thumbnail.format == "JPEG"
        assert max(thumbnail.size) == 128 and min(thumbnail.size) >= 1
    smaller = get(client, corpus.urls["palette"] + "/thumbnail", "image/png", viewport="64,64")
    assert picture(smaller).shape == (48, 64, 3)


def test_series_and_study_thumbnails_show_the_middle_image(
    client: TestClient, corpus: Corpus
) -> None:
    series = f"/dicomweb/studies/{corpus.study}/series/{corpus.ct_series}/thumbnail"
    assert (picture(get(client, series, "image/png")) == 128).all()
    # The SR's series is numbered lowest but holds no image: series 1 is shown.
    study = f"/dicomweb/studies/{corpus.study}/thumbnail"
    assert (picture(get(client, study, "image/png")) == 128).all()


def test_frame_thumbnail_and_document_placeholders(client: TestClient, corpus: Corpus) -> None:
    frame = picture(get(client, corpus.urls["multiframe"] + "/frames/3/thumbnail", "image/png"))
    assert frame.shape == (128, 128)
    for key in ("sr", "pdf"):
        placeholder = picture(get(client, corpus.urls[key] + "/thumbnail", "image/png"))
        assert placeholder.shape == (128, 128, 3)
    assert get(client, corpus.urls["sr"] + "/thumbnail", "text/html").status_code == 406


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        ("/rendered", {"window": "40,0"}),
        ("/rendered", {"window": "40,400,cubic"}),
        ("/rendered", {"quality": "0"}),
        ("/rendered", {"quality": "101"}),
        ("/rendered", {"viewport": "0,10"}),
        ("/rendered", {"viewport": "10,10,999,0,5,5"}),
        ("/rendered", {"annotation": "everything"}),
        ("/rendered", {"iccprofile": "cmyk"}),
        ("/frames/0/rendered", {}),
        ("/frames/11/rendered", {}),
        ("/frames/1,x/rendered", {}),
        ("/thumbnail", {"viewport": "-1,5"}),
        ("/frames/11/thumbnail", {}),
    ],
)
def test_bad_parameters_are_400(
    client: TestClient, corpus: Corpus, suffix: str, params: dict[str, str]
) -> None:
    response = get(client, corpus.urls["multiframe"] + suffix, **params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"]


def test_unknown_uids_are_404_and_malformed_ones_400(client: TestClient, corpus: Corpus) -> None:
    unknown = generate_uid()
    for url in (
        f"/dicomweb/studies/{unknown}/rendered",
        f"/dicomweb/studies/{unknown}/thumbnail",
        f"/dicomweb/studies/{corpus.study}/series/{unknown}/rendered",
        f"/dicomweb/studies/{corpus.study}/series/{corpus.ct_series}/instances/{unknown}/rendered",
    ):
        assert get(client, url).status_code == 404, url
    assert get(client, "/dicomweb/studies/not-a-uid/rendered").status_code == 400


def test_unsupported_media_types_are_406(client: TestClient, corpus: Corpus) -> None:
    for accept in ("application/dicom", "image/jp2", "text/html"):
        response = get(client, corpus.urls["ct"] + "/rendered", accept)
        assert response.status_code == 406, accept
        assert "image/jpeg" in response.json()["detail"]
