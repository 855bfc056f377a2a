"""STOW-RS metadata + bulk data against the real app (SQLite log, folder blobs, chDB).

Each request goes in over HTTP as a client writes it and comes back out
through WADO-RS: what was described is what is kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from api.app import create_app
from api.wiring import Archive, open_archive
from infra.settings import load_settings
from schemas.dicom_json import JSON, dataset_to_json
from schemas.dicom_xml import xml_to_json
from tests.integration.stow_seed import (
    PDF,
    PDF_INSTANCE,
    SEED_BODY,
    SEED_CONTENT_TYPE,
    SEED_LOCATION,
    SEED_METADATA,
    SERIES,
    STUDY,
)
from tests.support import dataset_bytes, make_ct, part10_bytes, pydicom_file, split_multipart

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data_dir = tmp_path_factory.mktemp("stow-metadata")
    settings = load_settings({"data_dir": str(data_dir), "min_free_bytes": 0}, environ={})
    opened = open_archive(settings)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def multipart(root_type: str, *parts: tuple[dict[str, str], bytes]) -> tuple[bytes, str]:
    boundary = f"stow-{uuid.uuid4().hex}"
    body = b""
    for headers, payload in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        body += f"--{boundary}\r\n{head}\r\n".encode() + payload + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{root_type}"; boundary="{boundary}"'


def stow_json(client: TestClient, instances: list[JSON], *bulk: Any, path: str = "") -> Any:
    body, content_type = multipart(
        "application/dicom+json",
        ({"Content-Type": "application/dicom+json"}, orjson.dumps(instances)),
        *bulk,
    )
    return client.post(
        f"/dicomweb/studies{path}", content=body, headers={"Content-Type": content_type}
    )


def octets(location: str, payload: bytes, media_type: str = "application/octet-stream") -> Any:
    return {"Content-Type": media_type, "Content-Location": location}, payload


def retrieve(client: TestClient, url: str) -> Dataset:
    response = client.get(url, headers={"Accept": ANY_SYNTAX})
    assert response.status_code == 200, response.text
    [(_, payload)] = split_multipart(response.content, response.headers["content-type"])
    return dcmread(BytesIO(payload))


def sequence(response: Any, tag: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = response.json().get(tag, {}).get("Value", [])
    return items


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


# -- the seed's encapsulated PDF ---------------------------------------------------


def test_seed_encapsulated_pdf_is_stored_and_retrieved_as_sent(client: TestClient) -> None:
    response = client.post(
        "/dicomweb/studies", content=SEED_BODY, headers={"Content-Type": SEED_CONTENT_TYPE}
    )
    assert response.status_code == 200, response.text
    base = str(client.base_url) + "/dicomweb"
    assert value(response.json(), "00081190") == f"{base}/studies/{STUDY}"
    [item] = sequence(response, "00081199")
    assert value(item, "00081150") == "1.2.840.10008.5.1.4.1.1.104.1"
    assert value(item, "00081155") == PDF_INSTANCE
    url = value(item, "00081190")
    assert url == f"{base}/studies/{STUDY}/series/{SERIES}/instances/{PDF_INSTANCE}"

    stored = retrieve(client, url)
    assert stored.EncapsulatedDocument == PDF  # byte for byte
    assert "EncapsulatedDocumentLength" not in stored
    assert str(stored.PatientName) == "Zeta^Zoë"
    sent = xml_to_json(SEED_METADATA.encode("utf-8"))
    kept = dataset_to_json(stored)
    assert {k: v for k, v in kept.items() if k != "00420011"} == {
        k: v for k, v in sent.items() if k != "00420011"
    }


def test_seed_pdf_bulk_data_uri_serves_the_pdf(client: TestClient) -> None:
    client.post("/dicomweb/studies", content=SEED_BODY, headers={"Content-Type": SEED_CONTENT_TYPE})
    url = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{PDF_INSTANCE}/metadata"
    [metadata] = client.get(url, headers={"Accept": "application/dicom+json"}).json()
    bulk = client.get(
        metadata["00420011"]["BulkDataURI"], headers={"Accept": "application/octet-stream"}
    )
    assert bulk.status_code == 200 and bulk.content == PDF


def test_seed_answered_in_xml_when_asked(client: TestClient) -> None:
    headers = {"Content-Type": SEED_CONTENT_TYPE, "Accept": "application/dicom+xml"}
    response = client.post("/dicomweb/studies", content=SEED_BODY, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+xml"
    answer = xml_to_json(response.content)
    assert answer["00081199"]["Value"][0]["00081155"]["Value"] == [PDF_INSTANCE]


# -- pixel data ---------------------------------------------------------------------


def test_ct_as_json_and_octet_stream_comes_back_pixel_identical(client: TestClient) -> None:
    ct = make_ct(rows=64, cols=64, patient_id="STOW-META-CT")
    original = part10_bytes(ct)
    meta = dataset_to_json(dcmread(BytesIO(original)))
    meta["7FE00010"] = {"vr": "OW", "BulkDataURI": "/bulk/ct-pixels"}
    location = str(client.base_url) + "/bulk/ct-pixels"  # absolute form of the same URI
    response = stow_json(client, [meta], octets(location, ct.PixelData))
    assert response.status_code == 200, response.text
    stored = retrieve(client, value(sequence(response, "00081199")[0], "00081190"))
    assert np.array_equal(stored.pixel_array, ct.pixel_array)
    assert dataset_bytes(part10_bytes(stored)) == dataset_bytes(original)


def test_wado_metadata_and_bulk_data_stow_back_unchanged(client: TestClient) -> None:
    ct = make_ct(rows=32, cols=32, patient_id="STOW-META-WADO")
    first = client.post(
        "/dicomweb/studies",
        content=b"--b\r\nContent-Type: application/dicom\r\n\r\n"
        + part10_bytes(ct)
        + b"\r\n--b--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    url = value(sequence(first, "00081199")[0], "00081190")
    [meta] = client.get(f"{url}/metadata", headers={"Accept": "application/dicom+json"}).json()
    pixels_uri = meta["7FE00010"]["BulkDataURI"]
    bulk = client.get(
        pixels_uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    [(headers, pixels)] = split_multipart(bulk.content, bulk.headers["content-type"])
    copy_uid = generate_uid()
    meta["00080018"] = {"vr": "UI", "Value": [copy_uid]}
    response = stow_json(client, [meta], octets(headers["content-location"], pixels))
    assert response.status_code == 200, response.text
    stored = retrieve(client, value(sequence(response, "00081199")[0], "00081190"))
    assert stored.SOPInstanceUID == copy_uid
    assert np.array_equal(stored.pixel_array, ct.pixel_array)


def test_jpeg_bulk_part_is_stored_with_the_jpeg_transfer_syntax(client: TestClient) -> None:
    original = dcmread(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
    [frame] = generate_frames(original.PixelData, number_of_frames=1)
    meta = dataset_to_json(original)
    meta["00080018"] = {"vr": "UI", "Value": [generate_uid()]}
    for key in ("00280002", "00280004", "00280006", "00280010", "00280011", "00280100"):
        del meta[key]  # PS3.18: the Image Pixel Description may be left out
    meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "jpeg-image"}
    response = stow_json(client, [meta], octets("jpeg-image", frame, "image/jpeg"))
    assert response.status_code == 200, response.text
    stored = retrieve(client, value(sequence(response, "00081199")[0], "00081190"))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert list(generate_frames(stored.PixelData, number_of_frames=1)) == [frame]
    assert (stored.Rows, stored.Columns, stored.SamplesPerPixel) == (100, 100, 3)
    assert np.array_equal(stored.pixel_array, original.pixel_array)
    frames = client.get(
        value(sequence(response, "00081199")[0], "00081190") + "/metadata",
        headers={"Accept": "application/dicom+json"},
    )
    assert frames.status_code == 200 and "7FE00010" in frames.json()[0]


# -- failures ---------------------------------------------------------------------------


def _pdf_instance(uri: str) -> JSON:
    return {
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.104.1"]},
        "00080018": {"vr": "UI", "Value": [generate_uid()]},
        "0020000D": {"vr": "UI", "Value": [STUDY]},
        "0020000E": {"vr": "UI", "Value": [SERIES]},
        "00100020": {"vr": "LO", "Value": ["PDF-SEED-1"]},
        "00420011": {"vr": "OB", "BulkDataURI": uri},
        "00420012": {"vr": "LO", "Value": ["application/pdf"]},
    }


def test_a_missing_bulk_part_fails_only_its_instance(client: TestClient) -> None:
    kept, lost = _pdf_instance("a.pdf"), _pdf_instance("never-sent.pdf")
    response = stow_json(client, [kept, lost], octets("a.pdf", PDF, "application/pdf"))
    assert response.status_code == 202, response.text
    [failed] = sequence(response, "00081198")
    assert value(failed, "00081155") == lost["00080018"]["Value"][0]
    assert value(failed, "00081197") == 0xA900
    [stored] = sequence(response, "00081199")
    assert value(stored, "00081155") == kept["00080018"]["Value"][0]
    assert "never-sent.pdf" in response.headers["warning"]
    lost_url = value(stored, "00081190").replace(
        kept["00080018"]["Value"][0], lost["00080018"]["Value"][0]
    )
    assert client.get(lost_url, headers={"Accept": ANY_SYNTAX}).status_code == 404
    assert retrieve(client, value(stored, "00081190")).EncapsulatedDocument == PDF


@pytest.mark.parametrize(
    ("root_type", "payload"),
    [
        ("application/dicom+json", b'[{"00080016": {"vr": "UI", "Value": ['),
        ("application/dicom+xml", b"<NativeDicomModel><DicomAttribute tag="),
        ("application/dicom+json", b'[{"00080016": {"Value": ["1.2"]}}]'),
    ],
)
def test_malformed_metadata_alone_is_400(
    client: TestClient, root_type: str, payload: bytes
) -> None:
    body, content_type = multipart(root_type, ({"Content-Type": root_type}, payload))
    response = client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400, response.text
    [other] = sequence(response, "0008119A")
    assert value(other, "00081197") == 0xC000


def test_malformed_metadata_beside_a_good_instance_is_202(client: TestClient) -> None:
    body, content_type = multipart(
        "application/dicom+xml",
        ({"Content-Type": "application/dicom+xml"}, b"<NativeDicomModel"),
        ({"Content-Type": "application/dicom+xml"}, SEED_METADATA.encode()),
        ({"Content-Type": "application/pdf", "Content-Location": SEED_LOCATION}, PDF),
    )
    response = client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 202
    assert len(sequence(response, "00081199")) == 1 and len(sequence(response, "0008119A")) == 1


def test_an_instance_without_its_uids_is_refused(client: TestClient) -> None:
    no_sop_uid = _pdf_instance("a.pdf")
    del no_sop_uid["00080018"]
    no_study = _pdf_instance("a.pdf")
    del no_study["0020000D"]
    response = stow_json(client, [no_sop_uid, no_study], octets("a.pdf", PDF, "application/pdf"))
    assert response.status_code == 409, response.text
    assert [value(i, "00081197") for i in sequence(response, "0008119A")] == [0xC000]
    [failed] = sequence(response, "00081198")
    assert value(failed, "00081155") == no_study["00080018"]["Value"][0]
    assert value(failed, "00081197") == 0xC000


def test_an_instance_of_another_study_than_the_path_fails_a900(client: TestClient) -> None:
    path = "/1.2.826.0.1.3680043.8.498.77999"
    response = stow_json(
        client, [_pdf_instance("a.pdf")], octets("a.pdf", PDF, "application/pdf"), path=path
    )
    assert response.status_code == 409
    assert value(sequence(response, "00081198")[0], "00081197") == 0xA900


def test_a_non_storage_sop_class_is_refused_by_ingest(client: TestClient) -> None:
    instance = _pdf_instance("a.pdf") | {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.1.1"]}}
    response = stow_json(client, [instance], octets("a.pdf", PDF, "application/pdf"))
    assert response.status_code == 409
    assert value(sequence(response, "00081198")[0], "00081197") == 0x0122


def test_bulk_parts_without_any_metadata_are_400(client: TestClient) -> None:
    body, content_type = multipart(
        "application/dicom+json", octets("a.pdf", PDF, "application/pdf")
    )
    response = client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
