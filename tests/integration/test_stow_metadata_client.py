"""The seed's encapsulated PDF sent to a real `chronicle serve`, read back with dicomweb-client.

dicomweb-client's store_instances only sends application/dicom parts, so the
metadata + bulk data request goes over plain HTTP (httpx), as a browser or a
dcm4che stowrs would send it; QIDO-RS and WADO-RS then go through dicomweb-client.
"""

from __future__ import annotations

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from tests.chronicle_server import ChronicleServer, StartChronicle
from tests.integration.stow_seed import (
    PDF,
    PDF_INSTANCE,
    SEED_BODY,
    SEED_CONTENT_TYPE,
    SERIES,
    STUDY,
)
from tests.support import free_port


@pytest.fixture(scope="module")
def server(start_chronicle_module: StartChronicle) -> ChronicleServer:
    # dicomweb-client sends `Host` without the port: a public URL keeps URIs right
    port = free_port()
    return start_chronicle_module([f"--public-url=http://127.0.0.1:{port}"], http_port=port)


@pytest.fixture(scope="module")
def stored(server: ChronicleServer) -> httpx.Response:
    return httpx.post(
        f"{server.dicomweb_url}/studies/{STUDY}",
        content=SEED_BODY,
        headers={"Content-Type": SEED_CONTENT_TYPE, "Accept": "application/dicom+json"},
        timeout=30,
    )


def test_the_server_answers_the_seed_request_with_its_retrieve_url(
    server: ChronicleServer, stored: httpx.Response
) -> None:
    assert stored.status_code == 200, stored.text
    [item] = stored.json()["00081199"]["Value"]
    assert item["00081190"]["Value"] == [
        f"{server.dicomweb_url}/studies/{STUDY}/series/{SERIES}/instances/{PDF_INSTANCE}"
    ]


def test_dicomweb_client_finds_and_retrieves_the_pdf(
    server: ChronicleServer, stored: httpx.Response
) -> None:
    assert stored.status_code == 200
    client = DICOMwebClient(url=server.dicomweb_url, timeout=60)
    [found] = client.search_for_instances(study_instance_uid=STUDY)
    assert found["00080018"]["Value"] == [PDF_INSTANCE]
    instance = client.retrieve_instance(STUDY, SERIES, PDF_INSTANCE)
    assert instance.EncapsulatedDocument == PDF
    assert instance.MIMETypeOfEncapsulatedDocument == "application/pdf"
    described = client.retrieve_instance_metadata(STUDY, SERIES, PDF_INSTANCE)
    uri = described.pop("00420011")["BulkDataURI"]
    metadata = Dataset.from_json(described)
    assert metadata.DocumentTitle == "Radiology report"
    assert str(metadata.PatientName) == "Zeta^Zoë"
    assert client.retrieve_bulkdata(uri) == [PDF]
