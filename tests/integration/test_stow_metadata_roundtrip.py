"""STOW-RS metadata + bulk data through the real ingest service (SQLite log, folder blobs).

The STOW router with a real IngestService and nothing else: what the
InstanceStored event records (the metadata every read path serves, and the
blob its BulkDataURIs point into) must equal what the request described, for
random small datasets; and the ingest invariants hold on this route too.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from api import stow
from infra.errors import Unavailable
from infra.factory import open_blob_store, open_event_log
from infra.ports import BlobStore, EventLog
from infra.settings import Settings
from ingest.service import IngestService
from schemas import codec
from schemas.dicom_json import JSON, dataset_to_json

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Store:
    settings: Settings
    ingest: IngestService
    log: EventLog
    blobs: BlobStore


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    folder = tmp_path_factory.mktemp("stow-roundtrip")
    log = open_event_log(f"sqlite:///{folder / 'log.db'}")
    blobs = open_blob_store(f"file:///{folder / 'blobs'}")
    settings = Settings(data_dir=folder, max_body_bytes=16 << 20)
    yield Store(settings, IngestService(log, blobs), log, blobs)
    log.close()
    blobs.close()


def _client(archive: Any) -> TestClient:
    app = FastAPI()
    app.include_router(stow.router)
    app.state.archive = archive
    return TestClient(app)


@pytest.fixture(scope="module")
def client(store: Store) -> Iterator[TestClient]:
    with _client(store) as test_client:
        yield test_client


def _post(client: TestClient, instances: list[JSON], bulk: dict[str, bytes]) -> Any:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode()
        + orjson.dumps(instances)
        + b"\r\n"
    )
    for location, payload in bulk.items():
        head = f"Content-Type: application/octet-stream\r\nContent-Location: {location}\r\n"
        body += f"--{boundary}\r\n{head}\r\n".encode() + payload + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    content_type = f"multipart/related; type=application/dicom+json; boundary={boundary}"
    return client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})


# -- random small datasets --------------------------------------------------------------

_TEXT = (
    st.text(
        alphabet=st.characters(codec="utf-8", categories=("L", "N"), include_characters=" -.,"),
        min_size=1,
        max_size=24,
    )
    .map(str.strip)
    .filter(bool)
)
_CODE = st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True)
_NAME = st.lists(_TEXT.filter(lambda t: "^" not in t), min_size=1, max_size=3).map("^".join)
_DATE = st.dates(date(1900, 1, 1), date(2199, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))
_BYTES = st.integers(0, 1500).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n))
_FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_DOUBLE = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = draw(_NAME)
    ds.PatientID = draw(_CODE)
    ds.StudyDate = draw(_DATE)
    ds.ImageType = draw(st.lists(_CODE, min_size=1, max_size=3))
    ds.StudyDescription = draw(_TEXT)
    ds.InstanceNumber = draw(st.integers(-(2**31), 2**31 - 1))
    ds.SliceThickness = draw(st.integers(-99999, 99999)) / 100
    ds.Rows = draw(st.integers(0, 65535))
    ds.add_new(0x00181310, "US", draw(st.lists(st.integers(0, 65535), min_size=4, max_size=4)))
    ds.add_new(0x00189219, "FD", draw(_DOUBLE))
    ds.add_new(0x00660016, "FL", draw(st.lists(_FLOAT32, min_size=1, max_size=3)))
    ds.add_new(0x00282000, "OB", draw(_BYTES))  # ICC Profile
    ds.add_new(0x00189305, "SL", draw(st.integers(-(2**31), 2**31 - 1)))
    items = []
    for _ in range(draw(st.integers(0, 2))):
        item = Dataset()
        item.CodeValue = draw(_CODE)
        item.CodeMeaning = draw(_TEXT)
        item.add_new(0x00282000, "OB", draw(_BYTES))
        items.append(item)
    ds.ContentSequence = Sequence(items)
    return ds


def _as_request(obj: JSON, bulk: dict[str, bytes], send_bulk: list[bool]) -> JSON:
    """InlineBinary values become BulkDataURIs with parts, where `send_bulk` says so."""
    out: JSON = {}
    for key, attr in obj.items():
        if "InlineBinary" in attr and send_bulk and send_bulk.pop():
            uri = f"bulk/{uuid.uuid4().hex}"
            bulk[uri] = base64.b64decode(attr["InlineBinary"])
            attr = {"vr": attr["vr"], "BulkDataURI": uri}
        elif attr.get("vr") == "SQ" and attr.get("Value"):
            attr = attr | {"Value": [_as_request(item, bulk, send_bulk) for item in attr["Value"]]}
        out[key] = attr
    return out


def _values(obj: JSON, read: Any) -> JSON:
    """Bulk values as bytes, however they are referenced, so requests and events compare."""
    out: JSON = {}
    for key, attr in obj.items():
        if "InlineBinary" in attr:
            attr = {"vr": attr["vr"], "bytes": base64.b64decode(attr["InlineBinary"])}
        elif "BulkDataURI" in attr:
            attr = {"vr": attr["vr"], "bytes": read(attr["BulkDataURI"])}
        elif attr.get("vr") == "SQ" and attr.get("Value"):
            attr = attr | {"Value": [_values(item, read) for item in attr["Value"]]}
        out[key] = attr
    return out


def _stored_event(store: Store, start: dict[int, int]) -> Any:
    records = store.log.read(start, 10)
    assert len(records) == 1
    return codec.decode(records[0].value).payload


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ds=datasets(), choices=st.lists(st.booleans(), min_size=4, max_size=4))
def test_random_datasets_round_trip(
    client: TestClient, store: Store, ds: Dataset, choices: list[bool]
) -> None:
    sent = dataset_to_json(ds)
    bulk: dict[str, bytes] = {}
    request = _as_request(sent, bulk, list(choices))
    start = store.log.end()
    response = _post(client, [request], bulk)
    assert response.status_code == 200, response.text
    event = _stored_event(store, start)
    assert event.sop_instance_uid == ds.SOPInstanceUID

    def blob_range(uri: str) -> bytes:
        offset, length = (int(n) for n in uri.removeprefix("bulkdata/").split("-"))
        return store.blobs.get_range(event.blob.key, offset, length)

    assert _values(event.metadata, blob_range) == _values(request, bulk.__getitem__)


# -- ingest invariants on this route --------------------------------------------------


def _pdf_request(n: int) -> tuple[list[JSON], dict[str, bytes]]:
    instances = [
        {
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.104.1"]},
            "00080018": {"vr": "UI", "Value": [generate_uid()]},
            "0020000D": {"vr": "UI", "Value": [generate_uid()]},
            "0020000E": {"vr": "UI", "Value": [generate_uid()]},
            "00420011": {"vr": "OB", "BulkDataURI": f"doc/{i}"},
        }
        for i in range(n)
    ]
    return instances, {f"doc/{i}": b"%PDF-1.4 %%EOF\n" * (i + 1) for i in range(n)}


def test_storage_down_is_503_and_nothing_is_acknowledged(store: Store, tmp_path: Path) -> None:
    class DownBlobs:
        def put_if_absent(self, key: str, source: object) -> bool:
            raise Unavailable("disk gone")

    down = Store(store.settings, IngestService(store.log, DownBlobs()), store.log, store.blobs)  # type: ignore[arg-type]
    end = store.log.end()
    with _client(down) as client:
        response = _post(client, *_pdf_request(3))
    assert response.status_code == 503
    assert response.headers["retry-after"]
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xA700] * 3
    assert store.log.end() == end


def test_a_resent_instance_is_a_duplicate_success_with_one_blob(
    client: TestClient, store: Store
) -> None:
    instances, bulk = _pdf_request(1)
    start = store.log.end()
    first, again = _post(client, instances, bulk), _post(client, instances, bulk)
    assert (first.status_code, again.status_code) == (200, 200)
    assert "00081196" not in again.json()["00081199"]["Value"][0]  # no warning either
    events = [codec.decode(r.value).payload for r in store.log.read(start, 10)]
    assert len(events) == 2 and events[0].blob == events[1].blob


def test_spooled_and_assembled_files_are_removed(client: TestClient, store: Store) -> None:
    instances, bulk = _pdf_request(2)
    assert _post(client, instances, bulk).status_code == 200
    assert not [p for p in (store.settings.data_dir / "tmp").rglob("*") if p.is_file()]
