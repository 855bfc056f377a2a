"""Roles on Kafka + S3: an ingest node with no local state, a projector+api node apart.

A real Tansu broker and SeaweedFS on loopback. The ingest node has its own
data folder and touches nothing on disk but its transient received-files
and STOW spool folders; the projector+api node builds its chDB index from
the topic and reads the blobs from S3.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.chronicle_server import StartChronicle
from tests.integration.test_roles_embedded import (
    Nodes,
    c_find_images,
    dcmtk_file,
    maps_chdb,
    qido_instances,
    start_nodes,
    storescu,
    stow,
    wado_part10,
)
from tests.seaweed import SeaweedFS, shared_seaweed
from tests.support import dataset_bytes, make_ct, part10_bytes
from tests.tansu import session_broker

#: What an ingest node may leave in its data folder: transient, and empty when idle.
TRANSIENT = {"incoming", "tmp"}


@pytest.fixture(scope="module")
def store(pytestconfig: pytest.Config) -> SeaweedFS:
    return shared_seaweed(pytestconfig)


@pytest.fixture(scope="module")
def nodes(
    request: pytest.FixtureRequest,
    store: SeaweedFS,
    start_chronicle_module: StartChronicle,
    tmp_path_factory: pytest.TempPathFactory,
) -> Nodes:
    log_url = session_broker(request).topic_url(delivery_timeout_ms=5000, timeout_ms=5000)
    urls = ["--log-url", log_url, "--blob-url", store.url()]
    common = {"extra_args": urls, "env": store.env}
    ingest = {**common, "data_dir": tmp_path_factory.mktemp("ingest") / "data"}
    api = {**common, "data_dir": tmp_path_factory.mktemp("api") / "data"}
    return start_nodes(start_chronicle_module, ingest, api)


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if not path.is_dir()]


def test_kafka_s3_ingest_node_feeds_a_separate_api_node_byte_identical(
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


def test_the_kafka_s3_ingest_node_keeps_no_local_state(nodes: Nodes) -> None:
    stow(nodes.ingest, make_ct(rows=8, cols=8))

    folder = nodes.ingest.data_dir
    assert {path.name for path in folder.iterdir()} <= TRANSIENT
    assert files_under(folder) == [], "received files and STOW spools are gone once answered"
    assert not maps_chdb(nodes.ingest.process.pid)
    assert (nodes.api.data_dir / "index").is_dir()
