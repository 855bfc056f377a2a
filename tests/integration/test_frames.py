"""WADO-RS frames, /pixeldata and bulk data through a real archive in one process.

A real SQLite log, folder blob store and chDB index (api.wiring.open_archive),
the FastAPI app of `chronicle serve` (api.app.create_app) driven by
Starlette's TestClient. Instances are pydicom-data files given fresh UIDs and
stored through ingest, so frames and BulkDataURIs are what ingest recorded.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, generate_uid

from api import pixels
from api.app import create_app
from api.wiring import Archive, open_archive
from infra.ports import BlobStore
from infra.settings import load_settings
from schemas.events import Source
from tests.support import make_ct, pydicom_file, split_multipart, write_part10

EXPLICIT = pixels.EXPLICIT_VR_LITTLE_ENDIAN
JLS, J2K, HTJ2K = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201"
SV1, BASELINE, RLE = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"
MP4 = "1.2.840.10008.1.2.4.102"
OCTET = "application/octet-stream"
FILES = {
    "native": "emri_small.dcm",  # 10 frames
    "jls": "emri_small_jpeg_ls_lossless.dcm",
    "j2k": "emri_small_jpeg_2k_lossless.dcm",
    "rle": "SC_rgb_rle_2frame.dcm",
    "jpeg": "examples_ybr_color.dcm",  # JPEG baseline, 30 frames
    "big": "emri_small_big_endian.dcm",
    "onebit": "liver.dcm",
    "deflated": "image_dfl.dcm",
}


@dataclass
class CountingBlobs:
    """The archive's BlobStore, counting whole-object reads and ranged bytes."""

    inner: BlobStore
    whole: list[str] = field(default_factory=list)
    ranged: int = 0

    def get(self, key: str) -> BinaryIO:
        self.whole.append(key)
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranged += length
        return self.inner.get_range(key, offset, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Study:
    uid: str
    series: str
    originals: dict[str, Dataset]  # key -> the dataset as stored
    blobs: CountingBlobs

    def url(self, key: str) -> str:
        ds = self.originals[key]
        return (
            f"/dicomweb/studies/{self.uid}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )


def _renamed(ds: Dataset, study: str, series: str) -> Dataset:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    return ds


def _with_sequences(study: str, series: str) -> Dataset:
    """A CT whose bulk data sits in sequences too: an icon and an overlay."""
    ds = make_ct(study, series, rows=32, cols=32)
    icon = Dataset()
    icon.Rows = icon.Columns = 40
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(200)) * 8
    ds.IconImageSequence = [icon]
    ds.add_new(0x60000010, "US", 128)
    ds.add_new(0x60000011, "US", 128)
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60003000, "OW", bytes(range(256)) * 8)
    return ds


def _video(study: str, series: str) -> Dataset:
    ds = make_ct(study, series, rows=8, cols=8)
    ds.file_meta.TransferSyntaxUID = UID(MP4)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60), b"\x00\x00\x01\xb6" + bytes(30)])
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 5
    return ds


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data_dir = tmp_path_factory.mktemp("frames-archive")
    settings = load_settings({"data_dir": str(data_dir), "min_free_bytes": 0}, environ={})
    opened = open_archive(settings)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def study(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Study:
    folder: Path = tmp_path_factory.mktemp("frames-sources")
    uid, series = generate_uid(), generate_uid()
    originals = {key: _renamed(dcmread(pydicom_file(n)), uid, series) for key, n in FILES.items()}
    originals["sequences"] = _with_sequences(uid, generate_uid())
    originals["video"] = _video(uid, generate_uid())
    originals["nopixels"] = make_ct(uid, generate_uid(), rows=8, cols=8)
    del originals["nopixels"].PixelData
    for key, ds in originals.items():
        path = write_part10(ds, folder / f"{key}.dcm")
        archive.ingest.store_part10_file(path, source=Source(protocol="IMPORT"))
    counting = CountingBlobs(archive.blobs)
    archive.blobs = counting
    return Study(uid, series, originals, counting)


@pytest.fixture(scope="module")
def client(archive: Archive, study: Study) -> Iterator[TestClient]:
    with TestClient(create_app(archive)) as test_client:
        yield test_client


def _parts(response: Any) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 200, response.text
    return split_multipart(response.content, response.headers["content-type"])


def _decoded(ds: Dataset) -> Any:
    """pydicom's decode of every frame (YBR kept as stored, as octet-stream carries it)."""
    native = dcmread(io.BytesIO(pixels.to_explicit_le(_bytes(ds))))
    arr = native.pixel_array
    return arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None]


def _bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def related(media: str, ts: str | None = None) -> str:
    return f'multipart/related; type="{media}"' + (f"; transfer-syntax={ts}" if ts else "")


# -- frames --------------------------------------------------------------------------


def test_octet_stream_frames_are_little_endian_pixels(client: TestClient, study: Study) -> None:
    for key in ("native", "jls", "j2k", "big", "rle"):
        expected = _decoded(study.originals[key])
        frames = (1, min(3, len(expected)))
        listed = ",".join(map(str, frames))
        found = _parts(
            client.get(f"{study.url(key)}/frames/{listed}", headers={"Accept": related(OCTET)})
        )
        assert len(found) == 2
        for (headers, body), number in zip(found, frames, strict=True):
            assert headers["content-type"] == f"{OCTET}; transfer-syntax={EXPLICIT}"
            assert headers["content-location"].endswith(f"{study.url(key)}/frames/{number}")
            dtype = expected.dtype.newbyteorder("<")
            got = np.frombuffer(body, dtype=dtype).reshape(expected[number - 1].shape)
            assert np.array_equal(got, expected[number - 1]), key


def test_stored_syntax_frames_are_range_reads(client: TestClient, study: Study) -> None:
    ds = study.originals["j2k"]
    items = list(generate_frames(ds.PixelData, number_of_frames=10))
    # A fragment is padded to even length after the end-of-codestream marker.
    pydicom_frames = [f[:-1] if f.endswith(b"\xff\xd9\x00") else f for f in items]
    study.blobs.whole.clear()
    study.blobs.ranged = 0
    accept = related("image/jp2", "*")
    found = _parts(client.get(f"{study.url('j2k')}/frames/2,10", headers={"Accept": accept}))
    assert [h["content-type"] for h, _ in found] == [f"image/jp2; transfer-syntax={J2K}"] * 2
    assert [b for _, b in found] == [pydicom_frames[1], pydicom_frames[9]]
    assert study.blobs.whole == []  # the blob was never read whole
    assert study.blobs.ranged == len(items[1]) + len(items[9])


def test_transcoded_frames_per_media_type_defaults(client: TestClient, study: Study) -> None:
    expected = _decoded(study.originals["native"])
    for media, ts in (("image/jls", JLS), ("image/jp2", J2K), ("image/jphc", HTJ2K),
                      ("image/x-dicom-rle", RLE), ("image/jpeg", SV1)):  # fmt: skip
        found = _parts(
            client.get(f"{study.url('native')}/frames/4", headers={"Accept": related(media)})
        )
        [(headers, body)] = found
        assert headers["content-type"] == f"{media}; transfer-syntax={ts}"
        frame = _decode_one(body, ts, study.originals["native"])
        assert np.array_equal(frame, expected[3]), media


def _decode_one(codestream: bytes, ts: str, like: Dataset) -> Any:
    ds = Dataset()
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                    "HighBit", "PixelRepresentation", "PhotometricInterpretation"):  # fmt: skip
        setattr(ds, keyword, getattr(like, keyword))
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds.file_meta = like.file_meta.__class__()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.file_meta.MediaStorageSOPClassUID = like.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = like.SOPInstanceUID
    ds.SOPClassUID, ds.SOPInstanceUID = like.SOPClassUID, like.SOPInstanceUID
    return dcmread(io.BytesIO(pixels.to_explicit_le(_bytes(ds)))).pixel_array


def test_single_frame_single_part_and_lossy_on_request(client: TestClient, study: Study) -> None:
    url = f"{study.url('rle')}/frames/2"
    single = client.get(url, headers={"Accept": f"image/jpeg; transfer-syntax={BASELINE}"})
    assert single.status_code == 200, single.text
    assert single.headers["content-type"] == f"image/jpeg; transfer-syntax={BASELINE}"
    assert single.content.startswith(b"\xff\xd8")
    # a stored lossy JPEG: image/jpeg without a syntax answers as stored
    stored = client.get(f"{study.url('jpeg')}/frames/7", headers={"Accept": related("image/jpeg")})
    [(headers, body)] = _parts(stored)
    assert headers["content-type"] == f"image/jpeg; transfer-syntax={BASELINE}"
    ds = study.originals["jpeg"]
    assert body == list(generate_frames(ds.PixelData, number_of_frames=30))[6].removesuffix(b"\0")


def test_frames_computed_on_read(client: TestClient, study: Study) -> None:
    for key in ("onebit", "deflated"):
        expected = _decoded(study.originals[key])
        response = client.get(f"{study.url(key)}/frames/1", headers={"Accept": related(OCTET, "*")})
        [(headers, body)] = _parts(response)
        assert headers["content-type"] == f"{OCTET}; transfer-syntax={EXPLICIT}"
        if key == "onebit":
            bits = np.unpackbits(np.frombuffer(body, np.uint8), bitorder="little")
            assert np.array_equal(bits[: expected[0].size].reshape(expected[0].shape), expected[0])
        else:
            assert body == expected[0].astype(expected.dtype.newbyteorder("<")).tobytes()


def test_frame_errors(client: TestClient, study: Study) -> None:
    url = study.url("native")
    assert client.get(f"{url}/frames/0").status_code == 400
    assert client.get(f"{url}/frames/1,x").status_code == 400
    beyond = client.get(f"{url}/frames/2,11")
    assert beyond.status_code == 404 and "10" in beyond.json()["detail"]
    jpx = client.get(f"{url}/frames/1", headers={"Accept": related("image/jpx")})
    assert jpx.status_code == 406
    baseline = client.get(f"{url}/frames/1", headers={"Accept": related("image/jpeg", BASELINE)})
    assert baseline.status_code == 406 and "bits stored" in baseline.json()["detail"]
    video = client.get(f"{study.url('video')}/frames/1", headers={"Accept": related(OCTET, "*")})
    assert video.status_code == 406 and "video" in video.json()["detail"]
    no_pixels = client.get(f"{study.url('nopixels')}/frames/1")
    assert no_pixels.status_code == 404 and "no pixel data" in no_pixels.json()["detail"]


# -- /pixeldata ------------------------------------------------------------------------


def test_instance_pixeldata_is_every_frame(client: TestClient, study: Study) -> None:
    found = _parts(client.get(f"{study.url('rle')}/pixeldata", headers={"Accept": related(OCTET)}))
    expected = _decoded(study.originals["rle"])
    assert [h["content-location"].rsplit("/", 2)[-2:] for h, _ in found] == [
        ["frames", "1"],
        ["frames", "2"],
    ]
    assert [b for _, b in found] == [frame.tobytes() for frame in expected]


def test_video_pixeldata_is_the_stream(client: TestClient, study: Study) -> None:
    response = client.get(f"{study.url('video')}/pixeldata", headers={"Accept": "video/mp4"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"video/mp4; transfer-syntax={MP4}"
    assert response.content == b"\x00\x00\x01\xb3" + bytes(60) + b"\x00\x00\x01\xb6" + bytes(30)
    # octet-stream: video exists only lossy compressed, so its default is as stored
    [(headers, body)] = _parts(
        client.get(f"{study.url('video')}/pixeldata", headers={"Accept": related(OCTET)})
    )
    assert headers["content-type"] == f"{OCTET}; transfer-syntax={MP4}" and body == response.content
    refused = client.get(
        f"{study.url('video')}/pixeldata", headers={"Accept": related("image/jls")}
    )
    assert refused.status_code == 406 and "video" in refused.json()["detail"]


def test_series_and_study_pixeldata(client: TestClient, study: Study) -> None:
    series = f"/dicomweb/studies/{study.uid}/series/{study.series}/pixeldata"
    found = _parts(client.get(series, headers={"Accept": related(OCTET, "*")}))
    frames = sum(int(study.originals[k].get("NumberOfFrames", 1) or 1) for k in FILES)
    assert len(found) == frames
    whole = _parts(
        client.get(
            f"/dicomweb/studies/{study.uid}/pixeldata", headers={"Accept": related(OCTET, "*")}
        )
    )
    assert len(whole) == frames + 1  # the sequence-bearing CT; the video is left out


# -- bulk data -------------------------------------------------------------------------


def _bulk_uris(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("BulkDataURI"), str):
            yield node["BulkDataURI"]
        for value in node.values():
            yield from _bulk_uris(value)
    elif isinstance(node, list):
        for value in node:
            yield from _bulk_uris(value)


@pytest.mark.parametrize("key", ["sequences", "native", "big"])
def test_every_bulk_data_uri_resolves_with_ranges(
    client: TestClient, study: Study, key: str
) -> None:
    metadata = client.get(f"{study.url(key)}/metadata").json()[0]
    uris = [re.sub(r"^https?://[^/]+", "", uri) for uri in _bulk_uris(metadata)]
    assert "7FE00010" in metadata and uris
    if key == "sequences":
        assert len(uris) == 3  # Pixel Data, the icon's Pixel Data, Overlay Data
    values = sorted(_little_endian_values(study.originals[key]))
    served = []
    for path in uris:
        whole = client.get(path, headers={"Accept": OCTET})
        assert whole.status_code == 200, (path, whole.text)
        assert whole.headers["accept-ranges"] == "bytes"
        ranged = client.get(path, headers={"Accept": OCTET, "Range": "bytes=2-9"})
        assert ranged.status_code == 206 and ranged.content == whole.content[2:10]
        served.append(whole.content)
    assert sorted(served) == values


def _little_endian_values(ds: Dataset) -> list[bytes]:
    """The bulk values (over 1 KiB) as a client gets them: binary VRs little endian."""
    big = ds.file_meta.TransferSyntaxUID == pixels.EXPLICIT_VR_BIG_ENDIAN
    found = []
    for value, vr in _binary_values(ds):
        if len(value) > 1024:
            width = {"OW": 2, "OF": 4, "OL": 4, "OD": 8}.get(vr, 0) if big else 0
            found.append(pixels.swap_bytes(value, width) if width else value)
    return found


@pytest.mark.parametrize("key", ["jls", "rle", "j2k"])
def test_compressed_pixel_data_bulk_data_is_frames_without_delimiters(
    client: TestClient, study: Study, key: str
) -> None:
    metadata = client.get(f"{study.url(key)}/metadata").json()[0]
    path = re.sub(r"^https?://[^/]+", "", metadata["7FE00010"]["BulkDataURI"])
    ds, expected = study.originals[key], _decoded(study.originals[key])
    stored = _parts(client.get(path, headers={"Accept": related(OCTET, "*")}))
    items = generate_frames(ds.PixelData, number_of_frames=len(expected))
    assert [b for _, b in stored] == [f[:-1] if f.endswith(b"\xff\xd9\x00") else f for f in items]
    # one body of uncompressed frames end to end: what native Pixel Data would hold
    plain = client.get(path, headers={"Accept": OCTET})
    assert plain.status_code == 200
    assert plain.content == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


def test_video_pixel_data_bulk_data_is_the_stream(client: TestClient, study: Study) -> None:
    metadata = client.get(f"{study.url('video')}/metadata").json()[0]
    path = re.sub(r"^https?://[^/]+", "", metadata["7FE00010"]["BulkDataURI"])
    response = client.get(path, headers={"Accept": OCTET})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{OCTET}; transfer-syntax={MP4}"
    assert response.content == b"\x00\x00\x01\xb3" + bytes(60) + b"\x00\x00\x01\xb6" + bytes(30)


def _binary_values(ds: Dataset) -> Iterator[tuple[bytes, str]]:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from _binary_values(item)
        elif element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") and element.value:
            yield bytes(element.value), str(element.VR)
