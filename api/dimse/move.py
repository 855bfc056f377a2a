"""The C-MOVE SCP (Patient Root and Study Root, every level, relational on request).

The Move Destination must be a configured remote AE (`--remote-ae`,
CHRONICLE_REMOTE_AES, the config file): its title gives the address, else
0xA801. The instances are resolved once (`retrieve.plan_retrieve`, after the
read-your-writes barrier) and sent over ONE association to the destination
(`api.dimse.peer.PeerAssociation`), proposing per SOP class the stored
syntax, Explicit + Implicit VR LE and the lossless syntaxes Chronicle
transcodes to (`api.dimse.delivery`: as stored, else uncompressed, else
transcoded losslessly, never lossy); each C-STORE carries
Move Originator AE Title (the requestor's) and Move Originator Message ID.
A failed sub-operation does not stop the rest.

Responses (PS3.4 C.4.2.1.5, C.4.2.3): one Pending (0xFF00) after each
sub-operation with the remaining/completed/failed/warning counts (written
while the next C-STORE is with the destination, see `perform`); on C-CANCEL
0xFE00 with those counts; finally 0x0000 when every sub-operation completed,
0xB000 when some failed or warned and 0xA702 when all failed, both with the
Failed SOP Instance UID List. Refusals before any sub-operation: 0xA900 (the
identifier does not fit the model), 0xA701 (the index cannot be queried, or
more than 65535 instances), 0xA702 (the destination cannot be associated
with), 0xC000 otherwise, with an Error Comment.

The flow is ours, not pynetdicom's: its C-MOVE SCP re-encodes each dataset
through its DUL thread (~130 instances/s here, against ~900-1200 for
Orthanc) and puts our own AE title in Move Originator. The handler does the whole move
during pynetdicom's first request for the destination, writing each
C-MOVE-RSP itself (`RetrieveResponder`, P-DATA written on the association's
socket); it then yields the destination and zero sub-operations, and the
"success, nothing moved" response pynetdicom sends for that is dropped
(`drop_next_response`): ours went already.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode

from api.scu import Staged, Tally, finish, stage
from infra.settings import RemoteAE, Settings

from .ae import query_transfer_syntaxes
from .peer import (
    DATASET_PRESENT,
    NO_DATASET,
    UNLIMITED_FRAGMENT,
    DimseError,
    Element,
    PeerAssociation,
    command_set,
    pdata_pdus,
)
from .retrieve import (
    CANCELLED,
    PATIENT_ROOT_MOVE,
    PENDING,
    STUDY_ROOT_MOVE,
    Outgoing,
    RetrieveArchive,
    log_refusal,
    no_delay,
    on_sop_extended,
    plan_retrieve,
    retrieve_failure,
    spool_directory,
    storage_contexts,
)
from .store import ERROR_COMMENT_MAX

log = logging.getLogger("chronicle.dimse")

MOVE_MODELS = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)
C_MOVE_RSP = 0x8021
SUCCESS, WARNING, ALL_FAILED = 0x0000, 0xB000, 0xA702
#: Where Remaining/Completed/Failed/Warning (0000,1020-1023) sit, from the end
#: of a Pending response: the last four elements, 10 bytes each.
_COUNT_POSITIONS = (-32, -22, -12, -2)
MIN_TEMPLATE_PDU = 256


def destination_of(settings: Settings, title: str | None) -> RemoteAE | None:
    """The configured remote AE with this title (the first, when several share it)."""
    wanted = (title or "").strip()
    return next((ae for ae in settings.remotes if ae.title.strip() == wanted), None)


def final_status(tally: Tally) -> int:
    """0x0000 all completed; 0xA702 all failed; 0xB000 otherwise (PS3.4 C.4.2.1.5)."""
    if not tally.failed and not tally.warning:
        return SUCCESS
    if not tally.completed and not tally.warning:
        return ALL_FAILED
    return WARNING


class RetrieveResponder:
    """C-MOVE-RSP (or C-GET-RSP) messages for one request, framed here and
    written on the requestor's association."""

    def __init__(self, event: Any, command_field: int = C_MOVE_RSP) -> None:
        self._command_field = command_field
        self._assoc = event.assoc
        self._context_id = int(event.context.context_id)
        self._syntax = event.context.transfer_syntax
        self._sop_class = str(event.request.AffectedSOPClassUID)
        self._msg_id = int(event.request.MessageID)
        self._pending: bytes | None = None

    def pending(self, tally: Tally) -> None:
        self.write(self.pending_message(tally))

    def pending_message(self, tally: Tally) -> bytes:
        """A Pending response with the counts as they are now, to write later.

        Every Pending response has the same layout, so it is encoded once and
        only its four counts (the last four US values) are written in."""
        if 0 < int(self._assoc.dimse.maximum_pdu_size or 0) < MIN_TEMPLATE_PDU:
            # PDUs so small the counts could straddle two of them.
            return self.message(PENDING, tally, remaining=tally.remaining)
        if self._pending is None:
            self._pending = self.message(PENDING, Tally(0), remaining=0)
        counts = (tally.remaining, tally.completed, tally.failed, tally.warning)
        message = bytearray(self._pending)
        for position, count in zip(_COUNT_POSITIONS, counts, strict=True):
            struct.pack_into("<H", message, len(message) + position, count)
        return bytes(message)

    def final(self, tally: Tally, *, cancelled: bool = False) -> None:
        no_delay(self._assoc)  # flushes the Pending responses Nagle holds
        status = CANCELLED if cancelled else final_status(tally)
        listed = status != SUCCESS
        self.send(
            status,
            tally,
            remaining=tally.remaining if cancelled else None,
            failed_uids=tally.failed_uids if listed else None,
        )

    def refuse(self, status: int, comment: str, tally: Tally | None = None) -> None:
        no_delay(self._assoc)
        self.send(status, tally, comment=comment, failed_uids=tally.failed_uids if tally else None)

    def send(
        self,
        status: int,
        tally: Tally | None,
        *,
        remaining: int | None = None,
        failed_uids: Sequence[str] | None = None,
        comment: str = "",
    ) -> None:
        listed = failed_uids is not None
        message = self.message(
            status, tally, remaining=remaining, comment=comment, identifier=listed
        )
        if failed_uids is None:
            self.write(message)
            return
        listing = Dataset()
        listing.FailedSOPInstanceUIDList = list(failed_uids)
        syntax = self._syntax
        identifier = encode(
            listing, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
        )
        self.write(message + self._pdus(bytes(identifier or b""), command=False))

    def message(
        self,
        status: int,
        tally: Tally | None,
        *,
        remaining: int | None = None,
        comment: str = "",
        identifier: bool = False,
    ) -> bytes:
        """The response's command as P-DATA PDUs (an identifier follows when listed)."""
        elements: list[Element] = [
            (0x00000002, "UI", self._sop_class),
            (0x00000100, "US", self._command_field),
            (0x00000120, "US", self._msg_id),
            (0x00000800, "US", DATASET_PRESENT if identifier else NO_DATASET),
            (0x00000900, "US", status),
        ]
        if comment:
            text = comment.encode("ascii", "replace").decode().replace("\\", "/")
            elements.append((0x00000902, "LO", text[:ERROR_COMMENT_MAX]))
        if remaining is not None:
            elements.append((0x00001020, "US", remaining))
        if tally is not None:
            elements += [
                (0x00001021, "US", tally.completed),
                (0x00001022, "US", tally.failed),
                (0x00001023, "US", tally.warning),
            ]
        return self._pdus(command_set(elements), command=True)

    def write(self, message: bytes) -> None:
        # Written by this thread on the association's socket (AssociationSocket.send,
        # which reports a broken connection to the DUL): the DUL thread only reads
        # while a request is being served, and queueing through it cost ~15 % of
        # a move's time in Pending responses.
        self._assoc.dul.socket.send(message)

    def _pdus(self, payload: bytes, *, command: bool) -> bytes:
        limit = int(self._assoc.dimse.maximum_pdu_size or 0)
        fragment = limit - 6 if limit > 6 else UNLIMITED_FRAGMENT
        return b"".join(pdata_pdus(self._context_id, payload, 0x01 if command else 0x00, fragment))


def drop_next_response(assoc: Any, msg_id: int) -> None:
    """Drop pynetdicom's own closing C-MOVE/C-GET-RSP for `msg_id` (ours was sent)."""
    dimse = assoc.dimse

    def send_msg(primitive: Any, context_id: int) -> None:
        vars(dimse).pop("send_msg", None)
        if getattr(primitive, "MessageIDBeingRespondedTo", None) != msg_id:
            dimse.send_msg(primitive, context_id)

    setattr(dimse, "send_msg", send_msg)  # noqa: B010


class MoveHandler:
    """EVT_C_MOVE handler bound to an archive (see the module doc for the flow)."""

    def __init__(self, archive: RetrieveArchive) -> None:
        self._archive = archive

    def __call__(self, event: Any) -> Iterator[Any]:
        calling = str(event.assoc.requestor.ae_title).strip()
        destination = destination_of(self._archive.settings, event.move_destination)
        if destination is None:
            log.warning(
                "C-MOVE from %s: destination %r is not a configured AE",
                calling,
                event.move_destination,
            )
            yield None, None  # pynetdicom answers 0xA801
            return
        no_delay(event.assoc, on=False)
        try:
            self._move(event, destination, calling, RetrieveResponder(event))
        except Exception:
            log.exception("C-MOVE from %s failed unexpectedly", calling)
            RetrieveResponder(event).refuse(0xC000, "cannot process")
        drop_next_response(event.assoc, int(event.request.MessageID))
        yield destination.host, destination.port
        yield 0

    def _move(
        self, event: Any, destination: RemoteAE, calling: str, responder: RetrieveResponder
    ) -> None:
        started = time.perf_counter()
        try:
            items = plan_retrieve(self._archive, event, calling)
        except Exception as exc:
            log_refusal("C-MOVE", calling, exc)
            refusal = retrieve_failure(exc)
            responder.refuse(int(refusal.Status), str(refusal.ErrorComment))
            return
        resolved_ms = (time.perf_counter() - started) * 1000
        tally = Tally(total=len(items))
        if items:
            self._sub_operations(event, destination, calling, items, tally, responder)
        else:
            responder.final(tally)
        log.info(
            "C-MOVE from %s to %s: %d completed, %d failed, %d warning, %d decoded"
            " in %.1f ms (%.1f ms to resolve)",
            calling,
            destination,
            tally.completed,
            tally.failed,
            tally.warning,
            tally.decoded,
            (time.perf_counter() - started) * 1000,
            resolved_ms,
        )

    def _sub_operations(
        self,
        event: Any,
        destination: RemoteAE,
        calling: str,
        items: list[Outgoing],
        tally: Tally,
        responder: RetrieveResponder,
    ) -> None:
        settings = self._archive.settings
        try:
            peer = PeerAssociation.request(
                destination.host,
                destination.port,
                calling=settings.ae_title,
                called=destination.title,
                contexts=storage_contexts(items),
                timeout=settings.acse_timeout,
                max_pdu=settings.max_pdu_size,
            )
        except (OSError, DimseError) as exc:
            log.warning("C-MOVE from %s: cannot associate with %s: %s", calling, destination, exc)
            tally.fail_all(items, str(exc))
            responder.refuse(ALL_FAILED, f"cannot associate with {destination.title}", tally)
            return
        peer.sock.settimeout(settings.dimse_timeout)
        try:
            ending = perform(
                event, peer, items, tally, responder, spool_directory(settings), originator=calling
            )
        except BaseException:
            peer.abort()
            raise
        if ending is Ending.LOST or ending is Ending.REQUESTOR_GONE:
            peer.abort()
        else:
            peer.release()
        if ending is not Ending.REQUESTOR_GONE:
            responder.final(tally, cancelled=ending is Ending.CANCELLED)


class Ending(Enum):
    DONE = "done"
    CANCELLED = "cancelled"
    LOST = "association to the receiver lost"
    REQUESTOR_GONE = "requestor gone"


def perform(
    event: Any,
    link: PeerAssociation,
    items: list[Outgoing],
    tally: Tally,
    responder: RetrieveResponder,
    spool: Path,
    *,
    originator: str | None,
) -> Ending:
    """The C-STORE sub-operations of a C-MOVE (`originator`: the requestor's AE
    title) or C-GET (None), with a Pending response after each; stops on
    C-CANCEL, when the requestor leaves, or when `link` breaks (the rest then
    fail).

    While the peer stores one instance, the previous sub-operation's Pending
    response is written and the next instance is staged (file opened, request
    encoded): ~0.25 ms of each sub-operation overlaps the peer's work.
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    msg_id = int(event.request.MessageID)
    owed: list[bytes] = []
    ahead: list[Staged] = []

    def stage_item(index: int) -> Staged:
        return stage(link, items[index], spool, originator_aet=originator, originator_id=msg_id)

    def pay() -> None:
        while owed:
            responder.write(owed.pop(0))

    try:
        for index, item in enumerate(items):
            if event.is_cancelled:
                log.info("retrieve from %s cancelled after %d", calling, tally.done)
                return Ending.CANCELLED
            if not event.assoc.is_established:
                log.warning("retrieve from %s: requestor gone after %d", calling, tally.done)
                owed.clear()
                return Ending.REQUESTOR_GONE
            current = ahead.pop() if ahead else stage_item(index)

            def meanwhile(following: int = index + 1) -> None:
                pay()
                if following < len(items):
                    ahead.append(stage_item(following))

            try:
                outcome = finish(link, current, meanwhile)
            except (OSError, DimseError) as exc:
                log.warning("retrieve from %s: lost %s: %s", calling, link.peer, exc)
                tally.fail_all(items[index:], str(exc))
                return Ending.LOST
            pay()  # when this instance never went out
            tally.add(outcome)
            if outcome.failed:
                log.warning("sub-operation %s failed: %s", item.sop_instance_uid, outcome.reason)
            owed.append(responder.pending_message(tally))
        return Ending.DONE
    finally:
        for staged in ahead:
            staged.close()
        pay()


def register(ae: AE, archive: RetrieveArchive) -> list[tuple[Any, Any]]:
    """Services REGISTRY entry: the MOVE models' contexts and the C-MOVE handler."""
    for model in MOVE_MODELS:
        ae.add_supported_context(model, query_transfer_syntaxes())
    return [(evt.EVT_C_MOVE, MoveHandler(archive)), (evt.EVT_SOP_EXTENDED, on_sop_extended)]
