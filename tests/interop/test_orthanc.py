"""Orthanc (Debian's 1.10, started on loopback by bench/peers.py) as a real DIMSE peer.

Orthanc C-STOREs a study to Chronicle, queries it with C-FIND, C-MOVEs a
study from Chronicle into itself, and Chronicle C-MOVEs a study to Orthanc
on a third party's request; pixel data is compared byte for byte with the
files the studies came from. Each study is small (a CT in Explicit VR LE, an
MR in JPEG-LS lossless, a Secondary Capture in RLE): compressed pixel data
must cross both ways as stored.

Orthanc learns Chronicle's address through its REST API (PUT /modalities),
since Chronicle, which must know Orthanc's to move to it, starts second.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context

from bench.peers import running_orthanc
from tests.chronicle_server import ChronicleServer, StartChronicle, default_remote_aes
from tests.support import make_ct, part10_bytes, pydicom_file

pytestmark = pytest.mark.interop

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
AS_STORED = "application/dicom; transfer-syntax=*"


@dataclass
class Peers:
    orthanc: str  # REST base URL
    orthanc_port: int
    chronicle: ChronicleServer


def _study(patient_id: str) -> list[Dataset]:
    """A CT, an MR (JPEG-LS lossless) and a Secondary Capture (RLE) in one new study."""
    study, series = generate_uid(), generate_uid()
    cts = [make_ct(study, series, rows=32, cols=32, patient_id=patient_id)]
    compressed = []
    for name in ("MR_small_jpeg_ls_lossless.dcm", "SC_rgb_rle.dcm"):
        ds = dcmread(pydicom_file(name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.PatientID = patient_id
        compressed.append(ds)
    return cts + compressed


@pytest.fixture(scope="module")
def peers(
    start_chronicle_module: StartChronicle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Peers]:
    folder = tmp_path_factory.mktemp("orthanc")
    try:
        with running_orthanc(folder) as orthanc:
            base = orthanc.count_url.rsplit("/", 1)[0]
            remotes = default_remote_aes() + [f"ORTHANC@127.0.0.1:{orthanc.dimse_port}"]
            chronicle = start_chronicle_module(remote_aes=remotes)
            modality = {"AET": "CHRONICLE", "Host": "127.0.0.1", "Port": chronicle.dimse_port}
            httpx.put(f"{base}/modalities/chronicle", json=modality, timeout=30).raise_for_status()
            yield Peers(base, orthanc.dimse_port, chronicle)
    except SystemExit as exc:  # bench/peers.py reports a failed start that way
        pytest.fail(f"Orthanc did not start: {exc}")


def _post(url: str, body: Any) -> Any:
    response = httpx.post(url, json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _upload_to_orthanc(peers: Peers, datasets: list[Dataset]) -> str:
    """The Orthanc ID of the study the datasets were uploaded into."""
    ids = set()
    for ds in datasets:
        response = httpx.post(f"{peers.orthanc}/instances", content=part10_bytes(ds), timeout=60)
        assert response.status_code == 200, response.text
        ids.add(response.json()["ParentStudy"])
    [study] = ids
    return str(study)


def _store_in_chronicle(peers: Peers, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="HARNESS")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", peers.chronicle.dimse_port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def _from_chronicle(peers: Peers, ds: Dataset) -> Dataset:
    url = (
        f"{peers.chronicle.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/"
        f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    response = httpx.get(url, headers={"Accept": AS_STORED}, timeout=60)
    assert response.status_code == 200, f"{ds.SOPInstanceUID}: {response.status_code}"
    return dcmread(BytesIO(response.content))


def _from_orthanc(peers: Peers, ds: Dataset) -> Dataset:
    response = httpx.post(f"{peers.orthanc}/tools/lookup", content=str(ds.SOPInstanceUID))
    found = response.json()
    instances = [f["ID"] for f in found if f["Type"] == "Instance"]
    assert instances, f"Orthanc does not have {ds.SOPInstanceUID}"
    response = httpx.get(f"{peers.orthanc}/instances/{instances[0]}/file", timeout=60)
    return dcmread(BytesIO(response.content))


def _assert_same_pixels(got: Dataset, sent: Dataset) -> None:
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert got.PixelData == sent.PixelData, sent.SOPInstanceUID


def test_orthanc_stores_a_study_in_chronicle(peers: Peers) -> None:
    sent = _study("ORTHANC-STORE")
    study = _upload_to_orthanc(peers, sent)

    job = _post(
        f"{peers.orthanc}/modalities/chronicle/store", {"Resources": [study], "Synchronous": True}
    )

    assert job.get("FailedInstancesCount", 0) == 0, job
    for ds in sent:
        _assert_same_pixels(_from_chronicle(peers, ds), ds)


def test_orthanc_queries_chronicle_with_c_find(peers: Peers) -> None:
    sent = _study("ORTHANC-FIND")
    _store_in_chronicle(peers, sent)

    query = {"Level": "Study", "Query": {"PatientID": "ORTHANC-FIND", "StudyInstanceUID": ""}}
    found = _post(f"{peers.orthanc}/modalities/chronicle/query", query)
    answers = httpx.get(f"{peers.orthanc}/queries/{found['ID']}/answers", timeout=30).json()
    contents = [
        httpx.get(
            f"{peers.orthanc}/queries/{found['ID']}/answers/{index}/content?simplify", timeout=30
        ).json()
        for index in answers
    ]

    assert [c["StudyInstanceUID"] for c in contents] == [str(sent[0].StudyInstanceUID)]


def test_orthanc_moves_a_study_from_chronicle_into_itself(peers: Peers) -> None:
    sent = _study("ORTHANC-PULL")
    _store_in_chronicle(peers, sent)
    query = {"Level": "Study", "Query": {"StudyInstanceUID": str(sent[0].StudyInstanceUID)}}
    found = _post(f"{peers.orthanc}/modalities/chronicle/query", query)

    _post(
        f"{peers.orthanc}/queries/{found['ID']}/retrieve",
        {"TargetAet": "ORTHANC", "Synchronous": True},
    )

    for ds in sent:
        _assert_same_pixels(_from_orthanc(peers, ds), ds)


def test_chronicle_moves_a_study_to_orthanc(peers: Peers) -> None:
    sent = _study("CHRONICLE-PUSH")
    _store_in_chronicle(peers, sent)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = sent[0].StudyInstanceUID
    ae = AE(ae_title="MOVESCU")
    assoc = ae.associate(
        "127.0.0.1",
        peers.chronicle.dimse_port,
        [build_context(STUDY_ROOT_MOVE)],
        ae_title="CHRONICLE",
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_move(identifier, "ORTHANC", STUDY_ROOT_MOVE))
    finally:
        assoc.release()

    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == len(sent)
    for ds in sent:
        _assert_same_pixels(_from_orthanc(peers, ds), ds)
