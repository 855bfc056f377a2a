"""QIDO-RS end to end: real ingest, log, projector and index, then HTTP searches.

Proves the query engine reads what the projector writes (normalised times,
person names, counts) and that a search sees every store acknowledged before
it began (read-your-writes through archive.read_barrier()).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from api import qido
from api.wiring import Archive, open_archive
from infra.settings import Settings
from schemas.events import Source

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
US_STUDY = "1.3.6.1.4.1.5962.1.2.13.20040826185059.5457"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    settings = Settings(data_dir=Path(tmp_path_factory.mktemp("chronicle")), read_wait_seconds=10)
    opened = open_archive(settings)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(archive: Archive) -> TestClient:
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm"):
        path = Path(str(get_testdata_file(name)))
        archive.ingest.store_part10_file(path, source=Source(protocol="IMPORT"))
    app = FastAPI()
    app.state.archive = archive
    app.include_router(qido.router)
    return TestClient(app)


def study_uids(response: httpx.Response) -> list[str]:
    return [s["0020000D"]["Value"][0] for s in response.json()]


def test_stored_instances_are_found_at_once(client: TestClient) -> None:
    response = client.get("/dicomweb/studies")
    assert response.status_code == 200 and "warning" not in response.headers
    # Same date and time for MR and US: the Study Instance UID breaks the tie
    # (compared as text: "...1.2.13..." sorts before "...1.2.4...").
    assert study_uids(response) == [US_STUDY, MR_STUDY, CT_STUDY]
    mr = response.json()[1]
    assert mr["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^MR1"}]
    assert mr["00080030"]["Value"] == ["185059.000000"]
    assert mr["00201206"]["Value"] == [1] and mr["00201208"]["Value"] == [1]


def test_matching_on_projected_rows(client: TestClient) -> None:
    by_name = client.get("/dicomweb/studies?PatientName=compressedsamples%5E%3F%3F1")
    assert study_uids(by_name) == [US_STUDY, MR_STUDY, CT_STUDY]
    window = client.get("/dicomweb/studies?StudyDate=20040119-20040826&StudyTime=0700-1800")
    assert study_uids(window) == [CT_STUDY]  # MR/US at 18:50 on the last day are outside
    by_modality = client.get("/dicomweb/studies?ModalitiesInStudy=US,CT")
    assert study_uids(by_modality) == [US_STUDY, CT_STUDY]
    fuzzy = client.get("/dicomweb/studies?PatientName=compressed%5Ect&fuzzymatching=true")
    assert study_uids(fuzzy) == [CT_STUDY]


def test_instances_with_metadata(client: TestClient) -> None:
    url = f"/dicomweb/studies/{CT_STUDY}/series/{CT_SERIES}/instances?includefield=all"
    [instance] = client.get(url).json()
    assert instance["00280010"] == {"vr": "US", "Value": [128]}
    assert instance["00080060"]["Value"] == ["CT"]  # read from the stored metadata
    assert "7FE00010" not in instance  # bulk data stays with WADO-RS
    assert instance["00081190"]["Value"][0].startswith(
        f"http://testserver/dicomweb/studies/{CT_STUDY}/series/{CT_SERIES}/instances/"
    )
