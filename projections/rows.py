"""Event -> rows, as pure functions (Snuba style): no I/O, no clock, no state.

Applying the same event twice yields the same rows with the same version, and
ReplacingMergeTree keeps one of them: projections are idempotent by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from infra.ports import LogRecord
from schemas.events import (
    Envelope,
    InstanceStored,
    ReferencedSOP,
    StorageCommitmentReported,
    StorageCommitmentRequested,
)
from schemas.names import fold

Row = dict[str, Any]

# DICOM JSON keys of the attributes the level tables hold.
_PATIENT_NAME = "00100010"
_BIRTH_DATE = "00100030"
_BIRTH_TIME = "00100032"
_SEX = "00100040"
_CHARSET = "00080005"
_STUDY_DATE = "00080020"
_STUDY_TIME = "00080030"
_ACCESSION = "00080050"
_STUDY_ID = "00200010"
_REFERRING = "00080090"
_STUDY_DESCRIPTION = "00081030"
_MODALITY = "00080060"
_SERIES_NUMBER = "00200011"
_SERIES_DESCRIPTION = "0008103E"
_PPS_START_DATE = "00400244"
_PPS_START_TIME = "00400245"
_REQUEST_ATTRIBUTES = "00400275"
_SPS_ID = "00400009"
_REQUESTED_PROCEDURE_ID = "00401001"
_INSTANCE_NUMBER = "00200013"
_ROWS = "00280010"
_COLUMNS = "00280011"
_BITS_ALLOCATED = "00280100"
_NUMBER_OF_FRAMES = "00280008"


@dataclass
class Rows:
    """Rows for each table, in log order."""

    tables: dict[str, list[Row]] = field(default_factory=dict)

    def add(self, table: str, row: Row) -> None:
        self.tables.setdefault(table, []).append(row)


def values(meta: dict[str, Any], tag: str) -> list[Any]:
    element = meta.get(tag)
    if not isinstance(element, dict):
        return []
    found = element.get("Value")
    return found if isinstance(found, list) else []


def text(meta: dict[str, Any], tag: str) -> str:
    """First value as a string; multi-valued strings joined by backslash."""
    found = values(meta, tag)
    if not found:
        return ""
    if all(isinstance(v, str) for v in found):
        return "\\".join(found)
    first = found[0]
    return "" if first is None else str(first)


def integer(meta: dict[str, Any], tag: str) -> int | None:
    found = values(meta, tag)
    if not found or found[0] is None:
        return None
    try:
        return int(float(found[0]))
    except (TypeError, ValueError):
        return None


def person_name(meta: dict[str, Any], tag: str) -> str:
    """PN as one string: component groups joined by '=', trailing '=' dropped."""
    found = values(meta, tag)
    if not found or not isinstance(found[0], dict):
        return ""
    pn = found[0]
    groups = [pn.get("Alphabetic", ""), pn.get("Ideographic", ""), pn.get("Phonetic", "")]
    return "=".join(groups).rstrip("=")


#: Lower case without accents: what fuzzy matching compares.
normalise_name = fold


def normalise_time(tm: str) -> str:
    """TM as HHMMSS.FFFFFF (padded), so string order is time order."""
    tm = tm.strip().replace(":", "")
    if not tm:
        return ""
    whole, _, fraction = tm.partition(".")
    return f"{whole.ljust(6, '0')[:6]}.{fraction.ljust(6, '0')[:6]}"


def _request_attributes(meta: dict[str, Any]) -> str:
    items = []
    for item in values(meta, _REQUEST_ATTRIBUTES):
        if isinstance(item, dict):
            items.append(
                {
                    "ScheduledProcedureStepID": text(item, _SPS_ID),
                    "RequestedProcedureID": text(item, _REQUESTED_PROCEDURE_ID),
                }
            )
    return orjson.dumps(items).decode() if items else ""


def _received_at(occurred_at: str) -> datetime:
    return datetime.fromisoformat(occurred_at.replace("Z", "+00:00"))


def instance_stored_rows(
    event: InstanceStored, envelope: Envelope, record: LogRecord, metadata: dict[str, Any]
) -> Rows:
    """The rows one InstanceStored event contributes to every table.

    `metadata` is the event's metadata, or its sidecar's when the event
    carried none (the caller resolves sidecars; this function does no I/O).
    """
    m = metadata
    version = record.version
    name = person_name(m, _PATIENT_NAME)
    referring = person_name(m, _REFERRING)
    charset = text(m, _CHARSET)
    patient = {
        "patient_id": event.patient_id,
        "issuer_of_patient_id": event.issuer_of_patient_id,
        "patient_name": name,
        "patient_name_norm": normalise_name(name),
        "patient_birth_date": text(m, _BIRTH_DATE),
        "patient_birth_time": text(m, _BIRTH_TIME),
        "patient_sex": text(m, _SEX),
        "specific_character_set": charset,
        "version": version,
    }
    out = Rows()
    out.add("patient", patient)
    out.add(
        "study",
        {
            **{k: v for k, v in patient.items() if k != "version"},
            "study_instance_uid": event.study_instance_uid,
            "study_date": text(m, _STUDY_DATE),
            "study_time": normalise_time(text(m, _STUDY_TIME)),
            "accession_number": text(m, _ACCESSION),
            "study_id": text(m, _STUDY_ID),
            "referring_physician_name": referring,
            "referring_physician_name_norm": normalise_name(referring),
            "study_description": text(m, _STUDY_DESCRIPTION),
            "version": version,
        },
    )
    out.add(
        "series",
        {
            "series_instance_uid": event.series_instance_uid,
            "study_instance_uid": event.study_instance_uid,
            "modality": text(m, _MODALITY),
            "series_number": integer(m, _SERIES_NUMBER),
            "series_description": text(m, _SERIES_DESCRIPTION),
            "performed_procedure_step_start_date": text(m, _PPS_START_DATE),
            "performed_procedure_step_start_time": text(m, _PPS_START_TIME),
            "request_attributes": _request_attributes(m),
            "version": version,
        },
    )
    instance = _instance_row(event, envelope, m, version)
    out.add("instance", instance)
    out.add("instance_member", {key: instance[key] for key in MEMBER_COLUMNS})
    out.add(
        "receipt",
        {
            "partition": record.partition,
            "offset": record.offset,
            "event_id": envelope.event_id,
            "occurred_at": _received_at(envelope.occurred_at),
            "site": envelope.site,
            "node": envelope.node,
            "protocol": event.source.protocol,
            "calling_ae": event.source.calling_ae,
            "called_ae": event.source.called_ae,
            "peer": event.source.peer,
            "user": event.source.user,
            "sop_instance_uid": event.sop_instance_uid,
            "study_instance_uid": event.study_instance_uid,
            "dataset_sha256": event.blob.sha256,
            "blob_key": event.blob.key,
            "version": version,
        },
    )
    return out


#: instance_member's columns (schemas/ddl/005 and 007): where an instance is, and
#: what series and study /metadata return, ordered by study and series.
MEMBER_COLUMNS = (
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "instance_number",
    "metadata",
    "sidecar_key",
    "hidden",
    "version",
)


def _instance_row(
    event: InstanceStored, envelope: Envelope, m: dict[str, Any], version: int
) -> Row:
    return {
        "sop_instance_uid": event.sop_instance_uid,
        "sop_class_uid": event.sop_class_uid,
        "series_instance_uid": event.series_instance_uid,
        "study_instance_uid": event.study_instance_uid,
        "patient_id": event.patient_id,
        "issuer_of_patient_id": event.issuer_of_patient_id,
        "modality": text(m, _MODALITY),
        "instance_number": integer(m, _INSTANCE_NUMBER),
        "rows": integer(m, _ROWS),
        "columns": integer(m, _COLUMNS),
        "bits_allocated": integer(m, _BITS_ALLOCATED),
        "number_of_frames": integer(m, _NUMBER_OF_FRAMES),
        "transfer_syntax_uid": event.transfer_syntax_uid,
        "blob_key": event.blob.key,
        "blob_size": event.blob.size,
        "dataset_sha256": event.blob.sha256,
        "dataset_offset": event.blob.dataset_offset,
        "frames": orjson.dumps(event.frames).decode() if event.frames is not None else "",
        "frames_note": event.frames_note,
        "metadata": "" if event.sidecar else orjson.dumps(event.metadata).decode(),
        "sidecar_key": event.sidecar.key if event.sidecar else "",
        "received_at": _received_at(envelope.occurred_at),
        "hidden": 0,
        "version": version,
    }


#: States of a commitment request row (storage_commitment table).
REQUESTED = "REQUESTED"
REPORTED = "REPORTED"
UNDELIVERED = "UNDELIVERED"
ABSORBED = "ABSORBED"

_STATE_OF_DELIVERY = {
    "same-association": REPORTED,
    "new-association": REPORTED,
    "undelivered": UNDELIVERED,
    "absorbed": ABSORBED,
}


def _items_json(items: list[ReferencedSOP]) -> str:
    return orjson.dumps(items).decode()


def commitment_requested_rows(
    event: StorageCommitmentRequested, envelope: Envelope, record: LogRecord
) -> Rows:
    """The request's row: REQUESTED until the report answering it replaces it."""
    out = Rows()
    out.add(
        "storage_commitment",
        {
            "transaction_uid": event.transaction_uid,
            "request_event_id": envelope.event_id,
            "requester_ae": event.source.calling_ae,
            "called_ae": event.source.called_ae,
            "requester_peer": event.source.peer,
            "state": REQUESTED,
            "items": _items_json(event.items),
            "failed": "[]",
            "event_type_id": 0,
            "delivery": "",
            "destination": "",
            "detail": "",
            "request_partition": record.partition,
            "request_offset": record.offset,
            "occurred_at": _received_at(envelope.occurred_at),
            "version": record.version,
        },
    )
    return out


def commitment_reported_rows(
    event: StorageCommitmentReported, envelope: Envelope, record: LogRecord
) -> Rows:
    """The answered request's row, whole again: a replacing row carries every column."""
    out = Rows()
    out.add(
        "storage_commitment",
        {
            "transaction_uid": event.transaction_uid,
            "request_event_id": event.request_event_id,
            "requester_ae": event.requester.calling_ae,
            "called_ae": event.requester.called_ae,
            "requester_peer": event.requester.peer,
            "state": _STATE_OF_DELIVERY[event.delivery],
            "items": _items_json(event.items),
            "failed": orjson.dumps(event.failed).decode(),
            "event_type_id": event.event_type_id,
            "delivery": event.delivery,
            "destination": event.destination,
            "detail": event.detail,
            "request_partition": event.request_partition,
            "request_offset": event.request_offset,
            "occurred_at": _received_at(envelope.occurred_at),
            "version": record.version,
        },
    )
    return out


def rows_for(record: LogRecord, envelope: Envelope, metadata: dict[str, Any] | None) -> Rows:
    """Dispatch on event type; unknown types contribute no rows."""
    payload = envelope.payload
    if isinstance(payload, InstanceStored):
        return instance_stored_rows(payload, envelope, record, metadata or payload.metadata)
    if isinstance(payload, StorageCommitmentRequested):
        return commitment_requested_rows(payload, envelope, record)
    if isinstance(payload, StorageCommitmentReported):
        return commitment_reported_rows(payload, envelope, record)
    return Rows()
