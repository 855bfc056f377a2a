"""Shared pieces of the end-to-end fault tests (test_faults_e2e_*.py); it holds no test.

A fault test runs real processes: `chronicle serve` on a kafka:// log (Tansu)
and an s3:// blob store (SeaweedFS) with its chDB index in its data folder,
dcmtk's storescu as the modality, httpx as the DICOMweb client. What a client
was told decides what must survive: every instance acknowledged (C-STORE
Success, STOW-RS 200) must later be found by QIDO-RS and retrieved by WADO-RS
with the very dataset bytes that were sent.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.uid import generate_uid

from tests.chronicle_server import ChronicleServer, StartChronicle
from tests.support import (
    dataset_bytes,
    dcmtk,
    make_ct,
    multipart_related,
    split_multipart,
    tool_env,
    write_part10,
)

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_JSON = "application/dicom+json"
SUCCESS = "Success"
#: What storescu -v prints for a 0xA700 answer.
OUT_OF_RESOURCES = "Refused: OutOfResources"
NO_ANSWER = ""
_SENDING = re.compile(r"^I: Sending file: (.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((.+)\)$")


@dataclass(frozen=True)
class SentInstance:
    """One instance as its client sent it: where it is and the bytes that must come back."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    part10: bytes

    @property
    def dataset(self) -> bytes:
        return dataset_bytes(self.part10)


def make_instances(
    folder: Path, count: int, studies: Sequence[str], *, size: int = 64, tag: str = "FAULT"
) -> list[SentInstance]:
    """`count` CT instances spread round robin over `studies` (one series per study)."""
    series = {study: generate_uid() for study in studies}
    made = []
    for number in range(count):
        study = studies[number % len(studies)]
        ds = make_ct(
            study_uid=study,
            series_uid=series[study],
            rows=size,
            cols=size,
            patient_id=tag,
            InstanceNumber=number + 1,
        )
        path = write_part10(ds, folder / f"{tag}-{number:04d}.dcm")
        made.append(SentInstance(path, study, series[study], ds.SOPInstanceUID, path.read_bytes()))
    return made


def start_archive(
    start: StartChronicle, log_url: str, blob_url: str, data_dir: Path | None = None
) -> ChronicleServer:
    """`chronicle serve` on Kafka + S3, its chDB index in `data_dir` (a fresh one if None)."""
    return start(extra_args=["--log-url", log_url, "--blob-url", blob_url], data_dir=data_dir)


# -- STOW-RS --------------------------------------------------------------------------


def stow(server: ChronicleServer, instances: Iterable[SentInstance]) -> httpx.Response:
    body, content_type = multipart_related([i.part10 for i in instances])
    return httpx.post(
        f"{server.dicomweb_url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": DICOM_JSON},
        timeout=60.0,
    )


class StowStream(threading.Thread):
    """One instance per STOW-RS request, back to back, until stopped; keeps every answer."""

    def __init__(
        self,
        server: ChronicleServer,
        instances: list[SentInstance],
        *,
        stop_on_failure: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.server, self.instances = server, instances
        self.stop_on_failure = stop_on_failure
        self.answers: list[tuple[SentInstance, int]] = []
        #: When each answer came (time.monotonic()), in the order of `answers`.
        self.answered_at: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        for instance in self.instances:
            if self.halt.is_set():
                return
            try:
                status = stow(self.server, [instance]).status_code
            except httpx.HTTPError:
                status = 0
            self.answered_at.append(time.monotonic())
            self.answers.append((instance, status))
            if status != 200 and self.stop_on_failure:
                return

    def acknowledged(self) -> list[SentInstance]:
        return [instance for instance, status in self.answers if status == 200]

    def refused(self) -> list[SentInstance]:
        return [instance for instance, status in self.answers if status != 200]

    def resumed(self, since: float | None = None) -> bool:
        """Successes after a failure: the stream saw the fault and got through it.
        With `since` (when the fault ended): three successes answered after it,
        failure or not (a request may wait out the whole fault and then succeed)."""
        if since is not None:
            answered = zip(self.answers, self.answered_at, strict=False)
            return sum(1 for (_, s), at in answered if s == 200 and at > since) >= 3
        statuses = [status for _, status in self.answers]
        first_failure = next((n for n, s in enumerate(statuses) if s != 200), len(statuses))
        return statuses[first_failure:].count(200) >= 3


# -- C-STORE with storescu ---------------------------------------------------------------


def storescu_command(server: ChronicleServer, paths: Sequence[Path]) -> list[str]:
    return [
        dcmtk("storescu"),
        "-v",
        "-aet",
        "STORESCU",
        "-aec",
        server.ae_title,
        "127.0.0.1",
        str(server.dimse_port),
        *(str(p) for p in paths),
    ]


def storescu(server: ChronicleServer, paths: Sequence[Path]) -> dict[Path, str]:
    """Send `paths` on one association; each file's response status as storescu printed it."""
    result = subprocess.run(
        storescu_command(server, paths),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=tool_env(),
        timeout=120,
    )
    return storescu_statuses(result.stdout)


def storescu_statuses(output: str) -> dict[Path, str]:
    """The response storescu -v reported for each file it began to send; NO_ANSWER for a
    file whose answer never came. Files it never began to send are absent."""
    statuses: dict[Path, str] = {}
    current: Path | None = None
    for line in output.splitlines():
        if sending := _SENDING.match(line.strip()):
            current = Path(sending[1])
            statuses[current] = NO_ANSWER
        elif (response := _RESPONSE.match(line.strip())) and current is not None:
            statuses[current] = response[1]
            current = None
    return statuses


# -- what the archive holds ----------------------------------------------------------------


def healthz(server: ChronicleServer) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/healthz", timeout=5.0)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def indexed_sops(server: ChronicleServer, study: str) -> list[str]:
    """QIDO-RS: the SOP Instance UIDs of the study's instances, repeats kept."""
    response = httpx.get(
        f"{server.dicomweb_url}/studies/{study}/instances",
        params={"limit": "10000"},
        headers={"Accept": DICOM_JSON},
        timeout=30.0,
    )
    if response.status_code == 204:
        return []
    response.raise_for_status()
    assert response.headers.get("Warning") is None, "the projection did not catch up"
    return [item["00080018"]["Value"][0] for item in response.json()]


def retrieved_datasets(server: ChronicleServer, study: str) -> dict[str, bytes]:
    """WADO-RS, the whole study as stored: SOP Instance UID -> dataset bytes after the File Meta."""
    response = httpx.get(
        f"{server.dicomweb_url}/studies/{study}", headers={"Accept": ANY_SYNTAX}, timeout=60.0
    )
    response.raise_for_status()
    found: dict[str, bytes] = {}
    for _, part in split_multipart(response.content, response.headers["content-type"]):
        ds = pydicom.dcmread(BytesIO(part), stop_before_pixels=True)
        found[str(ds.SOPInstanceUID)] = dataset_bytes(part)
    return found


def assert_kept(
    server: ChronicleServer,
    acknowledged: Sequence[SentInstance],
    in_doubt: Sequence[SentInstance] = (),
) -> int:
    """Every acknowledged instance is indexed once and comes back byte for byte; besides
    them, at most the instances whose answer was lost (`in_doubt`), each once too.
    Returns how many of those were kept."""
    allowed = {i.sop_uid for i in [*acknowledged, *in_doubt]}
    kept_in_doubt = 0
    for study in sorted({i.study_uid for i in [*acknowledged, *in_doubt]}):
        sops = indexed_sops(server, study)
        doubled = [sop for sop, n in Counter(sops).items() if n > 1]
        assert not doubled, f"study {study}: instances listed twice: {doubled}"
        expected = [i for i in acknowledged if i.study_uid == study]
        missing = {i.sop_uid for i in expected} - set(sops)
        assert not missing, f"study {study}: acknowledged but not found: {sorted(missing)}"
        strangers = set(sops) - allowed
        assert not strangers, f"study {study}: never sent, yet kept: {strangers}"
        landed = [i for i in in_doubt if i.study_uid == study and i.sop_uid in sops]
        kept_in_doubt += len(landed)
        retrieved = retrieved_datasets(server, study)
        for instance in [*expected, *landed]:
            assert retrieved.get(instance.sop_uid) == instance.dataset, (
                f"{instance.sop_uid} is not retrieved byte-identical"
            )
    return kept_in_doubt


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)
