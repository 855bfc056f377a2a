"""Start and stop the DIMSE front-end: `start_dimse(archive)` -> `DimseServer`.

The listener runs in pynetdicom's threads (one per association). Handlers:
EVT_REQUESTED (acceptance policy, then the requestor's transfer syntax
preference), EVT_SOP_EXTENDED (C-FIND options), EVT_C_ECHO (0x0000),
EVT_C_STORE (ingest), EVT_C_FIND (query), EVT_CONN_CLOSE (partial files).

Received datasets go to `<data_dir>/incoming` (see `set_receive_directory`),
on the data disk rather than in a /tmp that may be RAM, and on the same file
system as the blob directory.
"""

from __future__ import annotations

import functools
import logging
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.transport import ThreadedAssociationServer

from infra.settings import Settings
from schemas.events import Source

from .ae import QUERY_MODELS, build_ae, prefer_requestor_order, shared_contexts
from .balance import LoadBoard, SharedListener
from .find import FindArchive, FindHandler, negotiate_options
from .find_encode import install_encoded_identifiers
from .policy import AssociationPolicy, apply_decision, judge
from .services import REGISTRY
from .storage_link import StorageRouter
from .storage_messages import Message
from .store import StoreArchive, StoreHandler, store_received_dataset
from .tuning import tune_association, tune_pynetdicom

log = logging.getLogger("chronicle.dimse")

#: Received files older than this are removed when a server starts (a crash
#: mid-transfer leaves them); younger ones may belong to another process.
ORPHAN_AGE_SECONDS = 24 * 3600


class DimseArchive(StoreArchive, FindArchive, Protocol):
    """The parts of `api.wiring.Archive` the DIMSE front-end uses."""


def set_receive_directory(directory: Path) -> None:
    """Make pynetdicom's chunked C-STORE receive write its files in `directory`.

    pynetdicom creates them with `NamedTemporaryFile(delete=False, mode="wb",
    suffix=".dcm")` and no directory, i.e. in `tempfile.gettempdir()`;
    rebinding the name it imported changes that for pynetdicom alone, not
    for the rest of the process. Process-wide: the last call wins.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined,assignment]
        tempfile.NamedTemporaryFile, dir=str(directory), prefix="cstore-"
    )


def remove_orphans(directory: Path, *, older_than: float = ORPHAN_AGE_SECONDS) -> int:
    """Delete received files an aborted association left behind; return how many."""
    cutoff = time.time() - older_than
    removed = 0
    for path in directory.glob("cstore-*.dcm"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def receive_directory(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "incoming"


def _on_requested(policy: AssociationPolicy, event: Any) -> None:
    decision = judge(policy, event.assoc)
    if not decision.accepted:
        requestor = event.assoc.requestor
        log.warning(
            "rejected association from %r at %s:%s: %s",
            str(requestor.primitive.calling_ae_title).strip(),
            requestor.address,
            requestor.port,
            decision.detail,
        )
        apply_decision(event.assoc, decision)
        return
    prefer_requestor_order(event.assoc)


def _on_established(event: Any) -> None:
    tune_association(event.assoc)
    requestor = event.assoc.requestor
    log.info(
        "association from %s at %s:%s",
        str(requestor.ae_title).strip(),
        requestor.address,
        requestor.port,
    )


def _discard_partial_dataset(event: Any) -> None:
    """Delete the file of a C-STORE cut off mid-dataset (connection closed).

    pynetdicom deletes a received file only after the handler ran; a dataset
    whose last fragment never came stays open in the half-decoded DIMSE
    message, and its file would stay on disk. Runs in the DUL thread, the
    one that decodes P-DATA, so the message cannot complete meanwhile.
    """
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    try:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)
        log.warning("connection closed mid-dataset; discarded %s", partial.name)
    except OSError as exc:
        log.warning("could not discard partial dataset %s: %s", partial.name, exc)


def _on_sop_extended(event: Any) -> dict[Any, bytes]:
    return negotiate_options(event.app_info)


def _on_echo(event: Any) -> int:
    return 0x0000


class DimseListener(ThreadedAssociationServer):
    """pynetdicom's threaded listener, with storage associations routed past it.

    Each connection gets a thread that lets `StorageRouter` look at its
    A-ASSOCIATE-RQ: an association that only stores or echoes is served by
    `api.dimse.storage_link`; any other goes to pynetdicom untouched.
    """

    router: StorageRouter | None = None
    #: With sibling processes on one shared socket (api.dimse.balance).
    board: LoadBoard | None = None

    def _handle_request_noblock(self) -> None:
        if self.board is not None:
            self.board.yield_to_siblings()
        super()._handle_request_noblock()  # type: ignore[misc]

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.router is None:
            super().process_request(request, client_address)
            return
        if self.board is not None:
            self.board.enter()  # counted before the next connection is weighed
        threading.Thread(
            target=self._route, args=(request, client_address), name="DimseRoute", daemon=True
        ).start()

    def _route(self, request: Any, client_address: Any) -> None:
        router = self.router
        assert router is not None
        try:
            try:
                accepted = router.claims(request, client_address)
            except Exception:
                log.exception("storage routing failed; handing the association to pynetdicom")
                accepted = None
            if accepted is None:
                # pynetdicom runs the association in a thread of its own: the
                # board counts the storage link's associations only.
                self.process_request_thread(request, client_address)
            else:
                router.serve(request, client_address, accepted)
        finally:
            if self.board is not None:
                self.board.leave()


class ReusePortServer(DimseListener):
    """A listener several processes can bind to the same port (SO_REUSEPORT).

    The kernel spreads incoming connections over the processes, which is how
    DIMSE passes one interpreter's GIL (DESIGN.md, Performance).
    """

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class SharedSocketServer(DimseListener):
    """A listener on the socket the owner opened for every process of the node."""

    shared: SharedListener  # set on a subclass made per listener (see _listen)

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.close()
        self.socket = self.shared.sock
        # Never wait in accept(): a sibling may have taken the connection first.
        self.socket.settimeout(0)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """The owner's socket is listening already."""


@dataclass
class DimseServer:
    """A running DIMSE listener; `stop()` aborts its associations and closes it."""

    ae: AE
    server: ThreadedAssociationServer
    #: Where pynetdicom writes received datasets (see set_receive_directory).
    incoming: Path

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def stop(self) -> None:
        self.ae.shutdown()


def _listen(
    ae: AE,
    address: tuple[str, int],
    handlers: list[Any],
    reuse_port: bool,
    shared: SharedListener | None,
) -> Any:
    contexts = shared_contexts(ae.supported_contexts)
    server_class: type[DimseListener] = ReusePortServer if reuse_port else DimseListener
    if shared is not None:
        server_class = type("OnSharedSocket", (SharedSocketServer,), {"shared": shared})
    server = ae.make_server(
        address, evt_handlers=handlers, contexts=contexts, server_class=server_class
    )
    assert isinstance(server, DimseListener)
    if shared is not None:
        server.board = shared.board
    return server


def _serve(ae: AE, server: Any) -> None:
    # What AE.start_server does for its own class: serve in a daemon thread,
    # and register the server so AE.shutdown() and server.shutdown() work.
    threading.Thread(target=server.serve_forever, name="DimseListener", daemon=True).start()
    ae._servers.append(server)


def storage_router(
    archive: DimseArchive,
    ae: AE,
    policy: AssociationPolicy,
    incoming: Path,
    *,
    storage: bool = True,
    query: bool = True,
) -> StorageRouter:
    """The router for storage-only and query-only associations (api.dimse.storage_link)."""
    settings = archive.settings

    def store(path: Path, message: Message, source: Source) -> tuple[int, str]:
        return store_received_dataset(
            archive,
            path,
            transfer_syntax=message.transfer_syntax,
            sop_instance_uid=message.sop_instance_uid,
            source=source,
            offset=message.dataset_offset,
            dataset_sha256=message.dataset_sha256,
        )

    router: StorageRouter

    def capacity() -> bool:
        return len(ae.active_associations) + router.active < settings.max_associations

    router = StorageRouter(
        policy,
        store=store if storage else None,
        find=FindHandler(archive) if query else None,
        incoming=incoming,
        max_pdu_size=settings.max_pdu_size,
        acse_timeout=settings.acse_timeout,
        network_timeout=settings.network_timeout,
        capacity=capacity,
    )
    return router


#: C-STORE on a node without the ingest role (PS3.7 C.4.2.1.4: Refused, SOP
#: Class not supported). C-GET's storage contexts make pynetdicom accept
#: storage presentation contexts there; nothing may be kept by such a node.
SOP_CLASS_NOT_SUPPORTED = 0x0122


def _refuse_store(event: Any) -> Dataset:
    status = Dataset()
    status.Status = SOP_CLASS_NOT_SUPPORTED
    status.ErrorComment = "no storage here: send to an ingest node"
    return status


def _drop_query_contexts(ae: AE) -> None:
    for model in QUERY_MODELS:
        ae.remove_supported_context(model)


def start_dimse(
    archive: DimseArchive,
    *,
    policy: AssociationPolicy | None = None,
    reuse_port: bool = False,
    storage: bool = True,
    query: bool = True,
    shared: SharedListener | None = None,
) -> DimseServer:
    """Listen on (settings.dimse_host, settings.dimse_port); port 0 picks a free one.

    `reuse_port` lets sibling processes listen on the same port (SO_REUSEPORT);
    `shared` instead serves the node's one socket, shared with the node's
    other processes and balanced by their load board (api.dimse.balance).
    `storage` serves Verification + Storage (storage-only associations on
    `storage_link`); `query` serves Verification, C-FIND, C-MOVE, C-GET and
    Storage Commitment. An ingest node runs `query=False`: its Q/R contexts
    are rejected (abstract syntax not supported). An api node runs
    `storage=False`: C-STORE answers 0x0122 and nothing goes to storage_link.
    """
    if not (storage or query):
        raise ValueError("start_dimse needs storage, query or both")
    settings = archive.settings
    incoming = receive_directory(settings)
    set_receive_directory(incoming)
    removed = remove_orphans(incoming)
    if removed:
        log.info("removed %d stale received files from %s", removed, incoming)
    policy = policy or AssociationPolicy.from_settings(settings)
    tune_pynetdicom()
    install_encoded_identifiers()
    ae = build_ae(archive)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, functools.partial(_on_requested, policy)),
        (evt.EVT_ESTABLISHED, _on_established),
        (evt.EVT_CONN_CLOSE, _discard_partial_dataset),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_C_STORE, StoreHandler(archive) if storage else _refuse_store),
    ]
    if query:
        handlers += [
            (evt.EVT_SOP_EXTENDED, _on_sop_extended),
            (evt.EVT_C_FIND, FindHandler(archive)),
        ]
        for register in REGISTRY:
            handlers.extend(register(ae, archive))
    else:
        _drop_query_contexts(ae)
    address = (settings.dimse_host, settings.dimse_port)
    server = _listen(ae, address, handlers, reuse_port, shared)
    server.router = storage_router(archive, ae, policy, incoming, storage=storage, query=query)
    _serve(ae, server)
    dimse = DimseServer(ae, server, incoming)
    services = "+".join(name for name, on in (("storage", storage), ("query", query)) if on)
    log.info("DIMSE %s (%s) listening on %s:%d", settings.ae_title, services, *dimse.address)
    return dimse
