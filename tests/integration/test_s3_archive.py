"""The archive on S3 blobs (SQLite log, chDB index, in one process): STOW-RS in, WADO-RS out
byte for byte and frame by frame, `check` finds orphans by listing the bucket, and a frozen
store refuses STOW with 503 in bounded time, keeping nothing half done.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydicom import Dataset, dcmread
from pydicom.encaps import generate_frames

from api.app import create_app
from api.check import check_archive
from api.wiring import Archive, open_archive
from infra.s3_blobs import S3BlobStore
from infra.settings import load_settings
from tests.seaweed import SeaweedFS, private_seaweed  # noqa: F401  (a fixture)
from tests.support import dataset_bytes, make_ct, part10_bytes, pydicom_file, split_multipart

BOUNDARY = "s3-archive-boundary"
ALL_SYNTAXES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
RLE_FRAMES = 'multipart/related; type="image/x-dicom-rle"; transfer-syntax=1.2.840.10008.1.2.5'
FAST = {"connect_timeout": "0.5", "read_timeout": "0.5", "max_attempts": "2"}


@pytest.fixture(scope="module")
def archive(
    private_seaweed: SeaweedFS,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Archive]:
    data_dir = tmp_path_factory.mktemp("s3-archive")
    settings = load_settings(
        {"data_dir": str(data_dir), "min_free_bytes": 0, "blob_url": private_seaweed.url(**FAST)},
        environ={},
    )
    opened = open_archive(settings)
    assert isinstance(opened.blobs, S3BlobStore)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def stow(client: TestClient, *parts: bytes) -> tuple[int, dict[str, str]]:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    response = client.post(
        "/dicomweb/studies",
        content=body + f"--{BOUNDARY}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
    )
    return response.status_code, dict(response.headers)


def retrieve(
    client: TestClient, ds: Dataset, suffix: str = "", accept: str = ALL_SYNTAXES
) -> bytes:
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )
    response = client.get(url, headers={"Accept": accept})
    assert response.status_code == 200, response.text
    [(_, body)] = split_multipart(response.content, response.headers["content-type"])
    return body


def test_stow_then_wado_byte_identical_and_frames_by_range(client: TestClient) -> None:
    ct = make_ct(rows=32, cols=32, patient_id="S3-1")
    rle_path = pydicom_file("SC_rgb_rle_2frame.dcm")
    rle = dcmread(rle_path)
    assert stow(client, part10_bytes(ct), rle_path.read_bytes())[0] == 200
    assert dataset_bytes(retrieve(client, ct)) == dataset_bytes(part10_bytes(ct))
    assert dataset_bytes(retrieve(client, rle)) == dataset_bytes(rle_path.read_bytes())
    frames = list(generate_frames(rle.PixelData, number_of_frames=2))
    assert retrieve(client, rle, "/frames/2", RLE_FRAMES) == frames[1]


def test_check_lists_the_bucket_and_reports_an_orphan(archive: Archive) -> None:
    orphan = "instances/00/00/" + "0" * 64 + ".dcm"
    archive.blobs.put_if_absent(orphan, b"bytes no event refers to")
    report = check_archive(archive.log, archive.blobs, verify_hashes=True)
    assert report.orphans == [orphan]
    assert (report.missing, report.corrupt) == ([], [])


def test_a_frozen_store_refuses_stow_with_503_in_bounded_time_and_keeps_nothing(
    archive: Archive,
    client: TestClient,
    private_seaweed: SeaweedFS,  # noqa: F811
) -> None:
    before = archive.log.end()
    instance = part10_bytes(make_ct(rows=16, cols=16, patient_id="S3-FROZEN"))
    private_seaweed.pause()
    try:
        began = time.monotonic()
        status, headers = stow(client, instance)
        elapsed = time.monotonic() - began
    finally:
        private_seaweed.resume()
    assert status == 503 and "retry-after" in headers
    assert elapsed <= archive.blobs.options.unavailable_within + 1  # type: ignore[attr-defined]
    assert archive.log.end() == before
    assert stow(client, instance)[0] == 200
