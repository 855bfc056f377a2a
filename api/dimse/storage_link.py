"""Storage and query associations served on their own loop, without pynetdicom's threads.

Profiled over one association of 0.5 MB CT instances, pynetdicom spent ~3 ms
of CPU per C-STORE before our handler ran: its DUL thread polls the socket,
every PDU crosses two queues and the GIL between three threads, and each
message is decoded through pydicom. Orthanc receives in C++, so to keep up
an association that only stores (or echoes) is served here instead: one
thread, blocking reads into a reused buffer, dataset fragments written
straight to the received file, command sets parsed and written by hand.

Which associations: `StorageRouter.claims` peeks at the A-ASSOCIATE-RQ
(MSG_PEEK: nothing is consumed) and takes it only when the policy accepts
the caller, every proposed context is Verification, a storage SOP class or
(api.dimse.find_link) a Patient / Study Root FIND model,
and the user information asks for nothing beyond maximum length,
implementation identity and an asynchronous window (answered with none:
1/1). Everything else - queries, retrieves, commitment, role selection,
extended negotiation, user identity, a rejected caller - stays with
pynetdicom, which gets the untouched socket. The acceptance rules are the
same on both paths (api.dimse.policy, the SCU's transfer syntax order of
api.dimse.ae), and so are the statuses (api.dimse.store): success only
after ingest returned.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from ingest.parse import (
    CHRONICLE_IMPLEMENTATION_CLASS_UID,
    CHRONICLE_VERSION_NAME,
    build_file_meta,
)
from schemas.events import Source

from .ae import (
    QUERY_MODELS,
    VERIFICATION,
    accepted_transfer_syntaxes,
    query_transfer_syntaxes,
    storage_sop_classes,
)
from .find_link import C_CANCEL_RQ, FindAnswer, FindHandlerLike
from .policy import AssociationPolicy
from .storage_messages import (
    Message,
    MessageReader,
    echo_response,
    read_exact,
    store_response,
    write_all,
)

log = logging.getLogger("chronicle.dimse")

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
ASSOCIATE_RQ, RELEASE_RP, ABORT = 0x01, 0x06, 0x07
_ALLOWED_USER_ITEMS = (
    MaximumLengthNotification,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    AsynchronousOperationsWindowNegotiation,
)
#: A-ASSOCIATE-RQ larger than this is left to pynetdicom (hundreds of contexts).
MAX_PEEK = 256 * 1024
#: (status, error comment) for one received dataset.
StoreFunction = Callable[[Path, "Message", Source], tuple[int, str]]


@dataclass(frozen=True)
class Accepted:
    """One association we took: the request, and context id -> (abstract, transfer) syntax."""

    calling_ae: str
    called_ae: str
    contexts: dict[int, tuple[str, str]]
    ac_pdu: bytes
    #: The largest PDU the requestor receives (0: no limit).
    peer_max_pdu: int = 0


class StorageRouter:
    """Decides per connection and serves the associations it claims."""

    def __init__(
        self,
        policy: AssociationPolicy,
        *,
        store: StoreFunction | None,
        find: FindHandlerLike | None = None,
        incoming: Path,
        max_pdu_size: int,
        acse_timeout: float,
        network_timeout: float | None,
        capacity: Callable[[], bool],
    ) -> None:
        self._policy = policy
        self._store = store
        self._incoming = incoming
        self._max_pdu = max_pdu_size
        self._acse_timeout = acse_timeout
        self._network_timeout = network_timeout
        self._capacity = capacity
        self._find = find
        storage = frozenset(str(ts) for ts in accepted_transfer_syntaxes())
        query = frozenset(str(ts) for ts in query_transfer_syntaxes())
        #: Abstract syntax -> the transfer syntaxes it may be accepted with.
        self._syntaxes: dict[str, frozenset[str]] = {str(VERIFICATION): storage}
        if store is not None:
            self._syntaxes.update({str(uid): storage for uid in storage_sop_classes()})
        if find is not None:
            self._syntaxes.update({str(model): query for model in QUERY_MODELS})
        self._lock = threading.Lock()
        self.active = 0

    def claims(self, sock: socket.socket, address: tuple[str, int]) -> Accepted | None:
        """The negotiated association if this connection is ours, else None (untouched)."""
        raw = _peek_pdu(sock, self._acse_timeout)
        if raw is None or raw[0] != ASSOCIATE_RQ or not self._capacity():
            return None
        try:
            pdu = A_ASSOCIATE_RQ()
            pdu.decode(raw)
            request = pdu.to_primitive()
        except Exception:
            return None  # pynetdicom answers malformed requests its own way
        return self._negotiate(request, address[0])

    def _negotiate(self, request: Any, peer_ip: str) -> Accepted | None:
        if str(request.application_context_name) != APPLICATION_CONTEXT:
            return None
        if not all(isinstance(item, _ALLOWED_USER_ITEMS) for item in request.user_information):
            return None
        proposed = list(request.presentation_context_definition_list)
        if not proposed or any(str(cx.abstract_syntax) not in self._syntaxes for cx in proposed):
            return None
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        if not self._policy.decide(calling_ae=calling, called_ae=called, peer_ip=peer_ip).accepted:
            return None
        contexts: dict[int, tuple[str, str]] = {}
        results = []
        for cx in proposed:
            allowed = self._syntaxes[str(cx.abstract_syntax)]
            chosen = next((str(ts) for ts in cx.transfer_syntax if str(ts) in allowed), None)
            result = PresentationContext()
            result.context_id = cx.context_id
            result.abstract_syntax = cx.abstract_syntax
            if chosen is None:
                result.result = 0x04  # transfer syntaxes not supported
                result.transfer_syntax = [str(cx.transfer_syntax[0])]
            else:
                result.result = 0x00
                result.transfer_syntax = [chosen]
                contexts[int(cx.context_id)] = (str(cx.abstract_syntax), chosen)
            results.append(result)
        peer_max = next(
            (
                int(item.maximum_length_received or 0)
                for item in request.user_information
                if isinstance(item, MaximumLengthNotification)
            ),
            0,
        )
        return Accepted(calling, called, contexts, self._accept_pdu(request, results), peer_max)

    def _accept_pdu(self, request: Any, results: list[PresentationContext]) -> bytes:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = request.calling_ae_title
        primitive.called_ae_title = request.called_ae_title
        primitive.result = 0x00
        primitive.result_source = 0x01
        primitive.presentation_context_definition_results_list = results
        length = MaximumLengthNotification()
        length.maximum_length_received = self._max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = CHRONICLE_IMPLEMENTATION_CLASS_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = CHRONICLE_VERSION_NAME
        primitive.user_information = [length, implementation, version]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(primitive)
        return bytes(pdu.encode())

    def serve(self, sock: socket.socket, address: tuple[str, int], accepted: Accepted) -> None:
        """Run the association to its end; the socket is closed on return."""
        with self._lock:
            self.active += 1
        peer = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        # Several small responses in a row (C-FIND matches) must not wait for the
        # peer's delayed ACK of the previous one (Nagle): ~40 ms each otherwise.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(self, sock, peer, accepted)
        try:
            read_exact(sock, _pdu_length(sock))  # consume the A-ASSOCIATE-RQ we peeked
            sock.sendall(accepted.ac_pdu)
            log.info("association from %s at %s (storage)", accepted.calling_ae, peer)
            link.run()
        except (OSError, ConnectionError) as exc:
            log.warning("association from %s at %s ended: %s", accepted.calling_ae, peer, exc)
        finally:
            log.info("association from %s at %s closed: %s", accepted.calling_ae, peer,
                     link.summary())  # fmt: skip
            link.discard()
            with self._lock:
                self.active -= 1
            _close(sock)


class _Link:
    """One accepted storage association: messages in, responses out."""

    def __init__(
        self, router: StorageRouter, sock: socket.socket, peer: str, accepted: Accepted
    ) -> None:
        self._router = router
        self._sock = sock
        self._accepted = accepted
        self._source = Source(
            "DIMSE", calling_ae=accepted.calling_ae, called_ae=accepted.called_ae, peer=peer
        )
        self._peer_max = accepted.peer_max_pdu
        _kernel_timeouts(sock, router._network_timeout)
        self._reader = MessageReader(sock, accepted.contexts, self._open_file)
        self._opened = time.perf_counter()
        # C-STORE statuses answered, by kind: one summary line per association
        # (a line per instance cost ~3 % of the CPU under load).
        self._answered: collections.Counter[str] = collections.Counter()

    def _open_file(self, message: Message) -> Any:
        # A raw, unbuffered file: data set fragments are written whole, once each.
        path = self._router._incoming / f"cstore-{uuid.uuid4().hex}.dcm"
        received = open(path, "xb", buffering=0)  # noqa: SIM115 - the reader closes it
        # The File Meta the blob will start with, from the command: when the data
        # set agrees with it, ingest keeps this very file as the blob (no copy).
        write_all(received, file_meta_for(message))
        return received

    def run(self) -> None:
        while True:
            message = self._reader.next_message()
            if message is None:  # released (answered) or aborted by the peer
                return
            if message.command_field == 0x0030:
                self._sock.sendall(echo_response(message))
            elif message.command_field == 0x0001 and message.dataset_path is not None:
                self._store(message)  # storage contexts are accepted only with a store
            elif message.command_field == 0x0020 and self._router._find is not None:
                answer = FindAnswer(self._sock, self._reader.next_message, self._peer_max)
                answer.run(self._router._find, message, self._accepted.calling_ae)
                if not answer.open:
                    return
            elif message.command_field == C_CANCEL_RQ:
                continue  # for a request already answered: nothing to stop
            else:
                log.warning("storage association from %s: unexpected command 0x%04X; aborting",
                            self._accepted.calling_ae, message.command_field)  # fmt: skip
                self._sock.sendall(struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, 2, 0))
                return

    def _store(self, message: Message) -> None:
        path, store = message.dataset_path, self._router._store
        assert path is not None and store is not None  # storage contexts only when storing
        started = time.perf_counter()
        try:
            status, comment = store(path, message, self._source)
        finally:
            path.unlink(missing_ok=True)
        self._sock.sendall(store_response(message, status, comment))
        elapsed = (time.perf_counter() - started) * 1000
        kind = code_to_category(status).lower()
        self._answered[kind] += 1
        log.log(logging.DEBUG if kind in ("success", "warning") else logging.WARNING,
                "C-STORE from %s: %s 0x%04X in %.1f ms%s", self._accepted.calling_ae,
                message.sop_instance_uid, status, elapsed,
                f" ({comment})" if comment else "")  # fmt: skip

    def summary(self) -> str:
        seconds = time.perf_counter() - self._opened
        stored = sum(self._answered.values())
        if not stored:
            return f"no C-STORE in {seconds:.1f} s"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self._answered.items()))
        return f"{stored} C-STORE ({kinds}) in {seconds:.1f} s"

    def discard(self) -> None:
        self._reader.discard()


def _kernel_timeouts(sock: socket.socket, seconds: float | None) -> None:
    """The network timeout as SO_RCVTIMEO / SO_SNDTIMEO on a blocking socket:
    Python's own timeout polls before every recv (a second syscall, and one
    more GIL hand-over, ~12 times per 0.5 MB data set). A timed-out recv or
    send raises OSError (EAGAIN), which ends the association like any other."""
    sock.settimeout(None)
    if not seconds:
        return
    whole = int(seconds)
    value = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def file_meta_for(message: Message) -> bytes:
    """Chronicle's File Meta for a C-STORE's data set, or b"" when the command's
    UIDs cannot make one (ingest then copies the data set behind its own)."""
    if message.command_field != 0x0001 or not message.sop_class_uid or not message.sop_instance_uid:
        return b""
    try:
        return build_file_meta(
            message.sop_class_uid, message.sop_instance_uid, message.transfer_syntax
        )
    except (UnicodeEncodeError, struct.error):
        return b""


def _peek_pdu(sock: socket.socket, timeout: float) -> bytes | None:
    """The first PDU, read with MSG_PEEK so the socket is left as it was."""
    deadline = time.monotonic() + timeout
    want = 6
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([sock], [], [], remaining)
        if not ready:
            return None
        try:
            data = sock.recv(want, socket.MSG_PEEK)
        except OSError:
            return None
        if not data:
            return None
        if len(data) >= 6:
            want = 6 + struct.unpack_from(">I", data, 2)[0]
            if want > MAX_PEEK:
                return None
            if len(data) >= want:
                return data[:want]
        if len(data) < want:
            time.sleep(0.0005)  # more is on its way; MSG_PEEK cannot wait for it


def _pdu_length(sock: socket.socket) -> int:
    head = sock.recv(6, socket.MSG_PEEK)
    return 6 + int(struct.unpack_from(">I", head, 2)[0])


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
