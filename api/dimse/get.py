"""The C-GET SCP (Patient Root and Study Root, every level, relational on request).

The C-STORE sub-operations go back over the requestor's own association, on
the storage contexts it proposed with SCP/SCU Role Selection (it as SCP, us
as SCU). `register` therefore re-adds every storage SOP class with both roles
accepted (`scu_role=True, scp_role=True`): pynetdicom then answers a proposal
of the SCP role alone with the inverted role, one of both with both, and a
context without role selection keeps the default (the requestor is the
Storage SCU: plain C-STORE keeps working). `ae.shared_contexts` copies the
roles into each association's contexts.

Transfer syntax: on those role-selected storage contexts we are the sender,
so the requestor's first choice (the rule for storage we receive, see
`ae.prefer_requestor_order`) is not ours: `prefer_uncompressed_to_send`
(EVT_REQUESTED, bound after the server's own handler) puts Explicit and
Implicit VR LE first for them. A context proposing [JPEG-LS, Explicit VR LE]
then gets Explicit VR LE, which every decodable instance can be sent in;
a requestor wanting compressed instances as stored proposes that syntax in a
context of its own (one accepted syntax per context), and gets it there.
Instances go out as stored when the requestor accepted that syntax for their
SOP class, else decoded to Explicit or Implicit VR LE, else (a context that
offered only compressed syntaxes) transcoded to the lossless syntax accepted
there (`api.dimse.delivery.choose_delivery`; never lossy).

Accounting and responses are C-MOVE's (api/dimse/move.py, `perform`): a
Pending C-GET-RSP after each sub-operation, C-CANCEL, 0x0000 / 0xB000 /
0xA702 with the Failed SOP Instance UID List, refusals with their status.
As for C-MOVE the flow is ours: `RequestorLink` writes each C-STORE-RQ and
its dataset on the requestor's socket (the file read up to 1 MB at a time,
`api.dimse.peer`), and takes the C-STORE-RSP from pynetdicom, whose DUL
thread reads that socket. pynetdicom's C-GET SCP measured 110-140 instances/s
here, sending each dataset through its DUL queue.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, evt

from api.scu import Tally

from .ae import accepted_transfer_syntaxes, query_transfer_syntaxes, storage_sop_classes
from .move import Ending, RetrieveResponder, drop_next_response, perform
from .peer import UNLIMITED_FRAGMENT, DimseError, PeerAssociation
from .retrieve import (
    EXPLICIT,
    IMPLICIT,
    PATIENT_ROOT_GET,
    STUDY_ROOT_GET,
    RetrieveArchive,
    log_refusal,
    no_delay,
    on_sop_extended,
    plan_retrieve,
    retrieve_failure,
    spool_directory,
)

log = logging.getLogger("chronicle.dimse")

GET_MODELS = (PATIENT_ROOT_GET, STUDY_ROOT_GET)
C_GET_RSP = 0x8010
UNCOMPRESSED_FIRST = (EXPLICIT, IMPLICIT)


def prefer_uncompressed_to_send(event: Any) -> None:
    """EVT_REQUESTED: uncompressed first on contexts the requestor wants to be SCP for."""
    roles = event.assoc.requestor.role_selection
    for cx in event.assoc.acceptor.supported_contexts:
        role = roles.get(cx.abstract_syntax)
        if role is None or not role.scp_role:
            continue
        ours = [str(ts) for ts in cx.transfer_syntax]
        first = [ts for ts in UNCOMPRESSED_FIRST if ts in ours]
        # Assigning builds a new list: the old one may be shared (ae.SharedContext).
        cx.transfer_syntax = [UID(ts) for ts in first + [ts for ts in ours if ts not in first]]


@dataclass
class RequestorLink(PeerAssociation):
    """The C-GET requestor's association seen as a Storage SCU's: requests go
    out on its socket, responses come back through pynetdicom."""

    assoc: Any = None

    @classmethod
    def of(cls, event: Any) -> RequestorLink:
        assoc = event.assoc
        accepted = {
            int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
            if cx.as_scu
        }
        limit = int(assoc.requestor.maximum_length or 0)
        return cls(
            sock=assoc.dul.socket.socket,
            peer=str(assoc.requestor.ae_title).strip(),
            accepted=accepted,
            fragment=limit - 6 if limit > 6 else UNLIMITED_FRAGMENT,
            # After the C-GET's own Message ID, as pynetdicom numbers them.
            _ids=itertools.count(int(event.request.MessageID) + 1),
            assoc=assoc,
        )

    def await_status(self, command_field: int, msg_id: int) -> tuple[int, str]:
        while True:
            _, response = self.assoc.dimse.get_msg(block=True)
            if response is None:
                raise DimseError(f"{self.peer} sent no C-STORE response in time")
            if getattr(response, "MessageIDBeingRespondedTo", None) != msg_id:
                continue
            if response.Status is None:
                raise DimseError(f"{self.peer} answered without a Status")
            return int(response.Status), str(getattr(response, "ErrorComment", "") or "")


class GetHandler:
    """EVT_C_GET handler bound to an archive (see the module doc for the flow)."""

    def __init__(self, archive: RetrieveArchive) -> None:
        self._archive = archive

    def __call__(self, event: Any) -> Iterator[Any]:
        calling = str(event.assoc.requestor.ae_title).strip()
        no_delay(event.assoc)
        responder = RetrieveResponder(event, C_GET_RSP)
        try:
            self._get(event, calling, responder)
        except Exception:
            log.exception("C-GET from %s failed unexpectedly", calling)
            responder.refuse(0xC000, "cannot process")
        drop_next_response(event.assoc, int(event.request.MessageID))
        yield 0

    def _get(self, event: Any, calling: str, responder: RetrieveResponder) -> None:
        started = time.perf_counter()
        try:
            items = plan_retrieve(self._archive, event, calling)
        except Exception as exc:
            log_refusal("C-GET", calling, exc)
            refusal = retrieve_failure(exc)
            responder.refuse(int(refusal.Status), str(refusal.ErrorComment))
            return
        tally = Tally(total=len(items))
        link = RequestorLink.of(event)
        spool = spool_directory(self._archive.settings)
        ending = perform(event, link, items, tally, responder, spool, originator=None)
        if ending is not Ending.REQUESTOR_GONE:
            responder.final(tally, cancelled=ending is Ending.CANCELLED)
        log.info(
            "C-GET from %s: %d completed, %d failed, %d warning, %d decoded in %.1f ms",
            calling,
            tally.completed,
            tally.failed,
            tally.warning,
            tally.decoded,
            (time.perf_counter() - started) * 1000,
        )


def register(ae: AE, archive: RetrieveArchive) -> list[tuple[Any, Any]]:
    """Services REGISTRY entry: GET models, storage roles for sub-operations, the handler."""
    for model in GET_MODELS:
        ae.add_supported_context(model, query_transfer_syntaxes())
    storage = accepted_transfer_syntaxes()
    for sop_class in storage_sop_classes():
        ae.add_supported_context(sop_class, storage, scu_role=True, scp_role=True)
    return [
        (evt.EVT_REQUESTED, prefer_uncompressed_to_send),
        (evt.EVT_C_GET, GetHandler(archive)),
        (evt.EVT_SOP_EXTENDED, on_sop_extended),
    ]
