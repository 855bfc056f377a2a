"""The event envelope and the event types (DESIGN.md, Events).

Events are immutable facts. Payloads are plain, JSON-ready dataclasses so
the codec can encode them with orjson and publish a JSON Schema per version.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Protocol_ = Literal["DIMSE", "STOW", "IMPORT"]


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where an instance's bytes are: the blob key, its dataset sha256 and size.

    `sha256` is the hash of the dataset bytes after the File Meta (the identity
    used for duplicate detection); `dataset_offset` is where those bytes start
    inside the blob, so `sha256(blob[dataset_offset:]) == sha256`.
    """

    key: str
    sha256: str
    size: int
    dataset_offset: int


@dataclass(frozen=True, slots=True)
class Source:
    """The route an instance came by: who sent it, how, from where."""

    protocol: Protocol_
    calling_ae: str = ""
    called_ae: str = ""
    peer: str = ""
    user: str = ""


#: One frame = the byte ranges (offset, length) in the blob that hold it:
#: one range for native frames and most encapsulated ones, several when a
#: frame spans fragments.
FrameRanges = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class InstanceStored:
    """An instance was received and kept (blob durable before this event)."""

    TYPE = "InstanceStored"
    VERSION = 1

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    transfer_syntax_uid: str
    blob: BlobRef
    source: Source
    #: DICOM JSON (PS3.18 F) of the dataset, bulk elements as relative
    #: BulkDataURI "bulkdata/{offset}-{length}" into the blob. Empty when
    #: the metadata lives in `sidecar` (too big for an event).
    metadata: dict[str, Any]
    frames: list[FrameRanges] | None = None
    #: Why frames could not be given as ranges (deflated, big endian...).
    frames_note: str = ""
    sidecar: BlobRef | None = None


EVENT_TYPES: dict[str, type[Any]] = {InstanceStored.TYPE: InstanceStored}


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The one envelope every event travels in."""

    type: str
    key: str
    payload: Any
    site: str = "local"
    node: str = field(default_factory=lambda: os.uname().nodename)
    schema_version: int = 1
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: str = field(default_factory=_utc_now)

    @classmethod
    def of(cls, payload: Any, key: str, *, site: str = "local", node: str = "") -> Envelope:
        return cls(
            type=payload.TYPE,
            key=key,
            payload=payload,
            site=site,
            node=node or os.uname().nodename,
            schema_version=payload.VERSION,
        )
