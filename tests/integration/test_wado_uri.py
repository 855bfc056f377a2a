"""WADO-URI (/wado) through the real app on the embedded stores, with stored instances.

A CT (non-square, so geometry shows), a multi-frame image, an RLE MR from
pydicom-data and a Grayscale Softcopy Presentation State referencing the CT
are stored through ingest; every request goes through create_app's router.
Rendered pixels are read back from PNG (lossless) and compared with values
worked out from PS3.3 C.11.2.1.2.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

from api.anonymize import UidMap
from api.app import create_app
from api.presentation_state import GSPS_SOP_CLASS
from api.wado_uri import uid_salt
from api.wiring import Archive, open_archive
from infra.settings import load_settings
from schemas.events import Source
from tests.support import dataset_bytes, make_ct, pydicom_file, write_part10

ROWS, COLS = 128, 96
STORED = (np.arange(ROWS * COLS) % 4096).reshape(ROWS, COLS).astype(np.float64)
IMPORT = Source("IMPORT")
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


@dataclass
class Stored:
    ct: Dataset
    ct2: Dataset
    multiframe: Dataset
    mr_rle: Dataset
    gsps: Dataset
    stranger_gsps: Dataset
    magnifying_gsps: Dataset


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data_dir = tmp_path_factory.mktemp("wado-uri")
    settings = load_settings({"data_dir": str(data_dir), "min_free_bytes": 0}, environ={})
    opened = open_archive(settings)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def stored(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    folder = tmp_path_factory.mktemp("wado-uri-files")
    ct = make_ct(rows=ROWS, cols=COLS, patient_name="Doe^Jane", patient_id="MRN-1")
    ct2 = make_ct(study_uid=ct.StudyInstanceUID, series_uid=ct.SeriesInstanceUID, rows=8, cols=8)
    multiframe = multi_frame(ct.StudyInstanceUID)
    mr_rle = dcmread(pydicom_file("MR_small_RLE.dcm"))
    gsps = presentation_state(ct, ImageRotation=90, PresentationLUTShape="INVERSE")
    stranger_gsps = presentation_state(ct2)  # same series, another image
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]  # column \\ row
    area.DisplayedAreaBottomRightHandCorner = [COLS // 2, ROWS // 2]
    area.PresentationSizeMode, area.PresentationPixelMagnificationRatio = "MAGNIFY", 2.0
    annotation = Dataset()
    annotation.GraphicLayer = "ANNOTATIONS"
    magnifying_gsps = presentation_state(
        ct, DisplayedAreaSelectionSequence=[area], GraphicAnnotationSequence=[annotation]
    )
    for ds in (ct, ct2, multiframe, gsps, stranger_gsps, magnifying_gsps):
        path = write_part10(ds, folder / f"{ds.SOPInstanceUID}.dcm")
        archive.ingest.store_part10_file(path, source=IMPORT)
    archive.ingest.store_part10_file(pydicom_file("MR_small_RLE.dcm"), source=IMPORT)
    return Stored(ct, ct2, multiframe, mr_rle, gsps, stranger_gsps, magnifying_gsps)


def multi_frame(study_uid: str) -> Dataset:
    ds = make_ct(study_uid=study_uid, rows=16, cols=16)
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.NumberOfFrames = 3
    frames = [np.full((16, 16), 1024 + 100 * k, dtype="<u2") for k in range(3)]
    ds.PixelData = b"".join(frame.tobytes() for frame in frames)
    return ds


def presentation_state(image: Dataset, **attrs: Any) -> Dataset:
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(GSPS_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = GSPS_SOP_CLASS, sop, "PR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = image.StudyInstanceUID, generate_uid()
    ds.PatientName, ds.PatientID = image.PatientName, image.PatientID
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedImageSequence = [reference]
    ds.ReferencedSeriesSequence = [series]
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 64, 128
    ds.SoftcopyVOILUTSequence = [voi]
    ds.PresentationLUTShape = "IDENTITY"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def wado(client: TestClient, ds: Dataset, headers: Any = None, **params: Any) -> httpx.Response:
    query = {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        **params,
    }
    response: httpx.Response = client.get("/wado", params=query, headers=headers)
    return response


def linear(values: np.ndarray[Any, Any], center: float, width: float) -> np.ndarray[Any, Any]:
    level = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.rint(np.clip(level, 0, 1) * 255).astype(np.uint8)


def picture(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


# -- rendered --------------------------------------------------------------------


def test_default_is_a_jpeg_of_the_image(client: TestClient, stored: Stored) -> None:
    response = wado(client, stored.ct)
    assert response.headers["content-type"] == "image/jpeg"
    image = picture(response)
    assert (image.format, image.size) == ("JPEG", (COLS, ROWS))


def test_window_parameters_set_the_rendered_values(client: TestClient, stored: Stored) -> None:
    response = wado(client, stored.ct, contentType="image/png", windowCenter=-1000, windowWidth=100)
    got = np.asarray(picture(response))
    assert got.tolist() == linear(STORED - 1024, -1000, 100).tolist()


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({"rows": 64}, (48, 64)),
        ({"columns": 64}, (64, 85)),
        ({"rows": 64, "columns": 64}, (48, 64)),  # both are maxima: the aspect ratio stays
        ({"region": "0,0,0.5,0.25"}, (48, 32)),
        ({"region": "0.5,0.5,1,1", "rows": 128}, (96, 128)),
    ],
)
def test_rows_columns_and_region(
    client: TestClient, stored: Stored, params: dict[str, Any], size: tuple[int, int]
) -> None:
    assert picture(wado(client, stored.ct, contentType="image/png", **params)).size == size


def test_region_selects_the_pixels(client: TestClient, stored: Stored) -> None:
    params = {"windowCenter": -1000, "windowWidth": 100, "region": "0.5,0.5,1,1"}
    got = np.asarray(picture(wado(client, stored.ct, contentType="image/png", **params)))
    assert got.tolist() == linear(STORED[64:, 48:] - 1024, -1000, 100).tolist()


def test_image_quality_and_annotation(client: TestClient, stored: Stored) -> None:
    small = wado(client, stored.ct, imageQuality=5).content
    large = wado(client, stored.ct, imageQuality=95).content
    assert len(small) < len(large)
    plain = np.asarray(picture(wado(client, stored.ct, contentType="image/png")))
    annotated = wado(client, stored.ct, contentType="image/png", annotation="patient,technique")
    assert (np.asarray(picture(annotated)) != plain).any()


def test_frames_of_a_multi_frame_image(client: TestClient, stored: Stored) -> None:
    params = {"contentType": "image/png", "windowCenter": 100, "windowWidth": 400}
    second = np.asarray(picture(wado(client, stored.multiframe, frameNumber=2, **params)))
    expected = linear(np.full((16, 16), 1124.0 - 1024), 100, 400)  # frame 2: stored 1124
    assert second.tolist() == expected.tolist()
    animated = picture(wado(client, stored.multiframe, contentType="image/gif"))
    assert getattr(animated, "n_frames", 1) == 3
    response = wado(client, stored.multiframe, frameNumber=4)
    assert response.status_code == 400 and "frameNumber" in response.json()["detail"]


def test_presentation_state_is_applied(client: TestClient, stored: Stored) -> None:
    gsps = stored.gsps
    response = wado(
        client,
        stored.ct,
        contentType="image/png",
        presentationUID=gsps.SOPInstanceUID,
        presentationSeriesUID=gsps.SeriesInstanceUID,
    )
    got = np.asarray(picture(response))
    # the state's window on stored values (its rescale is the identity), rotated
    # 90 degrees clockwise, then inverted
    expected = 255 - linear(np.rot90(STORED, -1), 64, 128)
    assert got.shape == (COLS, ROWS) and got.tolist() == expected.tolist()


def test_displayed_area_and_magnify_and_what_is_not_applied(
    client: TestClient, stored: Stored
) -> None:
    gsps = stored.magnifying_gsps
    params = {
        "contentType": "image/png",
        "presentationUID": gsps.SOPInstanceUID,
        "presentationSeriesUID": gsps.SeriesInstanceUID,
    }
    response = wado(client, stored.ct, **params)
    assert picture(response).size == (COLS, ROWS)  # the top left quarter, magnified twice
    assert "not applied: graphic annotations" in response.headers["warning"]
    # the region is cut from the presented quarter, then magnified twice
    region = np.asarray(picture(wado(client, stored.ct, region="0,0,0.5,0.5", **params)))
    expected = np.kron(linear(STORED[:32, :24], 64, 128), np.ones((2, 2)))
    assert region.shape == (64, 48) and np.abs(region - expected).mean() < 4
    # rows and columns override MAGNIFY
    assert picture(wado(client, stored.ct, rows=256, **params)).size == (192, 256)


def test_presentation_state_errors(client: TestClient, stored: Stored) -> None:
    other = stored.stranger_gsps
    response = wado(
        client,
        stored.ct,
        presentationUID=other.SOPInstanceUID,
        presentationSeriesUID=other.SeriesInstanceUID,
    )
    assert response.status_code == 400 and "does not reference" in response.json()["detail"]
    missing = wado(
        client,
        stored.ct,
        presentationUID=generate_uid(),
        presentationSeriesUID=stored.gsps.SeriesInstanceUID,
    )
    assert missing.status_code == 404 and "presentation state" in missing.json()["detail"]


# -- application/dicom -----------------------------------------------------------


def test_application_dicom_is_explicit_vr_little_endian(client: TestClient, stored: Stored) -> None:
    response = wado(client, stored.ct, contentType="application/dicom")
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    ds = dcmread(io.BytesIO(response.content))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PixelData == stored.ct.PixelData and ds.PatientName == "Doe^Jane"


def test_transfer_syntax_round_trips(client: TestClient, stored: Stored) -> None:
    as_stored = wado(client, stored.mr_rle, contentType="application/dicom", transferSyntax="*")
    original = Path(pydicom_file("MR_small_RLE.dcm")).read_bytes()
    assert dataset_bytes(as_stored.content) == dataset_bytes(original)
    explicit = dcmread(
        io.BytesIO(wado(client, stored.mr_rle, contentType="application/dicom").content)
    )
    assert explicit.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (explicit.pixel_array == stored.mr_rle.pixel_array).all()
    response = wado(
        client, stored.ct, contentType="application/dicom", transferSyntax=JPEG_LS_LOSSLESS
    )
    jls = dcmread(io.BytesIO(response.content))
    assert jls.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
    assert (jls.pixel_array == stored.ct.pixel_array).all()


def test_syntaxes_wado_uri_does_not_use_fall_back_to_explicit(
    client: TestClient, stored: Stored
) -> None:
    for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.4.100"):  # Implicit VR; MPEG2
        response = wado(client, stored.ct, contentType="application/dicom", transferSyntax=syntax)
        assert response.status_code == 200
        assert dcmread(io.BytesIO(response.content)).file_meta.TransferSyntaxUID == (
            ExplicitVRLittleEndian
        )
        assert "Explicit VR Little Endian" in response.headers["warning"]


def test_anonymize_applies_the_basic_profile(client: TestClient, stored: Stored) -> None:
    first = dcmread(io.BytesIO(wado(client, stored.ct, anonymize="yes").content))
    second = dcmread(io.BytesIO(wado(client, stored.ct2, anonymize="yes").content))
    assert first.PatientIdentityRemoved == "YES" and not first.get("PatientName")
    assert first.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert first.PixelData == stored.ct.PixelData
    assert first.SOPInstanceUID != stored.ct.SOPInstanceUID
    assert first.StudyInstanceUID != stored.ct.StudyInstanceUID
    # the same study and series map to the same new UIDs across requests
    assert (first.StudyInstanceUID, first.SeriesInstanceUID) == (
        second.StudyInstanceUID,
        second.SeriesInstanceUID,
    )


def test_a_configured_secret_makes_replacement_uids_stable(
    archive: Archive, client: TestClient, stored: Stored
) -> None:
    """Every worker process and every restart must agree on the new UIDs: they
    derive from the configured secret, not from a salt drawn at start."""
    default = dcmread(io.BytesIO(wado(client, stored.ct, anonymize="yes").content))
    archive.settings.anonymize_uid_secret = "site secret"
    try:
        first = dcmread(io.BytesIO(wado(client, stored.ct, anonymize="yes").content))
    finally:
        archive.settings.anonymize_uid_secret = ""
    expected = UidMap(uid_salt("site secret"))(stored.ct.SOPInstanceUID)
    assert first.SOPInstanceUID == expected != default.SOPInstanceUID
    assert uid_salt("site secret") == uid_salt("site secret") != uid_salt("other")


def test_non_image_objects_default_to_application_dicom(client: TestClient, stored: Stored) -> None:
    response = wado(client, stored.gsps)
    assert response.headers["content-type"] == "application/dicom"
    assert dcmread(io.BytesIO(response.content)).SOPClassUID == GSPS_SOP_CLASS
    refused = wado(client, stored.gsps, contentType="image/jpeg")
    assert refused.status_code == 406


# -- negotiation and errors ------------------------------------------------------


def test_content_type_list_picks_the_first_servable(client: TestClient, stored: Stored) -> None:
    response = wado(client, stored.ct, contentType="image/jp2,image/png;q=0.5,image/jpeg;q=0.4")
    assert response.headers["content-type"] == "image/png"
    refused = wado(client, stored.ct, contentType="video/mpeg")
    assert refused.status_code == 406
    excluded = wado(client, stored.ct, {"Accept": "application/dicom"}, contentType="image/jpeg")
    assert excluded.status_code == 406 and "Accept" in excluded.json()["detail"]
    # no contentType: image/jpeg if the Accept header allows it, else the object
    dicom_only = wado(client, stored.ct, {"Accept": "application/dicom"})
    assert dicom_only.headers["content-type"] == "application/dicom"


def test_unknown_object_is_404(client: TestClient, stored: Stored) -> None:
    response = client.get(
        "/wado",
        params={
            "requestType": "WADO",
            "studyUID": stored.ct.StudyInstanceUID,
            "seriesUID": stored.ct.SeriesInstanceUID,
            "objectUID": generate_uid(),
        },
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


BAD = [
    ({"requestType": "RS"}, "requestType"),
    ({"objectUID": "1.2.x"}, "objectUID"),
    ({"rows": "63"}, "rows"),
    ({"rows": "32768"}, "rows"),
    ({"columns": "wide"}, "columns"),
    ({"region": "0,0,1"}, "region"),
    ({"region": "0.5,0,0.5,1"}, "region"),
    ({"region": "0,0,1.5,1"}, "region"),
    ({"windowCenter": "40"}, "windowWidth"),
    ({"windowCenter": "40", "windowWidth": "0"}, "windowWidth"),
    ({"windowCenter": "forty", "windowWidth": "400"}, "windowCenter"),
    ({"frameNumber": "0"}, "frameNumber"),
    ({"imageQuality": "101"}, "imageQuality"),
    ({"imageQuality": "0"}, "imageQuality"),
    ({"annotation": "patient,everything"}, "annotation"),
    ({"anonymize": "no"}, "anonymize"),
    ({"presentationUID": "1.2.3"}, "presentationSeriesUID"),
    ({"contentType": "application/dicom", "rows": "100"}, "rows"),
    ({"contentType": "image/jpeg", "transferSyntax": "1.2.840.10008.1.2.1"}, "transferSyntax"),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.3.4"}, "transferSyntax"),
    ({"contentType": "application/dicom", "imageQuality": "50"}, "imageQuality"),
    (
        {
            "windowCenter": "1",
            "windowWidth": "2",
            "presentationUID": "1.2",
            "presentationSeriesUID": "1.3",
        },
        "presentationUID",
    ),
]


@pytest.mark.parametrize(("params", "named"), BAD)
def test_bad_parameters_are_400_naming_them(
    client: TestClient, stored: Stored, params: dict[str, str], named: str
) -> None:
    response = wado(client, stored.ct, **params)
    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]


def test_missing_and_repeated_parameters_are_400(client: TestClient, stored: Stored) -> None:
    response = client.get("/wado", params={"requestType": "WADO", "studyUID": "1.2"})
    assert response.status_code == 400 and "seriesUID" in response.json()["detail"]
    query = (
        f"/wado?requestType=WADO&studyUID={stored.ct.StudyInstanceUID}"
        f"&seriesUID={stored.ct.SeriesInstanceUID}&objectUID={stored.ct.SOPInstanceUID}"
        "&rows=64&rows=128"
    )
    repeated = client.get(query)
    assert repeated.status_code == 400 and "rows" in repeated.json()["detail"]
