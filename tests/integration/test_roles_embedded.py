"""`chronicle serve --role`: an ingest node and a projector+api node, real processes.

Both share one data folder on the embedded defaults (SQLite log, folder blobs).
The projector+api node holds the chDB index; the ingest node (with a worker)
derives the same index URL from that folder, so had it opened the index one
of the two could not have started (chDB allows one process per directory),
and no process of it maps the chDB library. dcmtk storescu and STOW-RS go to
the ingest node; QIDO-RS, WADO-RS and C-FIND on the api node see the instances
byte-identical, with read-your-writes across the two processes.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.chronicle_server import ChronicleServer, StartChronicle, chronicle_command
from tests.support import (
    dataset_bytes,
    dcmtk,
    dcmtk_copy,
    make_ct,
    multipart_related,
    part10_bytes,
    split_multipart,
    tool_env,
    write_part10,
)

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
LAGGING = '299 chronicle "projection lagging"'


@dataclass
class Nodes:
    ingest: ChronicleServer
    api: ChronicleServer


def start_nodes(start: StartChronicle, ingest: dict[str, Any], api: dict[str, Any]) -> Nodes:
    """Both nodes at once (each waits for chDB or the broker on its own)."""
    with ThreadPoolExecutor(2) as pool:
        ingest_node = pool.submit(start, roles="ingest", **ingest)
        api_node = pool.submit(start, roles="projector,api", **api)
        return Nodes(ingest_node.result(), api_node.result())


@pytest.fixture(scope="module")
def nodes(
    start_chronicle_module: StartChronicle, tmp_path_factory: pytest.TempPathFactory
) -> Nodes:
    # One folder: whichever node started second could not, had both opened chDB.
    shared = tmp_path_factory.mktemp("roles") / "data"
    ingest = {"data_dir": shared, "extra_args": ["--workers", "2"]}
    return start_nodes(start_chronicle_module, ingest, {"data_dir": shared})


# ---------------------------------------------------------------- helpers


def process_tree(pid: int) -> list[int]:
    """The process and its children (a node's owner and its front-end workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def maps_chdb(pid: int) -> bool:
    return "chdb" in Path(f"/proc/{pid}/maps").read_text()


def wait_for_workers(server: ChronicleServer, count: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.output().count("Chronicle worker") >= count:
            return process_tree(server.process.pid)
        time.sleep(0.2)
    pytest.fail(f"{count} worker(s) did not start\n{server.output()[-4000:]}")


def storescu(server: ChronicleServer, *files: Path) -> str:
    argv = [dcmtk("storescu"), "-v", "-aet", "STORESCU", "-aec", server.ae_title]
    argv += ["-to", "10", "-ta", "30", "-td", "60", "127.0.0.1", str(server.dimse_port)]
    result = subprocess.run(
        argv + [str(f) for f in files], capture_output=True, text=True, env=tool_env(), timeout=60
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert log.count("Received Store Response (Success)") == len(files), log
    return log


def stow(server: ChronicleServer, *datasets: Dataset) -> httpx.Response:
    body, content_type = multipart_related([part10_bytes(ds) for ds in datasets])
    response = httpx.post(
        f"{server.dicomweb_url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def qido_instances(server: ChronicleServer, study: str) -> tuple[set[str], httpx.Response]:
    response = httpx.get(f"{server.dicomweb_url}/studies/{study}/instances", timeout=30)
    assert response.status_code in (200, 204), response.text
    found = response.json() if response.status_code == 200 else []
    return {item["00080018"]["Value"][0] for item in found}, response


def wado_part10(server: ChronicleServer, study: str, series: str, sop: str) -> bytes:
    url = f"{server.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}"
    response = httpx.get(url, headers={"Accept": DICOM_ANY}, timeout=30)
    assert response.status_code == 200, response.text
    [(_, payload)] = split_multipart(response.content, response.headers["content-type"])
    return payload


def c_find_images(server: ChronicleServer, study: str, series: str) -> set[str]:
    ae = AE(ae_title="HARNESS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.ae_title)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series
    identifier.SOPInstanceUID = ""
    try:
        answers = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    return {str(ds.SOPInstanceUID) for status, ds in answers if ds is not None}


def dcmtk_file(tmp_path: Path, study: str, series: str) -> Path:
    """A CT file in dcmtk's own encoding, so storescu sends its bytes unchanged."""
    source = write_part10(make_ct(study, series, rows=16, cols=16), tmp_path / "source.dcm")
    return dcmtk_copy(source, tmp_path / "sent.dcm", generate_uid())


# ---------------------------------------------------------------- tests


def test_stores_through_the_ingest_node_are_served_byte_identical_by_the_api_node(
    nodes: Nodes, tmp_path: Path
) -> None:
    study, series = generate_uid(), generate_uid()
    sent_file = dcmtk_file(tmp_path, study, series)
    sop_dimse = str(pydicom.dcmread(sent_file, stop_before_pixels=True).SOPInstanceUID)
    stowed = make_ct(study, series, rows=16, cols=16, InstanceNumber=2)

    storescu(nodes.ingest, sent_file)
    stow(nodes.ingest, stowed)

    found, response = qido_instances(nodes.api, study)
    assert found == {sop_dimse, stowed.SOPInstanceUID}
    assert "Warning" not in response.headers
    dimse_copy = wado_part10(nodes.api, study, series, sop_dimse)
    assert dataset_bytes(dimse_copy) == dataset_bytes(sent_file.read_bytes())
    stow_copy = wado_part10(nodes.api, study, series, stowed.SOPInstanceUID)
    assert dataset_bytes(stow_copy) == dataset_bytes(part10_bytes(stowed))
    assert c_find_images(nodes.api, study, series) == {sop_dimse, stowed.SOPInstanceUID}


def test_the_ingest_node_and_its_worker_never_open_the_index(nodes: Nodes) -> None:
    pids = wait_for_workers(nodes.ingest, 1)
    assert len(pids) == 2, "the owner and one front-end worker"
    stow(nodes.ingest, make_ct(rows=8, cols=8))  # whichever process the kernel picks

    assert not any(maps_chdb(pid) for pid in pids)
    assert maps_chdb(nodes.api.process.pid), "the check would see chDB where it is loaded"
    for _ in range(4):  # SO_REUSEPORT spreads these over owner and worker
        health = httpx.get(f"{nodes.ingest.base_url}/healthz", timeout=10).json()
        assert health["roles"] == ["ingest"]
        assert "checkpoint" not in health and "log_end" in health
    api_health = httpx.get(f"{nodes.api.base_url}/healthz", timeout=10).json()
    assert api_health["roles"] == ["projector", "api"] and "projection_lag" in api_health
    assert "roles ingest:" in nodes.ingest.output()
    assert "roles projector,api:" in nodes.api.output()
    metrics = httpx.get(f"{nodes.ingest.base_url}/metrics", timeout=10).text
    assert 'chronicle_role{role="ingest"} 1.0' in metrics
    assert "chronicle_projection_lag_events" not in metrics


def test_the_ingest_node_offers_no_query_retrieve(nodes: Nodes, tmp_path: Path) -> None:
    # pynetdicom: the association is accepted, the Q/R context rejected (0x03).
    ae = AE(ae_title="HARNESS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", nodes.ingest.dimse_port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        [rejected] = assoc.rejected_contexts
        assert accepted == {Verification}
        assert rejected.abstract_syntax == StudyRootQueryRetrieveInformationModelFind
        assert rejected.result == 0x03  # abstract syntax not supported
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    # dcmtk's findscu, as a RIS would run it, gets no context to query on.
    argv = [dcmtk("findscu"), "-S", "-aet", "FINDSCU", "-aec", "CHRONICLE", "-to", "10"]
    argv += ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    argv += ["127.0.0.1", str(nodes.ingest.dimse_port)]
    result = subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=30)
    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stdout + result.stderr


def test_the_ingest_node_has_no_read_routes_and_the_api_node_no_stow(nodes: Nodes) -> None:
    study = generate_uid()
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{study}/metadata", "/wado"):
        response = httpx.get(f"{nodes.ingest.base_url}{path}", timeout=10)
        assert response.status_code == 404, path
        assert "an api node serves this" in response.json()["detail"]
    body, content_type = multipart_related([part10_bytes(make_ct(study, rows=8, cols=8))])
    response = httpx.post(
        f"{nodes.api.dicomweb_url}/studies",
        content=body,
        headers={"Content-Type": content_type},
        timeout=10,
    )
    assert response.status_code == 404
    assert "an ingest node serves this" in response.json()["detail"]


def test_the_api_node_refuses_c_store_and_keeps_nothing(nodes: Nodes) -> None:
    ds = make_ct(rows=8, cols=8)
    ae = AE(ae_title="HARNESS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", nodes.api.dimse_port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0x0122  # Refused: SOP Class not supported (here)
    assert qido_instances(nodes.api, ds.StudyInstanceUID)[0] == set()


def test_reads_on_the_api_node_see_stores_the_ingest_node_just_acknowledged(
    nodes: Nodes,
) -> None:
    study, series = generate_uid(), generate_uid()
    stored: set[str] = set()
    for number in range(1, 6):
        ds = make_ct(study, series, rows=8, cols=8, InstanceNumber=number)
        stow(nodes.ingest, ds)
        stored.add(ds.SOPInstanceUID)
        # No sleep: the api node waits until the projector covers the log end.
        found, response = qido_instances(nodes.api, study)
        assert found == stored or response.headers.get("Warning") == LAGGING
        assert found == stored, "within the 5 s bound the projector keeps up"
    ae = AE(ae_title="HARNESS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", nodes.ingest.dimse_port, ae_title="CHRONICLE")
    assert assoc.is_established
    last = make_ct(study, series, rows=8, cols=8, InstanceNumber=6)
    assert assoc.send_c_store(last).Status == 0x0000
    assoc.release()
    assert last.SOPInstanceUID in c_find_images(nodes.api, study, series)


def test_api_without_its_projector_on_chdb_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    argv = [*chronicle_command(), "serve", "--data-dir", str(data), "--role", "api"]
    result = subprocess.run(
        argv, capture_output=True, text=True, env=tool_env(), timeout=60, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "Run --role projector,api" in result.stderr
    assert "chDB allows one process per directory" in result.stderr
    assert "--index-url http://" in result.stderr
    assert not (data / "index").exists() and not (data / "log.db").exists()
