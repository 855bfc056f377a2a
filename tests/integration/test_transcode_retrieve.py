"""Transcoding on retrieve against a real `chronicle serve`: C-MOVE, C-GET and WADO-RS.

One server holds one study: a CT in Explicit VR LE, an MR in RLE, an RGB
Secondary Capture in RLE and a lossy JPEG baseline one. Move Destinations
are pynetdicom Storage SCPs in this process accepting a single compressed
syntax: JPEG-LS lossless (Chronicle transcodes everything to it) or JPEG
baseline (lossy: Chronicle never transcodes into it over DIMSE).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, build_context, build_role, evt

from api.dimse.retrieve import EXPLICIT, IMPLICIT, STUDY_ROOT_GET, STUDY_ROOT_MOVE
from api.pixels import to_explicit_le
from tests.chronicle_server import StartChronicle
from tests.support import dataset_bytes, free_port, make_ct, pydicom_file, split_multipart

CALLING = "HARNESS"
JLS, BASELINE = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.50"
CT, MR, SC = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"
SOURCES = {"mr": "MR_small_RLE.dcm", "sc": "SC_rgb_rle.dcm", "lossy": "SC_rgb_jpeg_lossy_gdcm.dcm"}


@dataclass
class Peer:
    """A Storage SCP (or C-GET requestor) recording (transfer syntax, dataset)."""

    received: dict[str, tuple[str, Dataset]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event: Any) -> int:
        path = getattr(event, "dataset_path", None)
        data = (
            dataset_bytes(Path(path).read_bytes())
            if path
            else bytes(event.encoded_dataset(include_meta=False))
        )
        ts = str(event.context.transfer_syntax)
        ds = dcmread(io.BytesIO(data), force=True)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(ts)
        with self.lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = (ts, ds)
        return 0x0000


@dataclass
class Study:
    uid: str
    http: str
    dimse_port: int
    sources: dict[str, Dataset]
    peers: dict[str, Peer]


def _start_peer(title: str, syntaxes: list[str]) -> tuple[int, Peer, Any]:
    peer, port = Peer(), free_port()
    ae = AE(ae_title=title)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, peer.handle)]
    )
    return port, peer, server


@pytest.fixture(scope="module")
def study(start_chronicle_module: StartChronicle) -> Iterator[Study]:
    destinations = {"JLSONLY": [JLS], "LOSSYONLY": [BASELINE]}
    started = {title: _start_peer(title, ts) for title, ts in destinations.items()}
    try:
        remotes = [f"{CALLING}@127.0.0.1:{free_port()}"]
        remotes += [f"{title}@127.0.0.1:{port}" for title, (port, _, _) in started.items()]
        server = start_chronicle_module(remote_aes=remotes)
        uid = generate_uid()
        sources = {"ct": make_ct(uid, rows=32, cols=32)}
        for key, name in SOURCES.items():
            ds = dcmread(pydicom_file(name))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, generate_uid()
            sources[key] = ds
        _c_store(server.dimse_port, list(sources.values()))
        peers = {title: peer for title, (_, peer, _) in started.items()}
        yield Study(uid, server.dicomweb_url, server.dimse_port, sources, peers)
    finally:
        for _, _, scp in started.values():
            scp.shutdown()


def _c_store(port: int, datasets: list[Dataset]) -> None:
    ae = AE(ae_title=CALLING)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def _identifier(study: Study) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel, ds.StudyInstanceUID = "STUDY", study.uid
    return ds


def _reference(ds: Dataset) -> Any:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return dcmread(io.BytesIO(to_explicit_le(out.getvalue()))).pixel_array


def _c_move(study: Study, destination: str) -> Dataset:
    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(
        "127.0.0.1", study.dimse_port, [build_context(STUDY_ROOT_MOVE)], ae_title="CHRONICLE"
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_move(_identifier(study), destination, STUDY_ROOT_MOVE))
    finally:
        assoc.release()
    status: Dataset = responses[-1][0]
    return status


def test_move_transcodes_to_the_only_syntax_the_destination_takes(study: Study) -> None:
    peer = study.peers["JLSONLY"]
    peer.received.clear()

    status = _c_move(study, "JLSONLY")

    assert status.Status == 0x0000 and status.NumberOfCompletedSuboperations == 4
    assert set(peer.received) == {str(ds.SOPInstanceUID) for ds in study.sources.values()}
    for key, source in study.sources.items():
        ts, got = peer.received[str(source.SOPInstanceUID)]
        assert ts == JLS
        assert np.array_equal(got.pixel_array, _reference(source)), key
        assert (got.get("LossyImageCompression") == "01") == (key == "lossy")


def test_move_never_adds_loss(study: Study) -> None:
    peer = study.peers["LOSSYONLY"]
    peer.received.clear()

    status = _c_move(study, "LOSSYONLY")

    # Only the instance stored as JPEG baseline goes (as stored); nothing is made lossy.
    assert status.Status == 0xB000
    assert status.NumberOfCompletedSuboperations == 1
    assert status.NumberOfFailedSuboperations == 3
    assert list(peer.received) == [str(study.sources["lossy"].SOPInstanceUID)]


def _c_get(study: Study, syntaxes: list[str]) -> tuple[Dataset, Peer]:
    peer = Peer()
    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = [build_context(STUDY_ROOT_GET)]
    contexts += [build_context(sop, syntaxes) for sop in (CT, MR, SC)]
    assoc = ae.associate(
        "127.0.0.1",
        study.dimse_port,
        contexts,
        ae_title="CHRONICLE",
        ext_neg=[build_role(sop, scp_role=True) for sop in (CT, MR, SC)],
        evt_handlers=[(evt.EVT_C_STORE, peer.handle)],
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(_identifier(study), STUDY_ROOT_GET))
    finally:
        assoc.release()
    status: Dataset = responses[-1][0]
    return status, peer


def test_get_transcodes_when_the_requestor_offers_only_a_compressed_syntax(study: Study) -> None:
    status, peer = _c_get(study, [JLS])

    assert status.Status == 0x0000 and status.NumberOfCompletedSuboperations == 4
    for source in study.sources.values():
        ts, got = peer.received[str(source.SOPInstanceUID)]
        assert ts == JLS and np.array_equal(got.pixel_array, _reference(source))


def test_get_prefers_uncompressed_when_offered_too(study: Study) -> None:
    status, peer = _c_get(study, [JLS, EXPLICIT, IMPLICIT])

    assert status.Status == 0x0000
    # Conservative: the stored form or uncompressed, never a transcode by choice.
    assert {ts for ts, _ in peer.received.values()} == {EXPLICIT}


def test_wado_retrieve_in_a_named_syntax(study: Study) -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JLS}'
    response = httpx.get(
        f"{study.http}/studies/{study.uid}", headers={"Accept": accept}, timeout=60
    )
    assert response.status_code == 200, response.text
    parts = split_multipart(response.content, response.headers["content-type"])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in study.sources.values()}
    assert len(parts) == 4
    for headers, body in parts:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={JLS}"
        ds = dcmread(io.BytesIO(body))
        assert ds.file_meta.TransferSyntaxUID == JLS
        assert np.array_equal(ds.pixel_array, _reference(by_uid[str(ds.SOPInstanceUID)]))


def test_wado_retrieve_refuses_what_cannot_be_produced(study: Study) -> None:
    # JPEG baseline was named (lossy is then allowed) but the CT is 16-bit: 406, with why.
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={BASELINE}'
    response = httpx.get(
        f"{study.http}/studies/{study.uid}", headers={"Accept": accept}, timeout=60
    )
    assert response.status_code == 406
    assert "bits stored" in response.json()["detail"]
    sc = study.sources["sc"]
    url = f"{study.http}/studies/{study.uid}/series/{sc.SeriesInstanceUID}"
    lossy = httpx.get(url, headers={"Accept": accept}, timeout=60)
    assert lossy.status_code == 200
    [(_, body)] = split_multipart(lossy.content, lossy.headers["content-type"])
    ds = dcmread(io.BytesIO(body))
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
