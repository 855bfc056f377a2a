"""Compact JSON encoding of envelopes, with schema versions and upcasters.

The encoded form is the public record (the log is the truth), so it stays
plain JSON: the published schemas in schemas/jsonschema describe it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from schemas.events import (
    EVENT_TYPES,
    BlobRef,
    Envelope,
    FailedSOP,
    InstanceStored,
    ReferencedSOP,
    Source,
    StorageCommitmentReported,
    StorageCommitmentRequested,
)

#: (type, from_version) -> function turning a payload dict of that version
#: into the next version's dict. Decoding applies them until current.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


class DecodeError(ValueError):
    """The bytes are not an event this code can read."""


def encode(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope)


def _instance_stored(p: dict[str, Any]) -> InstanceStored:
    frames = p.get("frames")
    sidecar = p.get("sidecar")
    frames_sidecar = p.get("frames_sidecar")
    return InstanceStored(
        sop_class_uid=p["sop_class_uid"],
        sop_instance_uid=p["sop_instance_uid"],
        series_instance_uid=p["series_instance_uid"],
        study_instance_uid=p["study_instance_uid"],
        patient_id=p["patient_id"],
        issuer_of_patient_id=p["issuer_of_patient_id"],
        transfer_syntax_uid=p["transfer_syntax_uid"],
        blob=BlobRef(**p["blob"]),
        source=Source(**p["source"]),
        metadata=p["metadata"],
        frames=[[(int(o), int(n)) for o, n in f] for f in frames] if frames is not None else None,
        frames_note=p.get("frames_note", ""),
        sidecar=BlobRef(**sidecar) if sidecar else None,
        frames_sidecar=BlobRef(**frames_sidecar) if frames_sidecar else None,
    )


def _referenced(items: list[dict[str, Any]]) -> list[ReferencedSOP]:
    return [ReferencedSOP(i["sop_class_uid"], i["sop_instance_uid"]) for i in items]


def _commitment_requested(p: dict[str, Any]) -> StorageCommitmentRequested:
    return StorageCommitmentRequested(
        transaction_uid=p["transaction_uid"],
        items=_referenced(p["items"]),
        source=Source(**p["source"]),
        log_end=[(int(part), int(offset)) for part, offset in p["log_end"]],
    )


def _commitment_reported(p: dict[str, Any]) -> StorageCommitmentReported:
    return StorageCommitmentReported(
        transaction_uid=p["transaction_uid"],
        request_event_id=p["request_event_id"],
        request_partition=int(p["request_partition"]),
        request_offset=int(p["request_offset"]),
        requester=Source(**p["requester"]),
        items=_referenced(p["items"]),
        failed=[
            FailedSOP(f["sop_class_uid"], f["sop_instance_uid"], int(f["failure_reason"]))
            for f in p["failed"]
        ],
        event_type_id=int(p["event_type_id"]),
        delivery=p["delivery"],
        destination=p.get("destination", ""),
        attempts=int(p.get("attempts", 0)),
        detail=p.get("detail", ""),
    )


_PAYLOADS: dict[str, Callable[[dict[str, Any]], Any]] = {
    InstanceStored.TYPE: _instance_stored,
    StorageCommitmentRequested.TYPE: _commitment_requested,
    StorageCommitmentReported.TYPE: _commitment_reported,
}

#: What every event `encode` writes starts with: the envelope's fields go in
#: declaration order, `type` first (`type_prefix` for one type).
ENCODED_PREFIX = b'{"type":"'


def type_prefix(type_: str) -> bytes:
    """What an event of this type starts with, as `encode` writes it."""
    return ENCODED_PREFIX + type_.encode("ascii") + b'"'


def peek_type(data: bytes) -> str:
    """The event type of encoded bytes without decoding the payload.

    A follower interested in a few types (a reactor) skips the rest cheaply;
    bytes not in the shape `encode` writes are fully decoded instead.
    """
    if data.startswith(ENCODED_PREFIX):
        end = data.find(b'"', len(ENCODED_PREFIX))
        if end > 0:
            return data[len(ENCODED_PREFIX) : end].decode("ascii", "replace")
    return decode(data).type


def upcast(type_: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    current = EVENT_TYPES[type_].VERSION
    while version < current:
        payload = UPCASTERS[(type_, version)](payload)
        version += 1
    return payload


def decode(data: bytes) -> Envelope:
    try:
        raw = orjson.loads(data)
        type_ = raw["type"]
        payload = upcast(type_, int(raw["schema_version"]), raw["payload"])
        return Envelope(
            type=type_,
            key=raw["key"],
            payload=_PAYLOADS[type_](payload),
            site=raw["site"],
            node=raw["node"],
            schema_version=EVENT_TYPES[type_].VERSION,
            event_id=raw["event_id"],
            occurred_at=raw["occurred_at"],
        )
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise DecodeError(f"not a readable Chronicle event: {exc}") from exc
