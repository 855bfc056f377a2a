"""dicomweb-client (the library viewers and AI pipelines use) against `chronicle serve`.

STOW-RS, QIDO-RS, WADO-RS instance, metadata and bulk data, as the client
sends and parses them; and STOW then WADO-RS of raw Part 10 bytes keeps the
dataset byte for byte, compressed pixel data included.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.chronicle_server import ChronicleServer, StartChronicle
from tests.support import (
    dataset_bytes,
    free_port,
    make_ct,
    multipart_related,
    part10_bytes,
    pydicom_file,
    same_length_uid,
    split_multipart,
)

pytestmark = pytest.mark.interop

DICOM_ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STUDY_UID_TAG, SERIES_UID_TAG, SOP_UID_TAG = "0020000D", "0020000E", "00080018"
PIXEL_DATA_TAG = "7FE00010"


@dataclass(frozen=True)
class StoredStudy:
    server: ChronicleServer
    client: DICOMwebClient
    study_uid: str
    series_uid: str
    datasets: list[Dataset]
    other_study_uid: str


def _values(objects: list[dict[str, Any]], tag: str) -> set[str]:
    return {str(obj[tag]["Value"][0]) for obj in objects}


@pytest.fixture(scope="module")
def web_server(start_chronicle_module: StartChronicle) -> ChronicleServer:
    """A server with a fixed public URL, as deployments that dicomweb-client meets have.

    dicomweb-client sends `Host: 127.0.0.1` without the port on non-streamed
    GETs, so URIs built from the Host header would point at port 80.
    """
    port = free_port()
    return start_chronicle_module([f"--public-url=http://127.0.0.1:{port}"], http_port=port)


@pytest.fixture(scope="module")
def stored_study(web_server: ChronicleServer) -> StoredStudy:
    client = DICOMwebClient(url=web_server.dicomweb_url, timeout=60)
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = [
        make_ct(
            study_uid,
            series_uid,
            rows=64,
            cols=64,
            patient_name="Webclient^Wanda",
            patient_id="WEB-1",
            InstanceNumber=number,
        )
        for number in (1, 2, 3)
    ]
    other = make_ct(rows=32, cols=32, patient_name="Other^Oscar", patient_id="WEB-2")
    client.store_instances(datasets)
    client.store_instances([other])
    return StoredStudy(
        web_server, client, study_uid, series_uid, datasets, str(other.StudyInstanceUID)
    )


def test_store_instances_references_every_instance(
    web_server: ChronicleServer,
) -> None:
    client = DICOMwebClient(url=web_server.dicomweb_url, timeout=60)
    datasets = [make_ct(rows=32, cols=32, patient_name="Stow^Stella") for _ in range(2)]

    response = client.store_instances(datasets)

    referenced = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in datasets}
    assert not response.get("FailedSOPSequence")


def test_search_for_studies_matches_patient_name_wildcard(stored_study: StoredStudy) -> None:
    studies = stored_study.client.search_for_studies(search_filters={"PatientName": "Webclient*"})

    assert _values(studies, STUDY_UID_TAG) == {stored_study.study_uid}


def test_search_for_studies_without_filter_lists_both(stored_study: StoredStudy) -> None:
    studies = stored_study.client.search_for_studies()

    assert {stored_study.study_uid, stored_study.other_study_uid} <= _values(studies, STUDY_UID_TAG)


def test_search_for_series_and_instances(stored_study: StoredStudy) -> None:
    client = stored_study.client

    series = client.search_for_series(study_instance_uid=stored_study.study_uid)
    instances = client.search_for_instances(
        study_instance_uid=stored_study.study_uid, series_instance_uid=stored_study.series_uid
    )

    assert _values(series, SERIES_UID_TAG) == {stored_study.series_uid}
    assert _values(instances, SOP_UID_TAG) == {
        str(ds.SOPInstanceUID) for ds in stored_study.datasets
    }


def test_retrieve_instance_returns_the_stored_dataset(stored_study: StoredStudy) -> None:
    original = stored_study.datasets[1]

    retrieved = stored_study.client.retrieve_instance(
        stored_study.study_uid, stored_study.series_uid, str(original.SOPInstanceUID)
    )

    assert retrieved.SOPInstanceUID == original.SOPInstanceUID
    assert str(retrieved.PatientName) == "Webclient^Wanda"
    assert retrieved.InstanceNumber == 2
    assert retrieved.PixelData == original.PixelData


def test_retrieve_study_metadata_and_pixel_bulkdata(stored_study: StoredStudy) -> None:
    client = stored_study.client

    metadata = client.retrieve_study_metadata(stored_study.study_uid)

    assert _values(metadata, SOP_UID_TAG) == {
        str(ds.SOPInstanceUID) for ds in stored_study.datasets
    }
    by_uid = {ds.SOPInstanceUID: ds for ds in stored_study.datasets}
    for instance in metadata:
        pixel_uri = instance[PIXEL_DATA_TAG]["BulkDataURI"]
        assert pixel_uri.startswith(f"{stored_study.server.dicomweb_url}/studies/")
        pixels = client.retrieve_bulkdata(pixel_uri)
        assert b"".join(pixels) == by_uid[instance[SOP_UID_TAG]["Value"][0]].PixelData


def _stow_raw(server: ChronicleServer, part10: bytes) -> httpx.Response:
    body, content_type = multipart_related([part10])
    return httpx.post(
        f"{server.dicomweb_url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )


def _wado_any_syntax(server: ChronicleServer, ds: Dataset) -> bytes:
    url = (
        f"{server.dicomweb_url}/studies/{ds.StudyInstanceUID}"
        f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    response = httpx.get(url, headers={"Accept": DICOM_ANY_SYNTAX}, timeout=60)
    assert response.status_code == 200, response.text
    parts = split_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 1
    return parts[0][1]


def _renamed_testdata(name: str) -> bytes:
    """A pydicom-data file under a fresh SOP Instance UID of the same length (no re-encoding)."""
    data = pydicom_file(name).read_bytes()
    old = str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    return data.replace(old.encode("ascii"), same_length_uid(old).encode("ascii"))


def _part10_for(source: str) -> bytes:
    if source == "synthetic":
        return part10_bytes(make_ct(rows=64, cols=64, patient_name="Bytes^Bob"))
    return _renamed_testdata(source)


# Uncompressed synthetic, JPEG Baseline, and a 10-frame Enhanced MR.
@pytest.mark.parametrize("source", ["synthetic", "SC_rgb_jpeg_dcmtk.dcm", "emri_small.dcm"])
def test_stow_then_wado_any_syntax_is_byte_identical(
    web_server: ChronicleServer, source: str
) -> None:
    part10 = _part10_for(source)
    ds = pydicom.dcmread(BytesIO(part10), stop_before_pixels=True)

    stowed = _stow_raw(web_server, part10)
    assert stowed.status_code == 200, stowed.text
    returned = _wado_any_syntax(web_server, ds)

    assert dataset_bytes(returned) == dataset_bytes(part10)
    returned_meta = pydicom.dcmread(BytesIO(returned), stop_before_pixels=True).file_meta
    assert returned_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
