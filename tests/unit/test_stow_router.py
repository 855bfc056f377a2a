"""STOW-RS router against a fake ingest service: statuses, response module, media types."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from api import stow
from infra.errors import Invalid, Unavailable
from infra.settings import Settings
from schemas.events import BlobRef, InstanceStored, Source

STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
BOUNDARY = "chronicle-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
NATIVE = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


def _sop(n: int) -> str:
    return f"{SERIES}.{n}"


def _part10(n: int, study: str = STUDY) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _sop(n)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = SERIES
    ds.PatientID = "P1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _body(*parts: bytes, part_type: str = "application/dicom") -> bytes:
    out = b""
    for data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@dataclass(frozen=True)
class Outcome:
    event: InstanceStored
    duplicate: bool = False
    warnings: list[str] = field(default_factory=list)


class FakeIngest:
    """Records each call; raises or warns per SOP Instance UID as told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Source, str | None]] = []
        self.stored: list[str] = []
        self.failures: dict[str, Exception] = {}
        self.warnings: dict[str, list[str]] = {}
        self.duplicates: set[str] = set()

    def store_part10_file(
        self, path: Path, *, source: Source, expected_study_uid: str | None = None
    ) -> Outcome:
        try:
            ds = dcmread(path)
            sop = str(ds.SOPInstanceUID)
        except Exception as exc:
            raise Invalid(f"not a DICOM file: {exc}") from exc
        self.calls.append((sop, source, expected_study_uid))
        if sop in self.failures:
            raise self.failures[sop]
        if expected_study_uid is not None and ds.StudyInstanceUID != expected_study_uid:
            raise Invalid("instance of another study", status=0xA900)
        self.stored.append(sop)
        event = InstanceStored(
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=sop,
            series_instance_uid=str(ds.SeriesInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            patient_id="P1",
            issuer_of_patient_id="",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            blob=BlobRef("k", "0" * 64, 1, 0),
            source=source,
            metadata={},
        )
        return Outcome(event, sop in self.duplicates, self.warnings.get(sop, []))

    def store_part10_files(
        self,
        paths: list[Path],
        *,
        source: Source,
        expected_study_uid: str | None = None,
        received: bool = False,
    ) -> list[Outcome | Exception]:
        """As the service does for an outage: once storage is unavailable, every
        file not yet stored gets that error."""
        results: list[Outcome | Exception] = []
        down: Unavailable | None = None
        for path in paths:
            if down is not None:
                results.append(down)
                continue
            try:
                outcome = self.store_part10_file(
                    path, source=source, expected_study_uid=expected_study_uid
                )
                results.append(outcome)
            except Unavailable as exc:
                down = exc
                results.append(exc)
            except Exception as exc:
                results.append(exc)
        return results


@dataclass
class FakeArchive:
    settings: Settings
    ingest: FakeIngest


@pytest.fixture
def archive(tmp_path: Path) -> FakeArchive:
    return FakeArchive(Settings(data_dir=tmp_path, max_body_bytes=64 * 1024), FakeIngest())


@pytest.fixture
def client(archive: FakeArchive) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(stow.router)
    app.state.archive = archive
    with TestClient(app) as test_client:
        yield test_client


def _post(client: TestClient, body: bytes, path: str = "/dicomweb/studies", **headers: str) -> Any:
    return client.post(path, content=body, headers={"Content-Type": CONTENT_TYPE, **headers})


def _seq(response: Any, tag: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = response.json().get(tag, {}).get("Value", [])
    return items


def _value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


# -- success --------------------------------------------------------------


def test_all_stored_is_200_with_referenced_sop_sequence(
    client: TestClient, archive: FakeArchive
) -> None:
    response = _post(client, _body(_part10(1), _part10(2)))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    base = "http://testserver/dicomweb"
    assert response.json()["00081190"] == {"vr": "UR", "Value": [f"{base}/studies/{STUDY}"]}
    items = _seq(response, "00081199")
    assert [_value(i, "00081155") for i in items] == [_sop(1), _sop(2)]
    assert _value(items[0], "00081150") == CTImageStorage
    assert _value(items[0], "00081190") == (
        f"{base}/studies/{STUDY}/series/{SERIES}/instances/{_sop(1)}"
    )
    assert "00081196" not in items[0] and "00081198" not in response.json()
    sop, source, expected = archive.ingest.calls[0]
    assert source == Source("STOW", peer="testclient")
    assert expected is None
    assert list((archive.settings.data_dir / "tmp").iterdir()) == []  # spool cleaned


def test_public_url_is_the_retrieve_url_base(client: TestClient, archive: FakeArchive) -> None:
    archive.settings.public_url = "https://pacs.example.org/"
    response = _post(client, _body(_part10(1)))
    assert _value(response.json(), "00081190") == (
        f"https://pacs.example.org/dicomweb/studies/{STUDY}"
    )


def test_identical_duplicate_is_a_plain_success(client: TestClient, archive: FakeArchive) -> None:
    archive.ingest.duplicates.add(_sop(1))
    archive.ingest.warnings[_sop(1)] = ["duplicate: identical instance already kept"]
    response = _post(client, _body(_part10(1)))
    assert response.status_code == 200
    assert "00081196" not in _seq(response, "00081199")[0]


@pytest.mark.parametrize(
    ("notes", "reason"),
    [
        (["Type 1 attribute Modality missing"], 0xB007),
        (["B006 private elements dropped"], 0xB006),
        (["dead link"], 0xB007),
    ],
)
def test_service_warnings_give_202_with_warning_reason(
    client: TestClient, archive: FakeArchive, notes: list[str], reason: int
) -> None:
    archive.ingest.warnings[_sop(2)] = notes
    response = _post(client, _body(_part10(1), _part10(2)))
    assert response.status_code == 202
    first, second = _seq(response, "00081199")
    assert "00081196" not in first
    assert _value(second, "00081196") == reason


# -- failures -------------------------------------------------------------


def test_partial_failure_is_202_with_failed_sop_sequence(
    client: TestClient, archive: FakeArchive
) -> None:
    archive.ingest.failures[_sop(2)] = Invalid("cannot parse", status=0xC000)
    response = _post(client, _body(_part10(1), _part10(2), _part10(3)))
    assert response.status_code == 202
    assert [_value(i, "00081155") for i in _seq(response, "00081199")] == [_sop(1), _sop(3)]
    [failed] = _seq(response, "00081198")
    assert _value(failed, "00081150") == CTImageStorage
    assert _value(failed, "00081155") == _sop(2)
    assert failed["00081197"] == {"vr": "US", "Value": [0xC000]}
    assert response.headers["warning"].startswith('299 chronicle "C000: cannot parse"')


def test_unreadable_part_goes_to_other_failures(client: TestClient) -> None:
    response = _post(client, _body(b"this is not DICOM", _part10(1)))
    assert response.status_code == 202
    assert "00081198" not in response.json()
    [other] = _seq(response, "0008119A")
    assert _value(other, "00081197") == 0xC000


@pytest.mark.parametrize(
    ("part_type", "body_part"),
    [("text/plain", b"hello"), ("application/dicom", b"")],
)
def test_wrong_or_empty_part_is_not_stored(
    client: TestClient, archive: FakeArchive, part_type: str, body_part: bytes
) -> None:
    response = _post(client, _body(body_part, part_type=part_type))
    assert response.status_code == 409
    assert _value(_seq(response, "0008119A")[0], "00081197") == 0xC000
    assert archive.ingest.calls == []


def test_none_stored_for_content_reasons_is_409(client: TestClient, archive: FakeArchive) -> None:
    archive.ingest.failures[_sop(1)] = Invalid("not a storage class", status=0x0122)
    archive.ingest.failures[_sop(2)] = RuntimeError("bug")
    response = _post(client, _body(_part10(1), _part10(2)))
    assert response.status_code == 409
    reasons = [_value(i, "00081197") for i in _seq(response, "00081198")]
    assert reasons == [0x0122, 0x0110]
    assert "00081199" not in response.json()
    assert response.json()["00081190"] == {"vr": "UR"}


def test_storage_unavailable_with_nothing_stored_is_503(
    client: TestClient, archive: FakeArchive
) -> None:
    archive.ingest.failures[_sop(1)] = Unavailable("disk below floor")
    response = _post(client, _body(_part10(1), _part10(2)))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert [_value(i, "00081197") for i in _seq(response, "00081198")] == [0xA700, 0xA700]
    assert [call[0] for call in archive.ingest.calls] == [_sop(1)]  # the rest not tried


def test_storage_unavailable_after_some_stored_is_202(
    client: TestClient, archive: FakeArchive
) -> None:
    archive.ingest.failures[_sop(2)] = Unavailable("log down")
    response = _post(client, _body(_part10(1), _part10(2), _part10(3)))
    assert response.status_code == 202
    assert "retry-after" not in response.headers
    assert [_value(i, "00081155") for i in _seq(response, "00081199")] == [_sop(1)]
    failed = _seq(response, "00081198")
    assert [(_value(i, "00081155"), _value(i, "00081197")) for i in failed] == [
        (_sop(2), 0xA700),
        (_sop(3), 0xA700),
    ]


# -- study-scoped store ---------------------------------------------------


def test_study_scoped_mismatch_is_409_with_a900_and_nothing_stored(
    client: TestClient, archive: FakeArchive
) -> None:
    body = _body(_part10(1, study=OTHER_STUDY))
    response = _post(client, body, f"/dicomweb/studies/{STUDY}")
    assert response.status_code == 409
    [failed] = _seq(response, "00081198")
    assert (_value(failed, "00081155"), _value(failed, "00081197")) == (_sop(1), 0xA900)
    assert archive.ingest.stored == []
    assert archive.ingest.calls[0][2] == STUDY


def test_study_scoped_store_keeps_the_matching_instances(
    client: TestClient, archive: FakeArchive
) -> None:
    body = _body(_part10(1), _part10(2, study=OTHER_STUDY))
    response = _post(client, body, f"/dicomweb/studies/{STUDY}")
    assert response.status_code == 202
    assert archive.ingest.stored == [_sop(1)]
    assert _value(response.json(), "00081190").endswith(f"/studies/{STUDY}")


def test_bad_study_uid_in_path_is_400(client: TestClient, archive: FakeArchive) -> None:
    response = _post(client, _body(_part10(1)), "/dicomweb/studies/1.2.abc")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert archive.ingest.calls == []


# -- the request's framing ------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "detail"),
    [
        ("application/dicom", "multipart/related"),
        ("multipart/related; type=image/jpeg; boundary=x", "image/jpeg"),
    ],
)
def test_unsupported_media_type_is_415(client: TestClient, content_type: str, detail: str) -> None:
    response = client.post(
        "/dicomweb/studies", content=_body(_part10(1)), headers={"Content-Type": content_type}
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


def test_wrong_boundary_is_400(client: TestClient, archive: FakeArchive) -> None:
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=other'}
    response = client.post("/dicomweb/studies", content=_body(_part10(1)), headers=headers)
    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]
    assert archive.ingest.calls == []


def test_truncated_body_stores_nothing(client: TestClient, archive: FakeArchive) -> None:
    body = _body(_part10(1), _part10(2))
    response = _post(client, body[: len(body) - 10])
    assert response.status_code == 400
    assert "close delimiter" in response.json()["detail"]
    assert archive.ingest.calls == []


def test_body_without_parts_is_400(client: TestClient) -> None:
    response = _post(client, f"--{BOUNDARY}--\r\n".encode())
    assert response.status_code == 400


def test_declared_length_over_the_limit_is_413(client: TestClient, archive: FakeArchive) -> None:
    response = _post(client, _body(b"x" * 70 * 1024))
    assert response.status_code == 413
    assert archive.ingest.calls == []


def test_streamed_body_over_the_limit_is_413(client: TestClient, archive: FakeArchive) -> None:
    def chunks() -> Iterator[bytes]:
        yield _body(_part10(1))[:-20]
        for _ in range(10):
            yield b"y" * 8192

    response = client.post(
        "/dicomweb/studies", content=chunks(), headers={"Content-Type": CONTENT_TYPE}
    )
    assert response.status_code == 413
    assert archive.ingest.calls == []
    assert list((archive.settings.data_dir / "tmp").iterdir()) == []


# -- response media types -------------------------------------------------


def _xml_attributes(root: ET.Element) -> dict[str, ET.Element]:
    return {a.attrib["tag"]: a for a in root.findall(f"{NATIVE}DicomAttribute")}


def test_xml_response_when_accept_asks(client: TestClient, archive: FakeArchive) -> None:
    archive.ingest.failures[_sop(2)] = Invalid("bad", status=0xC000)
    accept = "application/dicom+json;q=0.5, application/dicom+xml"
    response = _post(client, _body(_part10(1), _part10(2)), Accept=accept)
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/dicom+xml"
    attributes = _xml_attributes(ET.fromstring(response.content))
    assert set(attributes) == {"00081190", "00081198", "00081199"}
    values = [v.text for v in attributes["00081198"].iter(f"{NATIVE}Value")]
    assert _sop(2) in values and str(0xC000) in values


def test_multipart_xml_response(client: TestClient) -> None:
    accept = 'multipart/related; type="application/dicom+xml"'
    response = _post(client, _body(_part10(1)), Accept=accept)
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/dicom+xml"; boundary=')
    boundary = content_type.rsplit("boundary=", 1)[1].encode()
    [_, part, _] = response.content.split(b"--" + boundary)
    head, xml = part.split(b"\r\n\r\n", 1)
    assert b"Content-Type: application/dicom+xml" in head
    assert "00081199" in _xml_attributes(ET.fromstring(xml.removesuffix(b"\r\n")))


def test_unacceptable_accept_is_406(client: TestClient, archive: FakeArchive) -> None:
    response = _post(client, _body(_part10(1)), Accept="image/png")
    assert response.status_code == 406
    assert archive.ingest.calls == []


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", stow.DICOM_JSON),
        ("*/*", stow.DICOM_JSON),
        ("application/json", stow.DICOM_JSON),
        ("application/dicom+xml;q=0.9, application/dicom+json;q=0.8", stow.DICOM_XML),
        ('multipart/related; type="application/dicom+xml", */*;q=0.1', stow.MULTIPART_XML),
        ('multipart/related; x="a, b"; type=application/dicom+xml', stow.MULTIPART_XML),
        ("application/dicom+json;q=0", None),
        ("text/html, image/png", None),
    ],
)
def test_negotiate(accept: str, expected: str | None) -> None:
    assert stow.negotiate(accept) == expected
