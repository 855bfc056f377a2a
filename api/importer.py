"""`chronicle import`: bulk-load files and folders through the ingest service.

The embedded import touches only the event log and the blobs (like any extra
ingest process), so it works while a server holds the projection store: that
server's projector picks the events up. When no server holds the store, the
import projects them itself before returning.
"""

from __future__ import annotations

import getpass
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from infra.errors import Invalid, Unavailable
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.ports import BlobStore, EventLog
from infra.settings import Settings
from ingest.service import IngestService
from projections.runner import Projector
from schemas.events import Source


@dataclass
class ImportSummary:
    stored: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def render(self) -> str:
        lines = [f"stored: {self.stored}", f"already kept (duplicates): {self.duplicates}"]
        lines += [f"skipped ({why}): {n}" for why, n in sorted(self.skipped.items())]
        lines += [f"FAILED ({why}): {n}" for why, n in sorted(self.failed.items())]
        return "\n".join(lines + self.notes)


def walk(paths: Iterable[str]) -> Iterator[Path]:
    for text in paths:
        path = Path(text)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        elif path.exists():
            yield path
        else:
            raise Invalid(f"{text}: no such file or folder")


def import_embedded(settings: Settings, paths: Sequence[str]) -> ImportSummary:
    files = list(walk(paths))
    event_log = open_event_log(settings.log_url)
    blobs = open_blob_store(settings.blob_url)
    service = IngestService.from_settings(settings, event_log, blobs)
    summary = ImportSummary()
    source = Source("IMPORT", user=getpass.getuser())
    try:
        for path in tqdm(files, unit="file", desc="import"):
            _import_one(service, path, source, summary)
        _project_if_free(settings, event_log, blobs, summary)
    finally:
        blobs.close()
        event_log.close()
    return summary


def _import_one(service: IngestService, path: Path, source: Source, summary: ImportSummary) -> None:
    try:
        outcome = service.store_part10_file(path, source=source)
    except Unavailable:
        raise  # storage is down: stop, do not skip the rest silently
    except Invalid as exc:
        summary.skipped[_reason(str(exc))] += 1
        return
    if outcome.duplicate:
        summary.duplicates += 1
    else:
        summary.stored += 1


def _reason(message: str) -> str:
    # Group by the kind of problem, not by file: "…/x.txt is not DICOM" etc.
    return message.split(":", 1)[0][:80]


def _project_if_free(
    settings: Settings, event_log: EventLog, blobs: BlobStore, summary: ImportSummary
) -> None:
    try:
        index = open_projection_store(settings.index_url)
    except Unavailable as exc:
        summary.notes.append(f"not projected here ({exc}); the running server projects them")
        return
    try:
        Projector(event_log, index, blobs=blobs).run_until(event_log.end())
    finally:
        index.close()


def import_via_stow(paths: Sequence[str], base_url: str, batch: int = 20) -> ImportSummary:
    """Send files to a running server as STOW-RS bodies of `batch` instances."""
    files = list(walk(paths))
    summary = ImportSummary()
    url = base_url.rstrip("/") + "/dicomweb/studies"
    with httpx.Client(timeout=300) as client, tqdm(total=len(files), unit="file") as bar:
        for start in range(0, len(files), batch):
            chunk = files[start : start + batch]
            _stow(client, url, chunk, summary)
            bar.update(len(chunk))
    return summary


def _stow(client: httpx.Client, url: str, files: list[Path], summary: ImportSummary) -> None:
    boundary = uuid.uuid4().hex
    body = bytearray()
    for path in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    try:
        response = client.post(
            url,
            content=bytes(body),
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
    except httpx.HTTPError as exc:
        raise Unavailable(f"STOW-RS to {url} failed: {exc}") from exc
    if response.status_code == 503:
        raise Unavailable(f"server at {url} cannot store now: {response.text[:200]}")
    answer = response.json() if response.content else {}
    stored = len(answer.get("00081199", {}).get("Value", []))
    failed = answer.get("00081198", {}).get("Value", [])
    summary.stored += stored
    for item in failed:
        reason = item.get("00081197", {}).get("Value", ["?"])[0]
        summary.skipped[f"STOW failure reason 0x{int(reason):04X}"] += 1
    if response.status_code >= 400 and not failed:
        summary.failed[f"HTTP {response.status_code}"] += len(files)
