"""`chronicle check`: every event's blob exists with its hash; orphans listed.

An orphan blob is the expected trace of a crash between blob and event (blob
before event); a missing blob would break an invariant and is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from infra.errors import NotFound
from infra.ports import BlobStore, EventLog
from projections.commitment_rules import dataset_sha256
from schemas import codec
from schemas.events import InstanceStored


@dataclass
class CheckReport:
    events: int = 0
    blobs_checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.unreadable)

    def render(self) -> str:
        lines = [
            f"events: {self.events}, blobs checked: {self.blobs_checked}",
            f"missing blobs: {len(self.missing)}",
            *(f"  MISSING {k}" for k in self.missing),
            f"corrupt blobs (sha256 mismatch): {len(self.corrupt)}",
            *(f"  CORRUPT {k}" for k in self.corrupt),
            f"unreadable events: {len(self.unreadable)}",
            *(f"  UNREADABLE {k}" for k in self.unreadable),
            f"orphan blobs (kept, referenced by no event): {len(self.orphans)}",
            *(f"  ORPHAN {k}" for k in self.orphans),
            "OK" if self.ok else "PROBLEMS FOUND",
        ]
        return "\n".join(lines)


def check_archive(event_log: EventLog, blobs: BlobStore, *, verify_hashes: bool) -> CheckReport:
    report = CheckReport()
    referenced: set[str] = set()
    position: dict[int, int] = {}
    total = sum(event_log.end().values())
    with tqdm(total=total, unit="event", desc="check") as bar:
        while batch := event_log.read(position, 1000):
            for record in batch:
                position[record.partition] = record.offset + 1
                report.events += 1
                _check_record(
                    record.value,
                    f"{record.partition}:{record.offset}",
                    blobs,
                    verify_hashes,
                    report,
                    referenced,
                )
            bar.update(len(batch))
    for prefix in ("instances/", "sidecars/"):
        report.orphans.extend(k for k in blobs.keys(prefix) if k not in referenced)
    return report


def _check_record(
    value: bytes,
    where: str,
    blobs: BlobStore,
    verify: bool,
    report: CheckReport,
    referenced: set[str],
) -> None:
    try:
        payload = codec.decode(value).payload
    except codec.DecodeError:
        report.unreadable.append(where)
        return
    if not isinstance(payload, InstanceStored):
        return
    refs = [payload.blob, *(r for r in (payload.sidecar, payload.frames_sidecar) if r)]
    for ref in refs:
        if ref.key in referenced:
            continue
        referenced.add(ref.key)
        report.blobs_checked += 1
        try:
            size = blobs.size(ref.key)
        except NotFound:
            report.missing.append(ref.key)
            continue
        hash_ok = not verify or dataset_sha256(blobs, ref.key, ref.dataset_offset) == ref.sha256
        if size != ref.size or not hash_ok:
            report.corrupt.append(ref.key)
