"""What is stored where: instance rows for retrieval (WADO-RS, WADO-URI, C-MOVE, C-GET).

Reads the live `instance` projection (FINAL, hidden = 0) with server-side
parameters only; UIDs are validated by the caller before they get here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from infra.ports import BlobStore, ProjectionStore

FrameRanges = list[tuple[int, int]]

_BULK_URI = re.compile(r"^bulkdata/([0-9]{1,15})-([0-9]{1,15})$")

INSTANCE_COLUMNS = (
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "blob_key",
    "blob_size",
    "dataset_offset",
    "dataset_sha256",
    "frames",
    "metadata",
    "sidecar_key",
    "number_of_frames",
    "instance_number",
)

#: What /metadata needs: the URL's UIDs and the stored DICOM JSON, read from
#: instance_member (ordered by study and series; migration 007) rather than the
#: instance table, where a series' rows sit in as many granules as it has
#: instances: a 100-instance series at 1M instances ~14 -> ~7 ms of chDB.
METADATA_COLUMNS = (
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "metadata",
    "sidecar_key",
)
_ORDER = " ORDER BY series_instance_uid, instance_number, sop_instance_uid"


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """One stored instance, as retrieval needs it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    blob_size: int
    #: Where the dataset (after File Meta) starts in the blob.
    dataset_offset: int
    dataset_sha256: str
    #: Per frame, its fragments' (offset, length) in the blob; None when the
    #: frames cannot be given as ranges (see the projection's frames_note).
    frames: list[FrameRanges] | None
    #: DICOM JSON text with relative BulkDataURIs; '' when in a sidecar blob.
    metadata_json: str
    sidecar_key: str
    number_of_frames: int | None
    instance_number: int | None


def list_instances(
    index: ProjectionStore,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[InstanceRow]:
    """Live instances of a study (optionally one series / one instance), in a stable order."""
    place, params = _place(study_uid, series_uid, sop_instance_uid)
    # The candidates' SOP Instance UIDs first, by a key range of instance_member
    # (ordered by study and series; migration 005); the instance table then reads
    # only those primary keys, and the outer filter decides on the newest version (a stale
    # candidate, since moved elsewhere, drops out). With FINAL every column of
    # every granule a filter selects is read, and a study's instances are spread
    # over the instance table (ordered by SOP Instance UID).
    matching = f"SELECT sop_instance_uid FROM instance_member WHERE {place}"
    # FINAL before WHERE: a later event (rejection, update) replaces the row, and
    # the filter must see the replacement, not an older version.
    select = f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM instance FINAL"
    sql = f"{select} WHERE hidden = 0 AND {place} AND sop_instance_uid IN ({matching}){_ORDER}"
    return [_row(record) for record in index.query_dicts(sql, params)]


def list_metadata(
    index: ProjectionStore,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[InstanceRow]:
    """The same instances as `list_instances` with only METADATA_COLUMNS filled
    (the rows' other fields empty), by one key range of instance_member
    (migration 007): its live rows are the live instances, each with its
    metadata, because the places an instance left hold a newer tombstone
    (projections.members)."""
    place, params = _place(study_uid, series_uid, sop_instance_uid)
    select = f"SELECT {', '.join(METADATA_COLUMNS)} FROM instance_member FINAL"
    sql = f"{select} WHERE hidden = 0 AND {place}{_ORDER}"
    return [_row(record) for record in index.query_dicts(sql, params)]


def prepared_metadata(
    index: ProjectionStore, study_uid: str, series_uid: str | None = None
) -> bytes | None:
    """A series' or study's /metadata JSON array from the documents the
    projector prepared (migration 008, `projections.documents`; BulkDataURI
    bases left as BASE_MARK), or None when a series lacks one or a newer batch
    touched it (a stale mark): read list_metadata then. A study's is its live
    series' documents in series order, which is /metadata's order too."""
    place, params = _place(study_uid, series_uid, None)
    if series_uid is not None:
        sql = f"SELECT document FROM series_metadata FINAL WHERE {place}"
    else:
        sql = _STUDY_DOCUMENTS
    rows = index.query_dicts(sql, params)
    found = [str(row["document"]) for row in rows]
    if not found or not all(found):
        return None
    if len(found) == 1:
        return found[0].encode()
    return ("[" + ",".join(document[1:-1] for document in found) + "]").encode()


#: Every live series of the study (from instance_member's UIDs, not its
#: metadata) with its document; '' where it has none.
_STUDY_DOCUMENTS = (
    "SELECT m.series_instance_uid AS series, d.document AS document FROM"
    " (SELECT DISTINCT series_instance_uid FROM instance_member FINAL"
    "  WHERE study_instance_uid = {study:String} AND hidden = 0) AS m"
    " LEFT JOIN (SELECT series_instance_uid, document FROM series_metadata FINAL"
    "  WHERE study_instance_uid = {study:String}) AS d"
    " ON m.series_instance_uid = d.series_instance_uid ORDER BY series"
)


#: list_instances or list_metadata.
Lister = Callable[[ProjectionStore, str, str | None, str | None], list[InstanceRow]]


def _place(
    study_uid: str, series_uid: str | None, sop_instance_uid: str | None
) -> tuple[str, dict[str, Any]]:
    """The condition naming a study / series / instance, and its parameters."""
    place = "study_instance_uid = {study:String}"
    params: dict[str, Any] = {"study": study_uid}
    if series_uid is not None:
        place += " AND series_instance_uid = {series:String}"
        params["series"] = series_uid
    if sop_instance_uid is not None:
        place += " AND sop_instance_uid = {sop:String}"
        params["sop"] = sop_instance_uid
    return place, params


def _row(record: dict[str, Any]) -> InstanceRow:
    get = record.get
    return InstanceRow(
        study_instance_uid=record["study_instance_uid"],
        series_instance_uid=record["series_instance_uid"],
        sop_instance_uid=record["sop_instance_uid"],
        sop_class_uid=get("sop_class_uid", ""),
        transfer_syntax_uid=get("transfer_syntax_uid", ""),
        blob_key=get("blob_key", ""),
        blob_size=int(get("blob_size", 0)),
        dataset_offset=int(get("dataset_offset", 0)),
        dataset_sha256=get("dataset_sha256", ""),
        frames=parse_frames(get("frames", "")),
        metadata_json=get("metadata", ""),
        sidecar_key=get("sidecar_key", ""),
        number_of_frames=_optional_int(get("number_of_frames")),
        instance_number=_optional_int(get("instance_number")),
    )


def parse_frames(text: str) -> list[FrameRanges] | None:
    """The frames column: JSON [[[offset, length], ...], ...] or '' (unknown)."""
    if not text:
        return None
    frames: list[list[list[int]]] = orjson.loads(text)
    return [[(int(offset), int(length)) for offset, length in frame] for frame in frames]


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def metadata_bytes(row: InstanceRow, blobs: BlobStore) -> bytes:
    """The instance's DICOM JSON as stored (relative BulkDataURIs), as UTF-8 bytes."""
    if row.metadata_json:
        return row.metadata_json.encode()
    if row.sidecar_key:
        stream = blobs.get(row.sidecar_key)
        try:
            return stream.read()
        finally:
            stream.close()
    return b"{}"


def load_metadata(row: InstanceRow, blobs: BlobStore) -> dict[str, Any]:
    """The instance's DICOM JSON object (relative BulkDataURIs)."""
    meta: dict[str, Any] = orjson.loads(metadata_bytes(row, blobs))
    return meta


def bulk_ranges(meta: Any, frames: list[FrameRanges] | None) -> dict[tuple[int, int], str]:
    """Every blob (offset, length) the metadata's BulkDataURIs or the frame table name -> VR.

    Only these are served as bulk data: the blob holds the whole file, and
    arbitrary ranges of it are not a resource anyone was given. Frame
    fragments map to '' (bytes served as they are).
    """
    found: dict[tuple[int, int], str] = dict.fromkeys(
        (fragment for frame in frames or [] for fragment in frame), ""
    )
    stack = [meta]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            uri = node.get("BulkDataURI")
            match = _BULK_URI.match(uri) if isinstance(uri, str) else None
            if match:
                found[(int(match[1]), int(match[2]))] = str(node.get("vr", ""))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
