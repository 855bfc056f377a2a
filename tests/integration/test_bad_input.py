"""Bad input over the wire: a clear status or problem, and nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.chronicle_server import ChronicleServer, StartChronicle
from tests.support import make_ct, part10_bytes

BOUNDARY = "chronicle-test-boundary"


@pytest.fixture(scope="module")
def server(start_chronicle_module: StartChronicle) -> ChronicleServer:
    return start_chronicle_module(env={"CHRONICLE_MAX_BODY_BYTES": str(2 * 1024 * 1024)})


def blob_files(server: ChronicleServer) -> list[Path]:
    return sorted((server.data_dir / "blobs").rglob("*.dcm"))


def log_end(server: ChronicleServer) -> object:
    return httpx.get(f"{server.base_url}/healthz").json()["log_end"]


@pytest.fixture
def nothing_stored(server: ChronicleServer) -> Iterator[None]:
    before = (blob_files(server), log_end(server))
    yield
    assert (blob_files(server), log_end(server)) == before


def stow(server: ChronicleServer, parts: list[bytes], boundary: str = BOUNDARY) -> httpx.Response:
    body = (
        b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in parts
        )
        + f"--{BOUNDARY}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return httpx.post(
        f"{server.dicomweb_url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )


def without(keyword: str) -> bytes:
    ds = make_ct(rows=8, cols=8)
    delattr(ds, keyword)
    return part10_bytes(ds)


def with_uid(value: str) -> bytes:
    ds = make_ct(rows=8, cols=8)
    ds.SeriesInstanceUID = value
    return part10_bytes(ds)


BAD_PARTS = {
    "non-DICOM bytes": b"GIF89a this is no DICOM file" * 20,
    "truncated file": part10_bytes(make_ct(rows=64, cols=64))[:3000],
    "missing SOP Instance UID": without("SOPInstanceUID"),
    "missing Study Instance UID": without("StudyInstanceUID"),
    "UID ../x": with_uid("../x"),
    "UID over 64 characters": with_uid("1." + "2" * 70),
}


@pytest.mark.parametrize("name", sorted(BAD_PARTS))
def test_stow_refuses_bad_instances(
    server: ChronicleServer, nothing_stored: None, name: str
) -> None:
    response = stow(server, [BAD_PARTS[name]])
    assert response.status_code == 409, response.text
    body = response.json()
    failures = body.get("00081198", body.get("0008119A", {})).get("Value", [])
    assert failures and failures[0]["00081197"]["Value"][0] in (0xC000, 0xA900)


def test_stow_wrong_boundary_is_a_400_problem(
    server: ChronicleServer, nothing_stored: None
) -> None:
    response = stow(server, [part10_bytes(make_ct(rows=8, cols=8))], boundary="another-boundary")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "boundary" in response.json()["detail"].lower()


def test_stow_body_over_the_limit_is_413(server: ChronicleServer, nothing_stored: None) -> None:
    big = part10_bytes(make_ct(rows=1100, cols=1100))  # ~2.4 MB > 2 MiB limit
    response = stow(server, [big])
    assert response.status_code == 413


def bad_dataset(keyword: str, value: str | None) -> Dataset:
    ds = make_ct(rows=8, cols=8)
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyInstanceUID", None),
        ("SeriesInstanceUID", None),
        ("SeriesInstanceUID", "../x"),
        ("StudyInstanceUID", "1." + "2" * 70),
    ],
)
def test_c_store_refuses_bad_instances(
    server: ChronicleServer, nothing_stored: None, keyword: str, value: str | None
) -> None:
    ds = bad_dataset(keyword, value)
    ae = AE(ae_title="HARNESS")
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        assert status.Status in (0xC000, 0xA900), hex(status.Status)
        assert status.get("ErrorComment")
    finally:
        assoc.release()


def test_c_store_of_a_bare_dataset_is_refused(
    server: ChronicleServer, nothing_stored: None
) -> None:
    """A dataset with nothing but its SOP identity (what a broken modality might send)."""
    ae = AE(ae_title="HARNESS")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = "1.2.3.4.5"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        status = assoc.send_c_store(ds)  # no Study/Series UID: cannot be kept
        assert status.Status in (0xC000, 0xA900), hex(status.Status)
    finally:
        assoc.release()


def test_unknown_calling_ae_is_rejected(server: ChronicleServer, nothing_stored: None) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="CHRONICLE")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognised
