"""Two sites, one archive, on one Kafka topic (Tansu) and one S3 bucket prefix (SeaweedFS):

- site A runs a whole `chronicle serve --site SITE-A` (ingest, projector, api; its own
  chDB index, projecting the whole topic);
- site B runs an ingest-only node, `chronicle serve --site SITE-B --role ingest` (no index);
- a central `chronicle serve --role projector,api` projects the whole topic into its own
  chDB index and answers queries.

What is proven:
- The same instance arriving at both sites is one blob, two events, one row in queries.
- One SOP Instance UID with two datasets is a conflict: `GET /admin/conflicts` (the same on
  both indexes) and `chronicle conflicts` (through a server, and embedded after
  `chronicle replay`) list both versions with their sites; the newer by log order is current.
- One Patient ID from two issuers stays two patients, in QIDO-RS and in C-FIND.
"""

from __future__ import annotations

import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from infra.kafka_log import KafkaEventLog
from schemas import codec
from schemas.events import Envelope, InstanceStored
from tests.chronicle_server import ChronicleServer, StartChronicle, chronicle_command
from tests.seaweed import SeaweedFS, seaweed  # noqa: F401  (a fixture)
from tests.support import make_ct, part10_bytes, tool_env
from tests.tansu import session_broker

BOUNDARY = "multisite-boundary"


@dataclass
class TwoSites:
    a: ChronicleServer  # site A: ingest, projector and api
    b: ChronicleServer  # site B: ingest only
    central: ChronicleServer  # projector and api, no ingest
    log_url: str
    blob_url: str
    prefix: str
    store: SeaweedFS

    def backend_args(self) -> list[str]:
        return ["--log-url", self.log_url, "--blob-url", self.blob_url]


@pytest.fixture(scope="module")
def sites(
    request: pytest.FixtureRequest,
    seaweed: SeaweedFS,  # noqa: F811
    start_chronicle_module: StartChronicle,
) -> TwoSites:
    log_url = session_broker(request).topic_url(partitions=3, delivery_timeout_ms=5000)
    prefix = f"multisite-{uuid.uuid4().hex[:10]}"
    blob_url = seaweed.url(prefix=prefix)
    backends = ["--log-url", log_url, "--blob-url", blob_url]
    nodes = (
        ["--site", "SITE-A", *backends],
        ["--site", "SITE-B", "--role", "ingest", *backends],
        ["--role", "projector,api", *backends],
    )
    # Started side by side: each waits mostly for its own chDB and broker connections.
    with ThreadPoolExecutor(len(nodes)) as pool:
        started = [pool.submit(start_chronicle_module, args, seaweed.env) for args in nodes]
        a, b, central = (future.result() for future in started)
    return TwoSites(a, b, central, log_url, blob_url, prefix, seaweed)


# -- clients ------------------------------------------------------------------------


def c_store(server: ChronicleServer, calling_ae: str, ds: Dataset) -> int:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def stow(server: ChronicleServer, ds: Dataset) -> int:
    body = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body += part10_bytes(ds) + f"\r\n--{BOUNDARY}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    response = httpx.post(
        f"{server.dicomweb_url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=30,
    )
    return response.status_code


def c_find(server: ChronicleServer, model: Any, identifier: Dataset) -> list[Dataset]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        answers = list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()
    assert int(answers[-1][0].Status) == 0x0000
    return [
        found for status, found in answers if int(status.Status) == 0xFF00 and found is not None
    ]


def qido(server: ChronicleServer, path: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.dicomweb_url}{path}", params=params, timeout=30)
    assert response.headers.get("Warning") is None
    if response.status_code == 204:
        return []
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def value(obj: dict[str, Any], tag: str) -> Any:
    return obj.get(tag, {}).get("Value", [""])[0]


def conflicts(server: ChronicleServer, **params: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/admin/conflicts", params=params, timeout=30)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def chronicle(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*chronicle_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=tool_env(env),
    )


def events_for(log_url: str, sop_uid: str) -> list[Envelope]:
    """Every InstanceStored event of one instance, read from the topic itself."""
    event_log = KafkaEventLog.from_url(log_url)
    found: list[Envelope] = []
    try:
        position: dict[int, int] = {}
        while records := event_log.read(position, 1000):
            for record in records:
                position[record.partition] = record.offset + 1
                envelope = codec.decode(record.value)
                payload = envelope.payload
                if isinstance(payload, InstanceStored) and payload.sop_instance_uid == sop_uid:
                    found.append(envelope)
    finally:
        event_log.close()
    return found


def instance_keys(sites: TwoSites) -> list[str]:
    client: Any = sites.store.client()
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=sites.store.bucket, Prefix=f"{sites.prefix}/instances/"
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


# -- the tests -----------------------------------------------------------------------


def test_the_same_instance_at_both_sites_is_one_blob_two_events_one_row(sites: TwoSites) -> None:
    ds = make_ct(rows=16, cols=16, patient_id="MS-DUP")
    keys_before = set(instance_keys(sites))
    assert c_store(sites.a, "STORESCU", ds) == 0x0000
    assert stow(sites.b, ds) == 200
    events = events_for(sites.log_url, ds.SOPInstanceUID)
    assert sorted(e.site for e in events) == ["SITE-A", "SITE-B"]
    assert sorted(e.payload.source.protocol for e in events) == ["DIMSE", "STOW"]
    assert len({(e.payload.blob.key, e.payload.blob.sha256) for e in events}) == 1
    new_keys = set(instance_keys(sites)) - keys_before
    assert new_keys == {f"{sites.prefix}/{events[0].payload.blob.key}"}
    for server in (sites.a, sites.central):
        rows = qido(server, "/instances", SOPInstanceUID=ds.SOPInstanceUID)
        assert len(rows) == 1
        assert value(rows[0], "00080018") == ds.SOPInstanceUID
        assert qido(server, "/studies", PatientID="MS-DUP")[0]["00201208"]["Value"] == [1]
        listed = conflicts(server, limit="1000")["conflicts"]
        assert ds.SOPInstanceUID not in {c["sop_instance_uid"] for c in listed}
    # Site B's node keeps no index and serves no admin report: that is the api role's.
    assert not (sites.b.data_dir / "index").exists()
    assert httpx.get(f"{sites.b.base_url}/admin/conflicts", timeout=10).status_code == 404


@pytest.fixture(scope="module")
def conflict(sites: TwoSites) -> dict[str, Any]:
    """One UID sent to site A, then edited and sent to site B; the report as first listed."""
    first = make_ct(rows=16, cols=16, patient_id="MS-CONFLICT", StudyDescription="first")
    second = deepcopy(first)
    second.StudyDescription = "second"
    assert c_store(sites.a, "STORESCU", first) == 0x0000
    assert c_store(sites.b, "HARNESS", second) == 0x0000
    events = events_for(sites.log_url, first.SOPInstanceUID)
    report = conflicts(sites.central)
    [found] = [c for c in report["conflicts"] if c["sop_instance_uid"] == first.SOPInstanceUID]
    return {"dataset": first, "events": events, "report": report, "found": found}


def test_one_uid_with_two_datasets_is_listed_on_both_indexes_with_the_newer_current(
    sites: TwoSites, conflict: dict[str, Any]
) -> None:
    found, events = conflict["found"], conflict["events"]
    older, newer = (e.payload for e in events)
    assert older.blob.sha256 != newer.blob.sha256
    assert [v["dataset_sha256"] for v in found["versions"]] == [
        older.blob.sha256,
        newer.blob.sha256,
    ]
    assert [(v["site"], v["calling_ae"]) for v in found["versions"]] == [
        ("SITE-A", "STORESCU"),
        ("SITE-B", "HARNESS"),
    ]
    assert [v["current"] for v in found["versions"]] == [False, True]
    assert found["current_sha256"] == newer.blob.sha256
    assert found["series_instance_uid"] == older.series_instance_uid
    assert [v["offset"] for v in found["versions"]] == sorted(
        v["offset"] for v in found["versions"]
    )
    # Both indexes follow the whole topic: the same report, and queries show the newer.
    assert conflicts(sites.a) == conflict["report"]
    ds = conflict["dataset"]
    for server in (sites.a, sites.central):
        [study] = qido(server, "/studies", StudyInstanceUID=ds.StudyInstanceUID)
        assert value(study, "00081030") == "second"
        assert len(qido(server, "/instances", SOPInstanceUID=ds.SOPInstanceUID)) == 1


def test_the_cli_lists_the_conflict_through_the_running_server(
    sites: TwoSites, conflict: dict[str, Any]
) -> None:
    as_json = chronicle("conflicts", "--url", sites.central.base_url, "--json", env=sites.store.env)
    assert as_json.returncode == 0, as_json.stderr
    assert orjson.loads(as_json.stdout) == conflict["report"]
    text = chronicle("conflicts", "--url", sites.central.base_url, env=sites.store.env)
    assert text.returncode == 0, text.stderr
    uid, newer = conflict["found"]["sop_instance_uid"], conflict["found"]["current_sha256"]
    assert f"{uid}  (2 versions)" in text.stdout
    assert f"current sha256 {newer}  site SITE-B  AE HARNESS" in text.stdout


def test_one_patient_id_from_two_issuers_stays_two_patients(sites: TwoSites) -> None:
    for server, issuer, name in ((sites.a, "HOSP-A", "Alpha^Ann"), (sites.b, "HOSP-B", "Beta^Bo")):
        ds = make_ct(rows=16, cols=16, patient_id="MS-SHARED", patient_name=name)
        ds.IssuerOfPatientID = issuer
        assert c_store(server, "STORESCU", ds) == 0x0000
    studies = qido(
        sites.central, "/studies", PatientID="MS-SHARED", includefield="IssuerOfPatientID"
    )
    assert sorted((value(s, "00100021"), value(s, "00100010")["Alphabetic"]) for s in studies) == [
        ("HOSP-A", "Alpha^Ann"),
        ("HOSP-B", "Beta^Bo"),
    ]
    patient = Dataset()
    patient.QueryRetrieveLevel = "PATIENT"
    patient.PatientID = "MS-SHARED"
    patient.IssuerOfPatientID = ""
    patient.PatientName = ""
    patient.NumberOfPatientRelatedStudies = ""
    patients = c_find(sites.central, PatientRootQueryRetrieveInformationModelFind, patient)
    assert sorted((str(p.IssuerOfPatientID), str(p.PatientName)) for p in patients) == [
        ("HOSP-A", "Alpha^Ann"),
        ("HOSP-B", "Beta^Bo"),
    ]
    assert [int(p.NumberOfPatientRelatedStudies) for p in patients] == [1, 1]
    study = Dataset()
    study.QueryRetrieveLevel = "STUDY"
    study.PatientID = "MS-SHARED"
    study.IssuerOfPatientID = ""
    study.StudyInstanceUID = ""
    found = c_find(sites.a, StudyRootQueryRetrieveInformationModelFind, study)
    assert sorted(str(s.IssuerOfPatientID) for s in found) == ["HOSP-A", "HOSP-B"]
    assert len({s.StudyInstanceUID for s in found}) == 2


def test_replay_rebuilds_the_same_conflicts_from_the_topic(
    sites: TwoSites, conflict: dict[str, Any]
) -> None:
    before = conflicts(sites.central, limit="1000")
    assert sites.central.stop() == 0  # frees its chDB index for the embedded commands
    where = ["--data-dir", str(sites.central.data_dir), *sites.backend_args()]
    replayed = chronicle("replay", *where, env=sites.store.env)
    assert replayed.returncode == 0, replayed.stderr
    listed = chronicle("conflicts", *where, "--json", "--limit", "1000", env=sites.store.env)
    assert listed.returncode == 0, listed.stderr
    assert orjson.loads(listed.stdout) == before
    assert conflict["found"] in before["conflicts"]


def test_the_embedded_cli_says_to_use_url_while_a_server_holds_the_index(
    sites: TwoSites,
) -> None:
    where = ["--data-dir", str(sites.a.data_dir), *sites.backend_args()]
    held = chronicle("conflicts", *where, env=sites.store.env)
    assert held.returncode == 1
    assert "--url" in held.stderr
