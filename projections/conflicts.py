"""Conflicts: one SOP Instance UID kept with different dataset bytes.

With several sites ingesting into one log, the same SOP Instance UID can
arrive with two different datasets (a re-sent, edited or wrongly re-used UID).
The duplicate policy (docs/conformance.md 3.1.5) keeps both: the newer by log
order is what queries show, the older stays in the log and the blob store.
This module makes those cases visible to an administrator:

- `receipt_by_sop_rows` is the pure event -> rows function of the
  `receipt_by_sop` table (schemas/ddl/003): one row per InstanceStored event,
  ordered by SOP Instance UID, so a conflict's versions sit side by side.
- `list_conflicts` reads a page of the report. A conflict is decided at query
  time (one aggregation in key order): no row function can know, without
  state, that an event is the second version of something, and a projector
  lookup per batch would read far more than this report ever does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from infra.errors import Invalid
from infra.ports import LogRecord, ProjectionStore
from projections.rows import Rows
from schemas.events import Envelope, InstanceStored

TABLE = "receipt_by_sop"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

#: Versions and receipts are listed in log order: offset first, as the
#: instance table's version (the offset) decides which version is current.
_RECEIPT_COLUMNS = (
    "sop_instance_uid, dataset_sha256, partition, offset, study_instance_uid, "
    "series_instance_uid, sop_class_uid, blob_key, site, node, protocol, calling_ae, "
    "called_ae, peer, occurred_at"
)


def receipt_by_sop_rows(record: LogRecord, envelope: Envelope) -> Rows:
    """The `receipt_by_sop` row of one event (InstanceStored only); no I/O, no clock."""
    out = Rows()
    event = envelope.payload
    if not isinstance(event, InstanceStored):
        return out
    out.add(
        TABLE,
        {
            "sop_instance_uid": event.sop_instance_uid,
            "dataset_sha256": event.blob.sha256,
            "partition": record.partition,
            "offset": record.offset,
            "study_instance_uid": event.study_instance_uid,
            "series_instance_uid": event.series_instance_uid,
            "sop_class_uid": event.sop_class_uid,
            "blob_key": event.blob.key,
            "site": envelope.site,
            "node": envelope.node,
            "protocol": event.source.protocol,
            "calling_ae": event.source.calling_ae,
            "called_ae": event.source.called_ae,
            "peer": event.source.peer,
            "occurred_at": datetime.fromisoformat(envelope.occurred_at.replace("Z", "+00:00")),
            "version": record.version,
        },
    )
    return out


# -- the report -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Receipt:
    """One arrival of a version: where from, when, and where it sits in the log."""

    site: str
    node: str
    protocol: str
    calling_ae: str
    called_ae: str
    peer: str
    received_at: str
    partition: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "node": self.node,
            "protocol": self.protocol,
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "peer": self.peer,
            "received_at": self.received_at,
            "partition": self.partition,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class Version:
    """One dataset kept under the UID, with every receipt of it (first one first)."""

    dataset_sha256: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    blob_key: str
    current: bool
    receipts: tuple[Receipt, ...]

    def to_json(self) -> dict[str, Any]:
        first = self.receipts[0]
        return {
            "dataset_sha256": self.dataset_sha256,
            "current": self.current,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "blob_key": self.blob_key,
            # The first receipt, flat: who brought this version in, and when.
            "site": first.site,
            "calling_ae": first.calling_ae,
            "received_at": first.received_at,
            "partition": first.partition,
            "offset": first.offset,
            "receipts": [receipt.to_json() for receipt in self.receipts],
        }


@dataclass(frozen=True, slots=True)
class Conflict:
    sop_instance_uid: str
    versions: tuple[Version, ...]

    @property
    def current(self) -> Version | None:
        """The version queries and retrievals show (None once rejected or deleted)."""
        return next((v for v in self.versions if v.current), None)

    def to_json(self) -> dict[str, Any]:
        current = self.current
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "study_instance_uid": current.study_instance_uid if current else "",
            "series_instance_uid": current.series_instance_uid if current else "",
            "current_sha256": current.dataset_sha256 if current else "",
            "versions": [version.to_json() for version in self.versions],
        }


@dataclass(frozen=True, slots=True)
class ConflictPage:
    conflicts: list[Conflict]
    offset: int
    limit: int
    #: More conflicts follow this page (ask again with offset + limit).
    more: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "conflicts": [conflict.to_json() for conflict in self.conflicts],
            "offset": self.offset,
            "limit": self.limit,
            "more": self.more,
        }


def check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be 1 to {MAX_LIMIT}, not {limit}")
    if offset < 0:
        raise Invalid(f"offset must be 0 or more, not {offset}")


def list_conflicts(
    index: ProjectionStore, *, limit: int = DEFAULT_LIMIT, offset: int = 0
) -> ConflictPage:
    """One page of conflicts, by SOP Instance UID; each with its versions in log order."""
    check_page(limit, offset)
    found = index.query(
        f"SELECT sop_instance_uid FROM {TABLE} GROUP BY sop_instance_uid"
        " HAVING uniqExact(dataset_sha256) > 1 ORDER BY sop_instance_uid"
        f" LIMIT {int(limit) + 1} OFFSET {int(offset)}"
    )
    uids = [str(row[0]) for row in found[:limit]]
    if not uids:
        return ConflictPage([], offset, limit)
    # Without FINAL (it costs more than the rows): group_conflicts drops a row
    # applied twice and not yet merged away.
    receipts = index.query_dicts(
        f"SELECT {_RECEIPT_COLUMNS} FROM {TABLE}"
        " WHERE sop_instance_uid IN {uids:Array(String)}"
        " ORDER BY sop_instance_uid, offset, partition",
        {"uids": uids},
    )
    current = index.query(
        "SELECT sop_instance_uid, dataset_sha256 FROM instance FINAL"
        " WHERE hidden = 0 AND sop_instance_uid IN {uids:Array(String)}",
        {"uids": uids},
    )
    conflicts = group_conflicts(receipts, {str(sop): str(sha) for sop, sha in current})
    return ConflictPage(conflicts, offset, limit, more=len(found) > limit)


def group_conflicts(receipts: list[dict[str, Any]], current: dict[str, str]) -> list[Conflict]:
    """Receipt rows (sorted by UID, then log order) -> conflicts; pure.

    `current` maps a UID to the dataset hash the instance table shows for it.
    A receipt seen twice (one event applied twice) counts once.
    """
    by_uid: dict[str, dict[str, list[dict[str, Any]]]] = {}
    seen: set[tuple[int, int]] = set()
    for row in receipts:
        where = (int(row["partition"]), int(row["offset"]))
        if where in seen:
            continue
        seen.add(where)
        versions = by_uid.setdefault(str(row["sop_instance_uid"]), {})
        versions.setdefault(str(row["dataset_sha256"]), []).append(row)
    return [
        Conflict(uid, tuple(_version(rows, current.get(uid)) for rows in versions.values()))
        for uid, versions in by_uid.items()
    ]


def _version(rows: list[dict[str, Any]], current_sha256: str | None) -> Version:
    first = rows[0]
    return Version(
        dataset_sha256=str(first["dataset_sha256"]),
        study_instance_uid=str(first["study_instance_uid"]),
        series_instance_uid=str(first["series_instance_uid"]),
        sop_class_uid=str(first["sop_class_uid"]),
        blob_key=str(first["blob_key"]),
        current=first["dataset_sha256"] == current_sha256,
        receipts=tuple(_receipt(row) for row in rows),
    )


def _receipt(row: dict[str, Any]) -> Receipt:
    return Receipt(
        site=str(row["site"]),
        node=str(row["node"]),
        protocol=str(row["protocol"]),
        calling_ae=str(row["calling_ae"]),
        called_ae=str(row["called_ae"]),
        peer=str(row["peer"]),
        received_at=iso_utc(row["occurred_at"]),
        partition=int(row["partition"]),
        offset=int(row["offset"]),
    )


def iso_utc(value: datetime | str) -> str:
    """A stored DateTime64 as ISO 8601 UTC with 'Z' (naive values are UTC).

    A front-end worker reads the index through its owner (infra/proxy_index.py),
    which sends datetimes as ISO text.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")
