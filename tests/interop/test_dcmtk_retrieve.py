"""dcmtk as a workstation would use Chronicle: movescu to dcmtk storescp destinations, getscu.

One server per module holds one study: two CT in Explicit VR LE, one MR in
JPEG-LS lossless, one Secondary Capture in RLE. Destinations are dcmtk
storescp processes configured on the server as remote AEs: one accepting
every syntax (and writing what it gets bit for bit, +B), one with its
default uncompressed syntaxes, one without Secondary Capture, one slow.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.chronicle_server import ChronicleServer, StartChronicle, default_remote_aes
from tests.support import dataset_bytes, dcmtk, free_port, make_ct, pydicom_file, tool_env

pytestmark = pytest.mark.interop

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
JPEG_LS, RLE = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"
CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
#: Destination title -> storescp options.
DESTINATIONS = {
    "ALLSCP": ["+xa", "+B"],
    "PLAINSCP": [],
    "NOSCSCP": ["-xf", "{config}", "NoSC"],
    "SLOWSCP": ["+xa", "--sleep-during", "1"],
}


@dataclass
class Destination:
    title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def received(self) -> dict[str, Dataset]:
        found = {}
        for path in self.folder.iterdir():
            ds = dcmread(path)
            found[str(ds.SOPInstanceUID)] = ds
        return found


@dataclass
class Study:
    server: ChronicleServer
    destinations: dict[str, Destination]
    uid: str
    sources: dict[str, Dataset]
    sc: str


def _no_sc_config(path: Path) -> Path:
    """A storescp profile accepting CT and MR (uncompressed or JPEG-LS), not Secondary Capture."""
    path.write_text(
        "[[TransferSyntaxes]]\n[Plain]\n"
        f"TransferSyntax1 = {EXPLICIT}\nTransferSyntax2 = {IMPLICIT}\nTransferSyntax3 = {JPEG_LS}\n"
        "[[PresentationContexts]]\n[Contexts]\n"
        f"PresentationContext1 = {CT}\\Plain\nPresentationContext2 = {MR}\\Plain\n"
        "[[Profiles]]\n[NoSC]\nPresentationContexts = Contexts\n",
        encoding="ascii",
    )
    return path


def _start_storescp(title: str, options: list[str], root: Path, config: Path) -> Destination:
    port, folder = free_port(), root / title
    folder.mkdir(parents=True)
    argv = [dcmtk("storescp"), "-aet", title, "-od", str(folder)]
    argv += [opt.replace("{config}", str(config)) for opt in options] + [str(port)]
    process = subprocess.Popen(
        argv, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return Destination(title, port, folder, process)


def _compressed(name: str, study: str) -> Dataset:
    ds = dcmread(pydicom_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    return ds


def _store(port: int, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="HARNESS")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def study(
    start_chronicle_module: StartChronicle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Study]:
    root = tmp_path_factory.mktemp("dcmtk-retrieve")
    config = _no_sc_config(root / "nosc.cfg")
    destinations = {
        title: _start_storescp(title, options, root / "received", config)
        for title, options in DESTINATIONS.items()
    }
    try:
        remotes = default_remote_aes() + [
            f"{d.title}@127.0.0.1:{d.port}" for d in destinations.values()
        ]
        server = start_chronicle_module(remote_aes=remotes)
        uid, series = generate_uid(), generate_uid()
        cts = [make_ct(uid, series, rows=32, cols=32, InstanceNumber=n) for n in (1, 2)]
        mr = _compressed("MR_small_jpeg_ls_lossless.dcm", uid)
        sc = _compressed("SC_rgb_rle.dcm", uid)
        datasets = [*cts, mr, sc]
        _store(server.dimse_port, datasets)
        sources = {str(ds.SOPInstanceUID): ds for ds in datasets}
        yield Study(server, destinations, uid, sources, str(sc.SOPInstanceUID))
    finally:
        for destination in destinations.values():
            destination.process.terminate()
            destination.process.wait(timeout=10)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=120)


def movescu(study: Study, destination: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [dcmtk("movescu"), "-v", "-S", "-aet", "MOVESCU", "-aec", "CHRONICLE"]
    argv += ["-aem", destination, *extra, "-k", "QueryRetrieveLevel=STUDY"]
    argv += ["-k", f"StudyInstanceUID={study.uid}", "127.0.0.1", str(study.server.dimse_port)]
    return _run(argv)


def _log(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def _stored(study: Study, sop: str) -> bytes:
    ds = study.sources[sop]
    url = (
        f"{study.server.dicomweb_url}/studies/{study.uid}/series/{ds.SeriesInstanceUID}"
        f"/instances/{sop}"
    )
    response = httpx.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert response.status_code == 200
    return response.content


def _same_pixels(received: Dataset, source: Dataset) -> bool:
    return bool(np.array_equal(received.pixel_array, source.pixel_array))


def test_movescu_moves_the_study_as_stored_bit_for_bit(study: Study) -> None:
    done = movescu(study, "ALLSCP")

    log = _log(done)
    assert done.returncode == 0, log
    assert "Received Final Move Response (Success)" in log, log
    assert log.count("Received Move Response") >= 4, log  # one Pending per sub-operation
    received = study.destinations["ALLSCP"].received()
    assert set(received) == set(study.sources)
    for path in study.destinations["ALLSCP"].folder.iterdir():
        sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(_stored(study, sop)), sop


def test_movescu_to_an_unknown_destination_is_refused(study: Study) -> None:
    done = movescu(study, "NOWHERE")

    assert "Refused: MoveDestinationUnknown" in _log(done), _log(done)


def test_uncompressed_only_storescp_gets_decoded_pixel_exact_instances(study: Study) -> None:
    done = movescu(study, "PLAINSCP")

    assert "Received Final Move Response (Success)" in _log(done), _log(done)
    received = study.destinations["PLAINSCP"].received()
    assert set(received) == set(study.sources)
    for sop, ds in received.items():
        assert ds.file_meta.TransferSyntaxUID in (EXPLICIT, IMPLICIT), sop
        assert _same_pixels(ds, study.sources[sop]), sop


def test_a_refused_sop_class_fails_alone(study: Study) -> None:
    done = movescu(study, "NOSCSCP")

    log = _log(done)
    assert "Received Final Move Response (Warning" in log, log
    received = study.destinations["NOSCSCP"].received()
    assert set(received) == set(study.sources) - {study.sc}


def test_movescu_cancel_stops_the_sub_operations(study: Study) -> None:
    started = time.monotonic()
    done = movescu(study, "SLOWSCP", "--cancel", "1")

    log = _log(done)
    assert "Cancel" in log, log
    assert len(study.destinations["SLOWSCP"].received()) < len(study.sources)
    assert time.monotonic() - started < 4 * len(study.sources)


@pytest.mark.parametrize("options", [[], ["+xi"]], ids=["default", "+xi"])
def test_getscu_receives_every_instance_decoded_where_it_must(
    study: Study, tmp_path: Path, options: list[str]
) -> None:
    argv = [dcmtk("getscu"), "-v", "-S", "-aet", "GETSCU", "-aec", "CHRONICLE", *options]
    argv += ["-od", str(tmp_path), "-k", "QueryRetrieveLevel=STUDY"]
    argv += ["-k", f"StudyInstanceUID={study.uid}", "127.0.0.1", str(study.server.dimse_port)]

    done = _run(argv)

    assert done.returncode == 0, _log(done)
    received = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in tmp_path.iterdir()}
    assert set(received) == set(study.sources), _log(done)
    for sop, ds in received.items():
        assert ds.file_meta.TransferSyntaxUID in (EXPLICIT, IMPLICIT), sop
        assert _same_pixels(ds, study.sources[sop]), sop
