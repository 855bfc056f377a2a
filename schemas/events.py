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
    #: The frame table (`frames`, then None here) as a JSON blob, when it would
    #: make the event too big for the log (Kafka's 1 MB record: ~47k frames).
    frames_sidecar: BlobRef | None = None


@dataclass(frozen=True, slots=True)
class ReferencedSOP:
    """One item of a Referenced SOP Sequence (0008,1199): class and instance."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class FailedSOP:
    """One item of a Failed SOP Sequence (0008,1198), with its Failure Reason (0008,1197)."""

    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int


#: How a commitment result reached (or did not reach) the requester:
#: on the N-ACTION's own association, on one Chronicle opened to the
#: requester's configured address, not at all (every attempt failed), or
#: not separately: the request repeated a transaction still pending and that
#: transaction's one report answers it.
Delivery = Literal["same-association", "new-association", "undelivered", "absorbed"]


@dataclass(frozen=True, slots=True)
class StorageCommitmentRequested:
    """A Storage Commitment Push Model N-ACTION (PS3.4 J.3.2) was received and accepted.

    Keyed by the Transaction UID (a request spans studies): the request and
    its report share a partition, so the report always follows its request.
    """

    TYPE = "StorageCommitmentRequested"
    VERSION = 1

    transaction_uid: str
    items: list[ReferencedSOP]
    #: The requester: protocol DIMSE, calling/called AE titles, peer address.
    source: Source
    #: The log end (partition, next offset) seen just before this request was
    #: appended: the decision waits until projections cover it (read-your-writes).
    log_end: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class StorageCommitmentReported:
    """The result of one commitment request was decided (and sent, unless `delivery` says not).

    Committed items are `items` not listed in `failed`. `event_type_id` is the
    N-EVENT-REPORT Event Type ID: 1 all committed, 2 some failed, 0 nothing
    sent of its own (delivery "absorbed").
    """

    TYPE = "StorageCommitmentReported"
    VERSION = 1

    transaction_uid: str
    #: The StorageCommitmentRequested event this answers, and where it sits.
    request_event_id: str
    request_partition: int
    request_offset: int
    requester: Source
    items: list[ReferencedSOP]
    failed: list[FailedSOP]
    event_type_id: int
    delivery: Delivery
    #: Where it went: "TITLE@host:port" (new association) or the peer's address.
    destination: str = ""
    attempts: int = 0
    #: Why it was not delivered, or which request answers an absorbed one.
    detail: str = ""


EVENT_TYPES: dict[str, type[Any]] = {
    InstanceStored.TYPE: InstanceStored,
    StorageCommitmentRequested.TYPE: StorageCommitmentRequested,
    StorageCommitmentReported.TYPE: StorageCommitmentReported,
}


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
