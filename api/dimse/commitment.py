"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

SOP class 1.2.840.10008.1.20.1 on its well-known instance 1.2.840.10008.1.20.1.1,
every transfer syntax Q/R accepts. The N-ACTION handler validates the
request, appends a `StorageCommitmentRequested` event (keyed by the
Transaction UID: a request spans studies, and the key keeps the request and
its report in one partition, in order) and answers success at once; the
reactor (projections/commitment.py) decides and reports. N-ACTION statuses:

- 0x0000 the request is recorded (the decision comes by N-EVENT-REPORT);
- 0x0112 Requested SOP Instance UID is not the well-known instance;
- 0x0118 Requested SOP Class UID is not Storage Commitment Push Model;
- 0x0123 Action Type ID is not 1 (request storage commitment);
- 0x0115 Action Information unreadable, Transaction UID (0008,1195) or the
  Referenced SOP Sequence (0008,1199) missing or empty, or an item without
  a valid Referenced SOP Class / Instance UID (Error Comment says which);
- 0x0213 more than `MAX_ITEMS` references in one request (the event must
  stay well under 1 MB), or the log cannot take the event now.

Reports (`DimseCourier`): on the N-ACTION's association while it is open
and has no request of the SCU waiting (pynetdicom takes the next message as
the response, so a request crossing the report on the wire would abort the
association; one already queued sends the report elsewhere instead);
otherwise Chronicle opens one to the requester's configured address
(--remote-ae, by calling AE title) proposing Storage Commitment Push Model
with SCP/SCU role selection for the SCP role (scu_role=False,
scp_role=True), Explicit and Implicit VR Little Endian. The event carries
the Transaction UID, Retrieve AE Title (ours), the Referenced SOP Sequence
(committed items, when any) and, for event type 2, the Failed SOP Sequence
with Failure Reasons.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt

from infra.errors import ChronicleError, Invalid
from infra.ports import EventLog
from infra.settings import RemoteAE, Settings
from projections.commitment_rules import DeliveryFailed, Report
from schemas import codec
from schemas.events import Envelope, ReferencedSOP, StorageCommitmentRequested
from schemas.uids import check_uid

from .ae import query_transfer_syntaxes
from .store import failure, source_of

if TYPE_CHECKING:
    from projections.commitment import CommitmentReactor

log = logging.getLogger("chronicle.dimse")

STORAGE_COMMITMENT = UID("1.2.840.10008.1.20.1")
WELL_KNOWN_INSTANCE = UID("1.2.840.10008.1.20.1.1")
#: Action Type ID / Event Type IDs (PS3.4 J.3.2, J.3.3).
REQUEST_COMMITMENT = 1
#: References accepted in one N-ACTION: ~170 bytes each keeps the event < 1 MB.
MAX_ITEMS = 4000

SUCCESS = 0x0000
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_ACTION = 0x0123
RESOURCE_LIMITATION = 0x0213

REPORT_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class CommitmentArchive(Protocol):
    """The parts of `api.wiring.Archive` the N-ACTION handler uses."""

    @property
    def settings(self) -> Settings: ...

    @property
    def log(self) -> EventLog: ...

    @property
    def commitment(self) -> CommitmentReactor | None: ...


def parse_request(info: Dataset, *, max_items: int = MAX_ITEMS) -> tuple[str, list[ReferencedSOP]]:
    """Transaction UID and references of an Action Information; raises Invalid(status)."""
    transaction = check_uid(info.get("TransactionUID"), "Transaction UID")
    sequence = info.get("ReferencedSOPSequence")
    if not sequence:
        raise Invalid("Referenced SOP Sequence is missing or empty", INVALID_ARGUMENT_VALUE)
    if len(sequence) > max_items:
        raise Invalid(f"more than {max_items} references in one request", RESOURCE_LIMITATION)
    items = [
        ReferencedSOP(
            check_uid(item.get("ReferencedSOPClassUID"), f"item {n} SOP Class UID"),
            check_uid(item.get("ReferencedSOPInstanceUID"), f"item {n} SOP Instance UID"),
        )
        for n, item in enumerate(sequence, start=1)
    ]
    return transaction, items


class CommitmentHandler:
    """EVT_N_ACTION handler: record the request, answer at once."""

    def __init__(self, archive: CommitmentArchive) -> None:
        self._archive = archive

    def __call__(self, event: Any) -> tuple[Dataset | int, None]:
        request = event.request
        calling = str(event.assoc.requestor.ae_title).strip()
        if str(request.RequestedSOPClassUID) != STORAGE_COMMITMENT:
            return failure(NO_SUCH_SOP_CLASS, "not Storage Commitment Push Model"), None
        if str(request.RequestedSOPInstanceUID) != WELL_KNOWN_INSTANCE:
            return failure(NO_SUCH_SOP_INSTANCE, "not the well-known instance"), None
        if request.ActionTypeID != REQUEST_COMMITMENT:
            return failure(NO_SUCH_ACTION, f"no action type {request.ActionTypeID}"), None
        try:
            transaction_uid, items = parse_request(event.action_information)
        except Invalid as exc:
            log.warning("N-ACTION from %s refused 0x%04X: %s", calling, exc.status, exc)
            return failure(_argument_status(exc), str(exc)), None
        except Exception as exc:  # an undecodable dataset surfaces on first access
            log.warning("N-ACTION from %s: unreadable Action Information: %s", calling, exc)
            return failure(INVALID_ARGUMENT_VALUE, "unreadable Action Information"), None
        return self._record(transaction_uid, items, event.assoc, calling)

    def _record(
        self, transaction_uid: str, items: list[ReferencedSOP], assoc: Any, calling: str
    ) -> tuple[Dataset | int, None]:
        archive, settings = self._archive, self._archive.settings
        reactor = archive.commitment
        event_id = ""
        try:
            # The log end before this request: what the decision must see.
            log_end = sorted(archive.log.end().items())
            request = StorageCommitmentRequested(transaction_uid, items, source_of(assoc), log_end)
            envelope = Envelope.of(
                request, key=transaction_uid, site=settings.site, node=settings.node
            )
            event_id = envelope.event_id
            if reactor is not None:
                # Before the append: the reactor may pick the event up at once.
                reactor.watch(event_id, assoc)
            archive.log.append([(envelope.key, codec.encode(envelope))])
        except ChronicleError as exc:
            if reactor is not None:
                reactor.unwatch(event_id)
            log.error("N-ACTION from %s not recorded (0x0213): %s", calling, exc)
            return failure(RESOURCE_LIMITATION, f"cannot record the request: {exc}"), None
        if reactor is not None:
            reactor.poke()
        log.info(
            "storage commitment %s requested by %s for %d instances",
            transaction_uid,
            calling,
            len(items),
        )
        return SUCCESS, None


def _argument_status(exc: Invalid) -> int:
    # check_uid raises with the generic 0xC000: for N-ACTION that is 0x0115.
    return RESOURCE_LIMITATION if exc.status == RESOURCE_LIMITATION else INVALID_ARGUMENT_VALUE


def register(ae: AE, archive: Any) -> list[tuple[Any, Any]]:
    """Accept Storage Commitment Push Model (SCP) and handle its N-ACTION."""
    ae.add_supported_context(STORAGE_COMMITMENT, query_transfer_syntaxes())
    return [(evt.EVT_N_ACTION, CommitmentHandler(archive))]


# ------------------------------------------------------------------- reports


def report_dataset(report: Report, retrieve_ae: str) -> Dataset:
    """Event Information of the N-EVENT-REPORT (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    ds.RetrieveAETitle = retrieve_ae
    committed = report.committed
    if committed:
        ds.ReferencedSOPSequence = Sequence(
            [_item(i.sop_class_uid, i.sop_instance_uid) for i in committed]
        )
    if report.failed:
        failed = []
        for f in report.failed:
            item = _item(f.sop_class_uid, f.sop_instance_uid)
            item.FailureReason = f.failure_reason
            failed.append(item)
        ds.FailedSOPSequence = Sequence(failed)
    return ds


def _item(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


class DimseCourier:
    """Sends reports with pynetdicom, on an open association or a new one."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def is_open(self, association: Any) -> bool:
        return bool(getattr(association, "is_established", False))

    def send_on(self, association: Any, report: Report) -> None:
        # pynetdicom takes the next message on the association as the
        # response: a request the SCU already sent would be taken for it
        # (and the association aborted). Waiting requests send us elsewhere.
        if association.dimse.peek_msg() != (None, None):
            raise DeliveryFailed("the association has a request waiting")
        self._send(association, report)

    def send_to(self, remote: RemoteAE, report: Report) -> None:
        settings = self._settings
        ae = AE(ae_title=settings.ae_title)
        ae.add_requested_context(
            STORAGE_COMMITMENT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        ae.acse_timeout = settings.acse_timeout
        ae.dimse_timeout = settings.dimse_timeout
        ae.network_timeout = settings.network_timeout
        ae.maximum_pdu_size = settings.max_pdu_size
        role = build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
        assoc = ae.associate(remote.host, remote.port, ae_title=remote.title, ext_neg=[role])
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "could not be reached"
            raise DeliveryFailed(why)
        try:
            if not assoc.accepted_contexts:
                raise DeliveryFailed("refused Storage Commitment Push Model")
            self._send(assoc, report)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send(self, assoc: Any, report: Report) -> None:
        dataset = report_dataset(report, self._settings.ae_title)
        try:
            status, _ = assoc.send_n_event_report(
                dataset, report.event_type_id, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
            )
        except (RuntimeError, ValueError) as exc:  # not established any more / no context
            raise DeliveryFailed(str(exc)) from exc
        code = status.get("Status") if status else None
        if code is None:
            raise DeliveryFailed("no response to N-EVENT-REPORT")
        if code != SUCCESS and not 0xB000 <= code <= 0xBFFF:
            raise DeliveryFailed(f"N-EVENT-REPORT answered 0x{code:04X}")


def is_storage_sop_class(uid: str) -> bool:
    """A SOP class commitment may be asked for: one Chronicle stores (as ingest decides)."""
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    if not uid.startswith("1.2.840.10008."):
        return True  # private classes are stored as sent
    return issubclass(uid_to_service_class(UID(uid)), StorageServiceClass)
