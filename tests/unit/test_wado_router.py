"""WADO-RS router over a real chDB projection store and a real file blob store.

Instances are Part-10 files built here; their rows go straight into the
`instance` table (as the projector would write them), with metadata from
schemas.dicom_json in blob coordinates.
"""

from __future__ import annotations

import hashlib
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG4HP41,
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    VideoEndoscopicImageStorage,
)

from api import wado
from api.catalog import list_instances, load_metadata
from api.negotiation import byte_range, parse_accept
from infra.factory import open_projection_store
from infra.fs_blobs import FileBlobStore
from infra.ports import ProjectionStore
from infra.settings import Settings
from projections.rows import MEMBER_COLUMNS
from schemas.dicom_json import dataset_to_json

ROOT = "1.2.826.0.1.3680043.8.498.4242"
STUDY, VIDEO_STUDY, BE_STUDY = f"{ROOT}.1", f"{ROOT}.2", f"{ROOT}.3"
SERIES_A, SERIES_B, SERIES_V, SERIES_BE = f"{ROOT}.1.1", f"{ROOT}.1.2", f"{ROOT}.2.1", f"{ROOT}.3.1"
EXPLICIT, IMPLICIT, RLE = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(RLELossless)
BIG = str(ExplicitVRBigEndian)
DICOM_ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
XML = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


@dataclass
class Stored:
    sop: str
    series: str
    ts: str
    blob: bytes
    pixels: np.ndarray[Any, Any]
    number: int
    sidecar: bool = False
    study: str = STUDY


@dataclass
class FakeArchive:
    """The Archive attributes WADO uses."""

    settings: Settings
    blobs: FileBlobStore
    index: ProjectionStore
    fresh: bool = True
    barriers: list[bool] = field(default_factory=list)

    def read_barrier(self) -> bool:
        self.barriers.append(self.fresh)
        return self.fresh


def _dataset(sop: str, series: str, study: str, number: int, seed: int) -> tuple[Dataset, Any]:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID = sop, series, study
    ds.PatientID, ds.PatientName, ds.Modality = "P1", "Doe^Jane", "CT"
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    arr = np.random.default_rng(seed).integers(0, 4096, size=(8, 8), dtype="<u2")
    icon = Dataset()
    icon.Rows = icon.Columns = 40
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(256)) * 6 + bytes(64)
    ds.IconImageSequence = [icon]
    return ds, arr


def _part10(ds: Dataset, ts: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    out = io.BytesIO()
    fds = FileDataset("", ds, file_meta=meta, preamble=b"\0" * 128)
    dcmwrite(out, fds, implicit_vr=ts == IMPLICIT, enforce_file_format=True)
    return out.getvalue()


def _build(sop: str, series: str, number: int, ts: str, *, sidecar: bool = False) -> Stored:
    ds, arr = _dataset(sop, series, STUDY, number, seed=number)
    ds.PixelData = arr.tobytes()
    if ts == RLE:
        ds.compress(RLELossless, arr, generate_instance_uid=False)
    return Stored(sop, series, ts, _part10(ds, ts), arr, number, sidecar)


def _video() -> Stored:
    ds, arr = _dataset(f"{SERIES_V}.1", SERIES_V, VIDEO_STUDY, 1, seed=9)
    ds.SOPClassUID = VideoEndoscopicImageStorage
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_PARTIAL_420"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    blob = _part10(ds, MPEG4HP41)
    return Stored(ds.SOPInstanceUID, SERIES_V, str(MPEG4HP41), blob, arr, 1, study=VIDEO_STUDY)


def _big_endian() -> Stored:
    ds, arr = _dataset(f"{SERIES_BE}.1", SERIES_BE, BE_STUDY, 1, seed=7)
    ds.PixelData = arr.astype(">u2").tobytes()
    ds["PixelData"].VR = "OW"
    blob = _part10(ds, ExplicitVRBigEndian)
    return Stored(ds.SOPInstanceUID, SERIES_BE, BIG, blob, arr, 1, study=BE_STUDY)


INSTANCES = [
    _build(f"{SERIES_A}.2", SERIES_A, 2, EXPLICIT),
    _build(f"{SERIES_A}.1", SERIES_A, 1, EXPLICIT, sidecar=True),
    _build(f"{SERIES_B}.1", SERIES_B, 1, RLE),
    _build(f"{SERIES_B}.2", SERIES_B, 2, IMPLICIT),
]
VIDEO, BIG_ENDIAN = _video(), _big_endian()
BY_SOP = {s.sop: s for s in [*INSTANCES, VIDEO, BIG_ENDIAN]}


def _row(stored: Stored, blobs: FileBlobStore) -> list[Any]:
    key = "sha256/" + hashlib.sha256(stored.blob).hexdigest()
    blobs.put_if_absent(key, stored.blob)
    ds = dcmread(io.BytesIO(stored.blob))
    meta = dataset_to_json(ds, bulk_offset_base=0, dataset_start=0)
    frames = ""
    if stored.ts == EXPLICIT:
        offset, length = _bulk(meta["7FE00010"]["BulkDataURI"])
        frames = orjson.dumps([[[offset, length]]]).decode()
    metadata, sidecar_key = orjson.dumps(meta).decode(), ""
    if stored.sidecar:
        sidecar_key = "sidecar/" + hashlib.sha256(metadata.encode()).hexdigest()
        blobs.put_if_absent(sidecar_key, metadata.encode())
        metadata = ""
    return [
        stored.sop, str(ds.SOPClassUID), stored.series, stored.study, "P1", "", "CT", stored.number,
        8, 8, 16, None, stored.ts, key, len(stored.blob), "sha", 132, frames, "", metadata,
        sidecar_key, datetime.now(UTC), 0, 1,
    ]  # fmt: skip


_COLUMNS = [
    "sop_instance_uid", "sop_class_uid", "series_instance_uid", "study_instance_uid",
    "patient_id", "issuer_of_patient_id", "modality", "instance_number", "rows", "columns",
    "bits_allocated", "number_of_frames", "transfer_syntax_uid", "blob_key", "blob_size",
    "dataset_sha256", "dataset_offset", "frames", "frames_note", "metadata", "sidecar_key",
    "received_at", "hidden", "version",
]  # fmt: skip


def _bulk(uri: str) -> tuple[int, int]:
    match = re.search(r"bulkdata/(\d+)-(\d+)$", uri)
    assert match, uri
    return int(match[1]), int(match[2])


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeArchive]:
    root: Path = tmp_path_factory.mktemp("wado")
    index = open_projection_store(f"chdb://{root / 'index'}")
    blobs = FileBlobStore(root / "blobs")
    try:
        rows = [_row(s, blobs) for s in BY_SOP.values()]
        hidden = _row(_build(f"{SERIES_A}.9", SERIES_A, 9, EXPLICIT), blobs)
        hidden[-2] = 1  # a rejected instance: never served
        index.insert("instance", [*rows, hidden], _COLUMNS)
        # What the projector writes beside each instance row (migrations 005, 007).
        named = [dict(zip(_COLUMNS, r, strict=True)) for r in [*rows, hidden]]
        index.insert(
            "instance_member", [[n[c] for c in MEMBER_COLUMNS] for n in named], MEMBER_COLUMNS
        )
        yield FakeArchive(Settings(data_dir=root), blobs, index)
    finally:
        index.close()


@pytest.fixture
def client(archive: FakeArchive) -> Iterator[TestClient]:
    archive.fresh, archive.settings.public_url = True, ""
    app = FastAPI()
    app.state.archive = archive
    app.include_router(wado.router)
    with TestClient(app) as test_client:
        yield test_client


def parts(response: Any) -> list[tuple[dict[str, str], bytes]]:
    """Parse a multipart/related body back (RFC 2046), independently of the server."""
    boundary = re.search(r"boundary=([^;\s]+)", response.headers["content-type"])
    assert boundary, response.headers["content-type"]
    delimiter = b"--" + boundary[1].strip('"').encode()
    segments = response.content.split(delimiter)
    assert segments[0] == b"" and segments[-1] == b"--\r\n"
    found = []
    for segment in segments[1:-1]:
        assert segment.startswith(b"\r\n") and segment.endswith(b"\r\n")
        head, _, body = segment[2:-2].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        found.append(({k.lower(): v for k, v in headers.items()}, body))
    return found


def _url(sop: str) -> str:
    s = BY_SOP[sop]
    return f"/dicomweb/studies/{s.study}/series/{s.series}/instances/{sop}"


# -- catalog ---------------------------------------------------------------------


def test_catalog_lists_live_rows_in_order(archive: FakeArchive) -> None:
    rows = list_instances(archive.index, STUDY)
    assert [r.sop_instance_uid for r in rows] == [
        f"{SERIES_A}.1", f"{SERIES_A}.2", f"{SERIES_B}.1", f"{SERIES_B}.2"
    ]  # fmt: skip
    assert [r.sop_instance_uid for r in list_instances(archive.index, STUDY, SERIES_B)] == [
        f"{SERIES_B}.1", f"{SERIES_B}.2"
    ]  # fmt: skip
    (one,) = list_instances(archive.index, STUDY, SERIES_A, f"{SERIES_A}.2")
    assert one.frames and one.frames[0][0][1] == 128 and one.instance_number == 2
    sidecar = list_instances(archive.index, STUDY, SERIES_A, f"{SERIES_A}.1")[0]
    assert sidecar.metadata_json == "" and sidecar.sidecar_key
    assert load_metadata(sidecar, archive.blobs)["00080018"]["Value"] == [f"{SERIES_A}.1"]
    assert list_instances(archive.index, STUDY, SERIES_A, f"{SERIES_A}.9") == []


# -- retrieve --------------------------------------------------------------------


def test_study_default_is_explicit_le_multipart(client: TestClient, archive: FakeArchive) -> None:
    response = client.get(f"/dicomweb/studies/{STUDY}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    found = parts(response)
    sops = [f"{SERIES_A}.1", f"{SERIES_A}.2", f"{SERIES_B}.1", f"{SERIES_B}.2"]
    for (headers, body), sop in zip(found, sops, strict=True):
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
        assert headers["content-location"] == "http://testserver" + _url(sop)
        ds = dcmread(io.BytesIO(body))
        assert ds.SOPInstanceUID == sop
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT
        assert np.array_equal(ds.pixel_array, BY_SOP[sop].pixels)
    assert found[0][1] == BY_SOP[sops[0]].blob  # already Explicit LE: the blob itself
    assert "warning" not in response.headers and archive.barriers[-1] is True


def test_transfer_syntax_star_returns_the_blobs(client: TestClient) -> None:
    response = client.get(
        f"/dicomweb/studies/{STUDY}/series/{SERIES_B}", headers={"Accept": DICOM_ALL}
    )
    found = parts(response)
    assert [h["content-type"] for h, _ in found] == [
        f"application/dicom; transfer-syntax={RLE}",
        f"application/dicom; transfer-syntax={IMPLICIT}",
    ]
    assert [body for _, body in found] == [
        BY_SOP[f"{SERIES_B}.1"].blob,
        BY_SOP[f"{SERIES_B}.2"].blob,
    ]


def test_explicit_transfer_syntax_negotiation(client: TestClient) -> None:
    rle = f'multipart/related; type="application/dicom"; transfer-syntax={RLE}'
    one = client.get(_url(f"{SERIES_B}.1"), headers={"Accept": rle})
    assert parts(one)[0][1] == BY_SOP[f"{SERIES_B}.1"].blob
    # The others are transcoded to RLE (api.transcode), pixel-exact.
    transcoded = parts(client.get(f"/dicomweb/studies/{STUDY}", headers={"Accept": rle}))
    delivered = {h["content-type"] for h, _ in transcoded}
    assert delivered == {f"application/dicom; transfer-syntax={RLE}"}
    for _, body in transcoded:
        ds = dcmread(io.BytesIO(body))
        assert ds.file_meta.TransferSyntaxUID == RLE
        assert np.array_equal(ds.pixel_array, BY_SOP[str(ds.SOPInstanceUID)].pixels)
    jpx = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.92'
    refused = client.get(f"/dicomweb/studies/{STUDY}", headers={"Accept": jpx})
    assert refused.status_code == 406
    assert refused.headers["content-type"] == "application/problem+json"
    assert "1.2.840.10008.1.2.4.92" in refused.json()["detail"]
    # q-values: the preferred range cannot be met, the next one can.
    ranked = f"{jpx}; q=0.9, {DICOM_ALL}; q=0.4, application/json"
    chosen = client.get(f"/dicomweb/studies/{STUDY}", headers={"Accept": ranked})
    assert [h["content-type"].split("=")[-1] for h, _ in parts(chosen)] == [
        EXPLICIT, EXPLICIT, RLE, IMPLICIT
    ]  # fmt: skip


def test_video_needs_transfer_syntax_star(client: TestClient) -> None:
    url = f"/dicomweb/studies/{VIDEO_STUDY}"
    refused = client.get(url)
    assert refused.status_code == 406 and "video" in refused.json()["detail"]
    served = client.get(url, headers={"Accept": DICOM_ALL})
    assert parts(served)[0][1] == VIDEO.blob


def test_lenient_accepts_and_refusals(client: TestClient) -> None:
    sop = f"{SERIES_A}.2"
    assert len(parts(client.get(_url(sop), headers={"Accept": "*/*"}))) == 1
    single = client.get(_url(sop), headers={"Accept": "application/dicom"})
    assert single.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    assert single.content == BY_SOP[sop].blob
    decoded = client.get(_url(f"{SERIES_B}.1"), headers={"Accept": "application/dicom"})
    assert np.array_equal(dcmread(io.BytesIO(decoded.content)).pixel_array, INSTANCES[2].pixels)
    assert (
        client.get(
            f"/dicomweb/studies/{STUDY}", headers={"Accept": "application/dicom"}
        ).status_code
        == 406
    )
    assert client.get(_url(sop), headers={"Accept": "image/jpeg"}).status_code == 406
    assert client.get(_url(sop), headers={"Accept": "*/*;q=0"}).status_code == 406


def test_not_found_bad_uid_and_lagging(client: TestClient, archive: FakeArchive) -> None:
    for url in (
        f"/dicomweb/studies/{ROOT}.77",
        f"/dicomweb/studies/{STUDY}/series/{ROOT}.77",
        f"/dicomweb/studies/{STUDY}/series/{SERIES_A}/instances/{SERIES_A}.9",
        f"/dicomweb/studies/{STUDY}/series/{SERIES_A}/instances/{ROOT}.77/metadata",
    ):
        missing = client.get(url)
        assert missing.status_code == 404, url
        assert missing.json()["status"] == 404
    bad = client.get("/dicomweb/studies/1.2.abc")
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    archive.fresh = False
    lagging = client.get(f"/dicomweb/studies/{STUDY}/metadata")
    assert lagging.status_code == 200
    assert lagging.headers["warning"] == '299 chronicle "projection lagging"'
    assert client.get(f"/dicomweb/studies/{ROOT}.77").headers["warning"]


def test_parts_stream_in_chunks(archive: FakeArchive) -> None:
    big = bytes(range(256)) * (3 * 4096 + 1)  # 3 MiB + 256 bytes
    archive.blobs.put_if_absent("test/big", big)
    row = list_instances(archive.index, STUDY, SERIES_A, f"{SERIES_A}.2")[0]
    row = type(row)(**{**{f: getattr(row, f) for f in row.__slots__}, "blob_key": "test/big"})
    delivered, chunks = wado._part_body(archive.blobs, row, wado.AS_STORED)
    sizes = [len(c) for c in chunks]
    assert delivered == EXPLICIT and sizes == [wado.CHUNK] * 3 + [256]


# -- metadata --------------------------------------------------------------------


def test_metadata_json_has_absolute_bulk_uris(client: TestClient, archive: FakeArchive) -> None:
    response = client.get(f"/dicomweb/studies/{STUDY}/metadata")
    assert response.headers["content-type"] == "application/dicom+json"
    documents = response.json()
    assert [d["00080018"]["Value"][0] for d in documents] == [
        f"{SERIES_A}.1", f"{SERIES_A}.2", f"{SERIES_B}.1", f"{SERIES_B}.2"
    ]  # fmt: skip
    for document in documents:
        sop = document["00080018"]["Value"][0]
        base = "http://testserver" + _url(sop) + "/bulkdata/"
        pixel = document["7FE00010"]["BulkDataURI"]
        icon = document["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
        assert pixel.startswith(base) and icon.startswith(base)
        offset, length = _bulk(icon)
        got = client.get(
            icon.removeprefix("http://testserver"), headers={"Accept": "application/octet-stream"}
        )
        assert got.content == BY_SOP[sop].blob[offset : offset + length]
    archive.settings.public_url = "https://pacs.example.org/"
    proxied = client.get(f"/dicomweb/studies/{STUDY}/series/{SERIES_B}/metadata").json()
    uri = proxied[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"https://pacs.example.org/dicomweb/studies/{STUDY}/series/{SERIES_B}/")


def test_absolute_metadata_rewrite_paths_agree() -> None:
    meta = {
        "00100010": {"vr": "LO", "Value": ['x"BulkDataURI":"bulkdata/1-2']},
        "00880200": {
            "vr": "SQ",
            "Value": [{"7FE00010": {"vr": "OB", "BulkDataURI": "bulkdata/5-6"}}],
        },
        "7FE00010": {"vr": "OW", "BulkDataURI": "bulkdata/10-20"},
    }
    url = 'http://h/"odd"'
    fast = orjson.loads(wado.absolute_metadata(orjson.dumps(meta), url))
    slow = orjson.loads(wado.absolute_metadata(orjson.dumps(meta, option=orjson.OPT_INDENT_2), url))
    assert fast == slow
    assert fast["7FE00010"]["BulkDataURI"] == url + "/bulkdata/10-20"
    assert fast["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"] == url + "/bulkdata/5-6"
    assert fast["00100010"] == meta["00100010"]


def test_metadata_xml_multipart(client: TestClient) -> None:
    accept = 'multipart/related; type="application/dicom+xml"'
    response = client.get(
        f"/dicomweb/studies/{STUDY}/series/{SERIES_A}/metadata", headers={"Accept": accept}
    )
    assert response.status_code == 200
    found = parts(response)
    assert len(found) == 2
    for headers, body in found:
        assert headers["content-type"] == "application/dicom+xml"
        root = ET.fromstring(body)
        uris = [e.get("uri") for e in root.iter(f"{XML}BulkData")] or [
            e.get("uri") for e in root.iter("BulkData")
        ]
        assert uris and all(u and u.startswith("http://testserver/dicomweb/") for u in uris)
    refused = client.get(
        f"/dicomweb/studies/{STUDY}/metadata", headers={"Accept": "application/dicom"}
    )
    assert refused.status_code == 406


# -- bulk data -------------------------------------------------------------------


def _pixel_uri(sop: str) -> tuple[str, int, int]:
    offset, length = BY_SOP[sop].blob.rfind(BY_SOP[sop].pixels.tobytes()), 128
    return f"{_url(sop)}/bulkdata/{offset}-{length}", offset, length


def test_bulkdata_forms_and_ranges(client: TestClient) -> None:
    sop = f"{SERIES_A}.2"
    url, offset, length = _pixel_uri(sop)
    expected = BY_SOP[sop].blob[offset : offset + length]
    multipart = client.get(url)
    ((headers, body),) = parts(multipart)
    assert 'type="application/octet-stream"' in multipart.headers["content-type"]
    assert headers["content-type"] == "application/octet-stream" and body == expected
    assert headers["content-location"] == "http://testserver" + url
    single = client.get(url, headers={"Accept": "application/octet-stream"})
    assert single.content == expected and single.headers["accept-ranges"] == "bytes"
    octet = {"Accept": "application/octet-stream"}
    ranged = client.get(url, headers={**octet, "Range": "bytes=2-9"})
    assert ranged.status_code == 206 and ranged.content == expected[2:10]
    assert ranged.headers["content-range"] == f"bytes 2-9/{length}"
    tail = client.get(url, headers={**octet, "Range": "bytes=-4"})
    assert tail.status_code == 206 and tail.content == expected[-4:]
    open_ended = client.get(url, headers={**octet, "Range": "bytes=120-"})
    assert open_ended.content == expected[120:]
    unsatisfiable = client.get(url, headers={**octet, "Range": "bytes=500-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{length}"
    assert client.get(url, headers={**octet, "Range": "bytes=1-2,5-6"}).status_code == 200


def test_big_endian_is_served_little_endian(client: TestClient) -> None:
    little = BIG_ENDIAN.pixels.astype("<u2").tobytes()
    ((headers, body),) = parts(client.get(f"/dicomweb/studies/{BE_STUDY}"))
    assert headers["content-type"].endswith(EXPLICIT)
    assert np.array_equal(dcmread(io.BytesIO(body)).pixel_array, BIG_ENDIAN.pixels)
    (document,) = client.get(f"/dicomweb/studies/{BE_STUDY}/metadata").json()
    uri = document["7FE00010"]["BulkDataURI"].removeprefix("http://testserver")
    octet = {"Accept": "application/octet-stream"}
    assert client.get(uri, headers=octet).content == little
    assert parts(client.get(uri))[0][1] == little
    odd = client.get(uri, headers={**octet, "Range": "bytes=3-6"})
    assert odd.status_code == 206 and odd.content == little[3:7]


def test_bulkdata_only_serves_listed_ranges(client: TestClient) -> None:
    sop = f"{SERIES_A}.2"
    _, offset, length = _pixel_uri(sop)
    assert client.get(f"{_url(sop)}/bulkdata/0-132").status_code == 404
    assert client.get(f"{_url(sop)}/bulkdata/{offset}-{length + 1}").status_code == 404
    assert client.get(f"{_url(sop)}/bulkdata/abc").status_code == 404
    # The frame table is a source of ranges too (same range here as Pixel Data).
    assert client.get(f"{_url(sop)}/bulkdata/{offset}-{length}").status_code == 200
    refused = client.get(f"{_url(sop)}/bulkdata/{offset}-{length}", headers={"Accept": "image/png"})
    assert refused.status_code == 406


def test_accept_parsing() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
        'multipart/related;type="application/dicom+xml, odd";q=0.8, image/png;q=0, */*;q=0.1'
    )
    assert [(r.media_type, r.q) for r in ranges] == [
        ("multipart/related", 0.8), ("multipart/related", 0.5), ("*/*", 0.1)
    ]  # fmt: skip
    assert ranges[0].params == {"type": "application/dicom+xml, odd"}
    assert ranges[1].params == {"type": "application/dicom", "transfer-syntax": "*"}
    assert [(r.media_type, r.q) for r in parse_accept(None)] == [("*/*", 1.0)]
    assert byte_range("bytes=0-", 10) == (0, 10)
    assert byte_range("items=0-1", 10) is None
