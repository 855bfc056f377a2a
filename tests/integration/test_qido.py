"""QIDO-RS over HTTP: the router on a real chDB index holding the matching corpus.

The app is assembled here around an object with the Archive attributes the
router uses (settings, index, read_barrier), so the index is real and the
read barrier's answer is the test's to choose.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import qido
from infra.ports import ProjectionStore
from infra.settings import Settings
from schemas.dicom_xml import xml_to_json
from tests.unit.matching_corpus import CT, S1, S2, S3, S4, S6, S7, S8, SR, open_corpus_store

ALL_STUDIES = [S8, S2, S1, S4, S3, S6, S7]
XML_ACCEPT = 'multipart/related; type="application/dicom+xml"'


@dataclass
class ArchiveView:
    settings: Settings
    index: ProjectionStore
    fresh: bool = True

    def read_barrier(self) -> bool:
        return self.fresh


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    yield from open_corpus_store(Path(tmp_path_factory.mktemp("index")))


@pytest.fixture
def archive(index: ProjectionStore, tmp_path: Path) -> ArchiveView:
    return ArchiveView(Settings(data_dir=tmp_path), index)


@pytest.fixture
def client(archive: ArchiveView) -> TestClient:
    app = FastAPI()
    app.state.archive = archive
    app.include_router(qido.router)
    return TestClient(app)


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [r[tag]["Value"][0] for r in results]


def xml_parts(response: Any) -> list[dict[str, Any]]:
    content_type = response.headers["content-type"]
    assert content_type.startswith(XML_ACCEPT)
    boundary = re.search(r"boundary=([^;]+)", content_type)
    assert boundary
    chunks = response.content.split(b"--" + boundary.group(1).encode())
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        assert b"Content-Type: application/dicom+xml" in head
        parts.append(xml_to_json(body.removesuffix(b"\r\n")))
    return parts


def test_patient_name_zeta_in_json(client: TestClient) -> None:
    response = client.get("/dicomweb/studies?PatientName=Zeta%5E%2A&StudyDate=20200101-")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert "warning" not in response.headers
    found = orjson.loads(response.content)
    assert uids(found) == [S8, S2, S1]
    assert found[2]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Zeta^Alpha"}]}
    assert found[2]["00081190"]["Value"] == [f"http://testserver/dicomweb/studies/{S1}"]


def test_patient_name_zeta_in_multipart_xml(client: TestClient) -> None:
    response = client.get(
        "/dicomweb/studies?PatientName=Zeta%5E%2A&StudyDate=20200101-",
        headers={"Accept": XML_ACCEPT},
    )
    assert response.status_code == 200
    parts = xml_parts(response)
    assert uids(parts) == [S8, S2, S1]
    assert parts[1]["00100010"]["Value"] == [{"Alphabetic": "Zeta^Beta"}]
    assert parts[1]["00201208"]["Value"] == [3]


def test_json_for_json_and_any_media_ranges(client: TestClient) -> None:
    for accept in ("application/json", "*/*", "application/dicom+json; charset=utf-8", ""):
        response = client.get(
            f"/dicomweb/studies?StudyInstanceUID={S1}", headers={"Accept": accept}
        )
        assert response.headers["content-type"] == "application/dicom+json", accept
    preferred = f"application/dicom+json;q=0.4, {XML_ACCEPT}"
    response = client.get(f"/dicomweb/studies?StudyInstanceUID={S1}", headers={"Accept": preferred})
    assert uids(xml_parts(response)) == [S1]


def test_other_media_types_are_not_acceptable(client: TestClient) -> None:
    for accept in ("application/dicom", 'multipart/related; type="application/dicom"', "text/html"):
        response = client.get("/dicomweb/studies", headers={"Accept": accept})
        assert response.status_code == 406, accept
        assert response.headers["content-type"] == "application/problem+json"


def test_study_date_range(client: TestClient) -> None:
    response = client.get("/dicomweb/studies?StudyDate=20200101-20200110")
    assert uids(response.json()) == [S2, S1, S4]
    response = client.get("/dicomweb/studies?StudyDate=-20191231&StudyTime=")
    assert uids(response.json()) == [S3, S6]


def test_limit_offset_paging_is_stable(client: TestClient) -> None:
    seen: list[str] = []
    warnings = []
    for offset in (0, 3, 6):
        response = client.get(f"/dicomweb/studies?limit=3&offset={offset}")
        assert response.status_code == 200
        seen += uids(response.json())
        warnings.append(response.headers.get("warning", ""))
    assert seen == ALL_STUDIES
    assert ["additional results" in w for w in warnings] == [True, True, False]
    again = client.get("/dicomweb/studies?limit=3&offset=3")
    assert uids(again.json()) == ALL_STUDIES[3:6]


def test_no_match_is_204(client: TestClient) -> None:
    response = client.get("/dicomweb/studies?PatientName=Nobody")
    assert response.status_code == 204
    assert response.content == b""


@pytest.mark.parametrize(
    "url",
    [
        "/dicomweb/studies?StudyDate=2020-13",
        "/dicomweb/studies?foo=bar",
        "/dicomweb/studies?limit=-1",
        "/dicomweb/studies?SOPInstanceUID=1.2",
        "/dicomweb/studies?StudyInstanceUID=1.2.x",
        "/dicomweb/studies/1.2.x/series",
        "/dicomweb/studies/1.2/series/not-a-uid/instances",
    ],
)
def test_bad_queries_are_400_problems(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400 and problem["detail"]


def test_includefield_all_and_repeated_includefield(client: TestClient) -> None:
    response = client.get(f"/dicomweb/studies?StudyInstanceUID={S1}&includefield=all")
    [study] = response.json()
    assert study["00101010"]["Value"] == ["045Y"]
    assert study["00201206"]["Value"] == [2]
    response = client.get(
        f"/dicomweb/studies?StudyInstanceUID={S1}&includefield=PatientAge"
        "&includefield=00100030,IssuerOfPatientID"
    )
    [study] = response.json()
    assert study["00101010"]["Value"] == ["045Y"]
    assert study["00100030"]["Value"] == ["19750312"]
    assert study["00100021"] == {"vr": "LO"}


def test_lagging_projection_adds_a_warning(client: TestClient, archive: ArchiveView) -> None:
    archive.fresh = False
    response = client.get("/dicomweb/studies?limit=1")
    assert response.status_code == 200
    warning = response.headers["warning"]
    assert '299 chronicle "projection lagging"' in warning
    assert "additional results" in warning
    empty = client.get("/dicomweb/studies?PatientName=Nobody")
    assert empty.status_code == 204
    assert empty.headers["warning"] == '299 chronicle "projection lagging"'


def test_public_url_makes_retrieve_urls(index: ProjectionStore, tmp_path: Path) -> None:
    app = FastAPI()
    settings = Settings(data_dir=tmp_path, public_url="https://pacs.example/base/")
    app.state.archive = ArchiveView(settings, index)
    app.include_router(qido.router)
    response = TestClient(app).get(f"/dicomweb/studies/{S1}/series?SeriesNumber=2")
    [series] = response.json()
    assert series["00081190"]["Value"] == [
        f"https://pacs.example/base/dicomweb/studies/{S1}/series/1.2.826.0.1.1.2"
    ]


def test_series_and_instance_resources(client: TestClient) -> None:
    series = client.get(f"/dicomweb/studies/{S1}/series").json()
    assert uids(series, "0020000E") == ["1.2.826.0.1.1.1", "1.2.826.0.1.1.2"]
    all_series = client.get("/dicomweb/series?PatientID=P2").json()
    assert uids(all_series, "0020000E") == ["1.2.826.0.1.2.1", "1.2.826.0.1.2.2"]
    assert all_series[0]["00100010"]["Value"] == [{"Alphabetic": "Zeta^Beta"}]
    sequence = client.get(
        f"/dicomweb/studies/{S1}/series?RequestAttributesSequence.ScheduledProcedureStepID=SPS1"
    ).json()
    assert uids(sequence, "0020000E") == ["1.2.826.0.1.1.1"]
    instances = client.get(f"/dicomweb/studies/{S1}/series/1.2.826.0.1.1.1/instances").json()
    assert uids(instances, "00080018") == [f"1.2.826.0.1.1.1.{n}" for n in (1, 2, 3, 9)]
    assert instances[0]["00280010"] == {"vr": "US", "Value": [512]}
    by_class = client.get(f"/dicomweb/studies/{S1}/instances?SOPClassUID={SR},{CT}").json()
    assert len(by_class) == 5
    everywhere = client.get(f"/dicomweb/instances?SOPClassUID={SR}").json()
    assert uids(everywhere, "00080018") == ["1.2.826.0.1.1.2.1"]
    assert everywhere[0]["00081190"]["Value"] == [
        f"http://testserver/dicomweb/studies/{S1}/series/1.2.826.0.1.1.2/instances/1.2.826.0.1.1.2.1"
    ]
