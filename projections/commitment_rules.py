"""Storage commitment decisions (PS3.4 Annex J) and the small types around them.

A request's verdict given what is known of its transaction (pure), each
item's Failure Reason (pure, given what is held), the one read that
gathers what is held (`decide`), blob verification, where a report may go
and how hard to try. The reactor (projections/commitment.py) follows the
log, sends and records around them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from infra.errors import ChronicleError, NotFound, Unavailable
from infra.ports import BlobStore, Position, ProjectionStore
from infra.settings import RemoteAE
from projections.rows import ABSORBED, REPORTED, REQUESTED
from schemas.events import Delivery, FailedSOP, ReferencedSOP, Source

log = logging.getLogger("chronicle.commitment")

# Failure Reason (0008,1197) values, PS3.3 C.14.1.1.
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_TRANSACTION_UID = 0x0131
RESOURCE_LIMITATION = 0x0213

_HELD = (
    "SELECT sop_instance_uid, sop_class_uid, blob_key, dataset_sha256, dataset_offset"
    " FROM instance FINAL WHERE hidden = 0 AND sop_instance_uid IN {uids:Array(String)}"
)


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    """How hard to try to deliver a report (defaults: 5 tries over ~30 s).

    `attempts` rounds, the first at once, the next after `first_delay`
    seconds, multiplied by `backoff` each time up to `max_delay`; each round
    tries any open association of the requester not tried yet, then one new
    association to its configured address. `decision_wait` bounds the wait
    for projections before a decision (items not found meanwhile fail with
    0x0213, not 0x0112). `workers` requests are decided and sent at once.
    """

    attempts: int = 5
    first_delay: float = 2.0
    backoff: float = 2.0
    max_delay: float = 60.0
    decision_wait: float = 30.0
    workers: int = 4

    def delays(self) -> list[float]:
        """Seconds to wait before each new-association attempt: 0, d, d*b, d*b*b... capped."""
        later = [
            min(self.first_delay * self.backoff**n, self.max_delay)
            for n in range(max(1, self.attempts) - 1)
        ]
        return [0.0, *later]


@dataclass(frozen=True, slots=True)
class Report:
    """One N-EVENT-REPORT's content: the items and those that failed."""

    transaction_uid: str
    items: list[ReferencedSOP]
    failed: list[FailedSOP]

    @property
    def event_type_id(self) -> int:
        return 2 if self.failed else 1

    @property
    def committed(self) -> list[ReferencedSOP]:
        failed = {(f.sop_class_uid, f.sop_instance_uid) for f in self.failed}
        return [i for i in self.items if (i.sop_class_uid, i.sop_instance_uid) not in failed]


class DeliveryFailed(Exception):
    """The report did not reach the requester this time (refused, no answer, failure status)."""


class Courier(Protocol):
    """Sends reports over DIMSE (api.dimse.commitment.DimseCourier)."""

    def is_open(self, association: Any) -> bool: ...

    def send_on(self, association: Any, report: Report) -> None: ...

    def send_to(self, remote: RemoteAE, report: Report) -> None: ...


class Follows(Protocol):
    """The projector, as far as read-your-writes goes."""

    def wait(self, target: Position, timeout: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """What is known of one request of a transaction."""

    request_event_id: str
    state: str
    request_offset: int
    #: Offset of the report that closed it; None while REQUESTED.
    closed_at: int | None = None


Verdict = Literal["new", "duplicate", "absorbed", "done"]


def classify(event_id: str, offset: int, entries: Iterable[Entry]) -> tuple[Verdict, str]:
    """What to do with the request `event_id` at `offset`, given its transaction's requests.

    Offsets compare because a transaction's events share a partition (same key).
    Returns the verdict and, for "absorbed", the request that answers it.
    """
    known = list(entries)
    own = next((e for e in known if e.request_event_id == event_id), None)
    if own is not None and own.state != REQUESTED:
        return "done", ""
    others = [e for e in known if e.request_event_id != event_id]
    if any(e.state == REPORTED and (e.closed_at or 0) < offset for e in others):
        return "duplicate", ""
    pending = [
        e
        for e in others
        if e.request_offset < offset and (e.closed_at is None or e.closed_at > offset)
    ]
    if pending:
        primary = min(pending, key=lambda e: (e.state == ABSORBED, e.request_offset))
        return "absorbed", primary.request_event_id
    return "new", ""


@dataclass(frozen=True, slots=True)
class HeldInstance:
    sop_class_uid: str
    blob_key: str
    dataset_sha256: str
    dataset_offset: int


def judge_item(
    item: ReferencedSOP,
    held: HeldInstance | None,
    *,
    supported: bool,
    fresh: bool,
    verify: Callable[[HeldInstance], int | None],
) -> int | None:
    """The Failure Reason for one item, or None when it is committed."""
    if not supported:
        return SOP_CLASS_NOT_SUPPORTED
    if held is None:
        # Not projected yet is not "no such object" while projections lag.
        return NO_SUCH_OBJECT_INSTANCE if fresh else RESOURCE_LIMITATION
    if held.sop_class_uid != item.sop_class_uid:
        return CLASS_INSTANCE_CONFLICT
    return verify(held)


def dataset_sha256(blobs: BlobStore, key: str, offset: int) -> str:
    """sha256 of blob[offset:], the dataset after the File Meta, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with blobs.get(key) as fh:
        fh.seek(offset)
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_blob(blobs: BlobStore, held: HeldInstance) -> int | None:
    """None when the blob is there with its recorded hash, else a Failure Reason."""
    try:
        digest = dataset_sha256(blobs, held.blob_key, held.dataset_offset)
    except NotFound:
        log.error("commitment: blob %s is missing", held.blob_key)
        return PROCESSING_FAILURE
    except Unavailable as exc:
        log.warning("commitment: blob store unavailable: %s", exc)
        return RESOURCE_LIMITATION
    except (ChronicleError, OSError) as exc:
        log.error("commitment: blob %s unreadable: %s", held.blob_key, exc)
        return PROCESSING_FAILURE
    if digest != held.dataset_sha256:
        log.error("commitment: blob %s does not match its recorded sha256", held.blob_key)
        return PROCESSING_FAILURE
    return None


def decide(
    index: ProjectionStore,
    blobs: BlobStore,
    items: list[ReferencedSOP],
    *,
    fresh: bool,
    is_supported: Callable[[str], bool],
) -> list[FailedSOP]:
    """The failed items of a request, read from the live projection and the blobs.

    `fresh` says whether projections covered the log end the request saw.
    Each blob is hashed once however many items name its instance.
    """
    uids = sorted({i.sop_instance_uid for i in items})
    held = {
        str(uid): HeldInstance(str(cls), str(key), str(sha), int(offset))
        for uid, cls, key, sha, offset in index.query(_HELD, {"uids": uids})
    }
    verdicts: dict[str, int | None] = {}

    def verify(instance: HeldInstance) -> int | None:
        if instance.blob_key not in verdicts:
            verdicts[instance.blob_key] = verify_blob(blobs, instance)
        return verdicts[instance.blob_key]

    failed = []
    for item in items:
        reason = judge_item(
            item,
            held.get(item.sop_instance_uid),
            supported=is_supported(item.sop_class_uid),
            fresh=fresh,
            verify=verify,
        )
        if reason is not None:
            failed.append(FailedSOP(item.sop_class_uid, item.sop_instance_uid, reason))
    return failed


def duplicate_failures(items: list[ReferencedSOP]) -> list[FailedSOP]:
    """Every item fails with 0x0131: the Transaction UID was already reported."""
    return [
        FailedSOP(i.sop_class_uid, i.sop_instance_uid, DUPLICATE_TRANSACTION_UID) for i in items
    ]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a report went: what `StorageCommitmentReported` records."""

    delivery: Delivery
    destination: str
    attempts: int
    detail: str


def deliver(
    courier: Courier,
    report: Report,
    *,
    open_association: Callable[[], Any],
    remotes: list[RemoteAE],
    requester: Source,
    policy: ReportPolicy,
    stop: threading.Event,
) -> Outcome | None:
    """Send on an open association of the requester, else to its addresses with back-off.

    `open_association` gives an open association not tried yet (None when
    there is none): before every new-association attempt, so an SCU that came
    back meanwhile gets the report there. None when `stop` is set meanwhile.
    """
    attempts, errors = 0, []
    for n, delay in enumerate(policy.delays()):
        if delay and stop.wait(delay):
            return None
        while (association := open_association()) is not None:
            attempts += 1
            try:
                courier.send_on(association, report)
                return Outcome("same-association", requester.peer, attempts, "")
            except DeliveryFailed as exc:
                errors.append(f"same association: {exc}")
        if not remotes:
            errors.append(f"no configured address for AE {requester.calling_ae!r}")
            return Outcome("undelivered", "", attempts, "; ".join(errors))
        remote = remotes[n % len(remotes)]
        attempts += 1
        try:
            courier.send_to(remote, report)
            return Outcome("new-association", str(remote), attempts, "")
        except DeliveryFailed as exc:
            errors.append(f"{remote}: {exc}")
            log.warning("commitment %s: %s: %s", report.transaction_uid, remote, exc)
    return Outcome("undelivered", str(remotes[0]), attempts, "; ".join(errors[-3:]))


def addresses(remotes: list[RemoteAE], calling_ae: str, peer: str) -> list[RemoteAE]:
    """The configured addresses of the requester, the one on its peer host first."""
    mine = [r for r in remotes if r.title.strip() == calling_ae.strip()]
    host = peer.rsplit(":", 1)[0].strip("[]")
    return sorted(mine, key=lambda r: r.host != host)
