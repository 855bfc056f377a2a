"""Chronicle's Application Entity: what it accepts, with which encodings.

SCP roles: Verification, every storage SOP class pynetdicom knows (its
`_STORAGE_CLASSES`, which `AllStoragePresentationContexts` lists in full:
pynetdicom caps *requested* contexts at 128, not supported ones), and Patient
Root / Study Root Query/Retrieve FIND.

Transfer syntaxes: every dataset encoding in pydicom's UID dictionary plus the
newer ones it lacks (JPEG XL, Deflated Image Frame Compression), accepted on
every context: uncompressed (Implicit/Explicit VR LE, Explicit VR BE,
Deflated), JPEG (baseline, extended, lossless, SV1 and the retired processes),
JPEG-LS, JPEG 2000 (Part 1 and Part 2), HTJ2K, RLE, JPEG XL, MPEG-2, H.264,
HEVC, JPIP. Left out: SMPTE ST 2110 (DICOM-RTV streams, not DIMSE datasets)
and the retired non-dataset encodings (RFC 2557 MIME, XML, Papyrus 3). Q/R
contexts also leave out the two JPIP Referenced Deflate syntaxes: pydicom
does not flag them as deflated, so pynetdicom would misread an identifier.

Preference: the SCU's. pynetdicom's acceptor picks the first syntax in *its
own* list that the requestor also proposed, so `prefer_requestor_order` (run
from EVT_REQUESTED, on the association's private copy of the supported
contexts, made cheap by `shared_contexts`) rewrites that list into the order
the requestor proposed. An archive keeps what it is sent: taking the sender's
first choice (usually the encoding it holds) spares the sender a transcode and
never picks a lossy syntax listed after a lossless one. When one abstract
syntax comes in several contexts, their lists are concatenated in context-ID
order, so a later context may get an earlier context's first choice.

Large datasets: `_config.STORE_RECV_CHUNKED_DATASET` makes pynetdicom write
each C-STORE dataset straight to a temporary Part-10 file (128 zero bytes,
"DICM", File Meta built from the command's Affected SOP Class / Instance UIDs
and the context's transfer syntax with pynetdicom's implementation UID, then
the dataset bytes exactly as received, flushed per PDV, never fsynced) and
hand its path to the handler as `event.dataset_path`; it deletes the file
once the handler returns. The switch is process-wide, as is the directory it
writes to (see `server.set_receive_directory`).

PDU size: `settings.max_pdu_size` is the largest PDU we tell the peer we
accept; 0 (unlimited, the default and the recommendation) lets the peer use
its own maximum, so a dataset arrives in fewer PDUs: fewer reads, PDV headers
and Python-level loop turns per megabyte. dcmtk then sends 128 KB PDUs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Protocol

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, _config
from pynetdicom.presentation import PresentationContext

from infra.settings import Settings

VERIFICATION = UID("1.2.840.10008.1.1")
PATIENT_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.1.1")
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")

#: Standard transfer syntaxes newer than pydicom 3.0's dictionary:
#: (UID, name, keyword). Registered so pydicom and pynetdicom treat them as
#: transfer syntaxes (explicit VR little endian datasets, encapsulated pixels).
NEWER_TRANSFER_SYNTAXES: tuple[tuple[str, str, str], ...] = (
    ("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", "JPEGXLLossless"),
    ("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", "JPEGXLJPEGRecompression"),
    ("1.2.840.10008.1.2.4.112", "JPEG XL", "JPEGXL"),
    ("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression", "DeflatedImageFrameCompression"),
)

UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
)

#: Transfer syntaxes that do not carry a DIMSE dataset.
NOT_FOR_DIMSE = frozenset(
    {
        "1.2.840.10008.1.2.6.1",  # RFC 2557 MIME encapsulation (retired)
        "1.2.840.10008.1.2.6.2",  # XML encoding (retired)
        "1.2.840.10008.1.20",  # Papyrus 3 Implicit VR Little Endian (retired)
        "1.2.840.10008.1.2.7.1",  # SMPTE ST 2110-20 progressive (DICOM-RTV)
        "1.2.840.10008.1.2.7.2",  # SMPTE ST 2110-20 interlaced (DICOM-RTV)
        "1.2.840.10008.1.2.7.3",  # SMPTE ST 2110-30 audio (DICOM-RTV)
    }
)

#: Deflated datasets pydicom does not recognise as deflated (see module doc).
MISREAD_BY_PYDICOM = frozenset({"1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"})

QUERY_MODELS = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)


def register_newer_transfer_syntaxes() -> None:
    """Teach pydicom the standard transfer syntaxes its dictionary lacks (idempotent)."""
    for uid, name, keyword in NEWER_TRANSFER_SYNTAXES:
        UID_dictionary.setdefault(uid, (name, "Transfer Syntax", "", "", keyword))


def _uid_sort_key(uid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in uid.split("."))


def accepted_transfer_syntaxes() -> list[UID]:
    """Every transfer syntax accepted for storage: uncompressed first, then by UID."""
    register_newer_transfer_syntaxes()
    known = {
        uid
        for uid, entry in UID_dictionary.items()
        if entry[1] == "Transfer Syntax" and uid not in NOT_FOR_DIMSE
    }
    rest = sorted(known.difference(UNCOMPRESSED), key=_uid_sort_key)
    return [UID(uid) for uid in (*UNCOMPRESSED, *rest)]


def query_transfer_syntaxes() -> list[UID]:
    return [ts for ts in accepted_transfer_syntaxes() if ts not in MISREAD_BY_PYDICOM]


def storage_sop_classes() -> list[UID]:
    return [UID(str(cx.abstract_syntax)) for cx in AllStoragePresentationContexts]


class HasSettings(Protocol):
    @property
    def settings(self) -> Settings: ...


def build_ae(archive: HasSettings) -> AE:
    """An AE configured from the archive's Settings; `server.start_dimse` starts it."""
    settings = archive.settings
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=settings.ae_title)
    storage = accepted_transfer_syntaxes()
    ae.add_supported_context(VERIFICATION, storage)
    for sop_class in storage_sop_classes():
        ae.add_supported_context(sop_class, storage)
    for model in QUERY_MODELS:
        ae.add_supported_context(model, query_transfer_syntaxes())
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.require_called_aet = True
    return ae


def _proposed_orders(contexts: Iterable[Any]) -> dict[str, list[str]]:
    """Abstract syntax -> the transfer syntaxes proposed for it, first seen first."""
    orders: dict[str, list[str]] = {}
    for cx in sorted(contexts, key=lambda c: int(c.context_id or 0)):
        order = orders.setdefault(str(cx.abstract_syntax), [])
        order.extend(str(ts) for ts in cx.transfer_syntax if str(ts) not in order)
    return orders


def prefer_requestor_order(assoc: Any) -> None:
    """Make pynetdicom accept the requestor's first supported syntax per context.

    Mutates only this association's deep copy of the supported contexts
    (pynetdicom copies them per association before EVT_REQUESTED).
    """
    proposed = _proposed_orders(assoc.requestor.primitive.presentation_context_definition_list)
    for cx in assoc.acceptor.supported_contexts:
        order = proposed.get(str(cx.abstract_syntax))
        if order is None:
            continue
        ours = {str(ts) for ts in cx.transfer_syntax}
        # Assigning builds a new list: the old one is shared (SharedContext).
        cx.transfer_syntax = [UID(ts) for ts in order if ts in ours]


class SharedContext(PresentationContext):
    """A supported context whose per-association copy is cheap.

    pynetdicom deep-copies the server's supported contexts for every
    association; with ~170 SOP classes x ~60 transfer syntaxes that took
    ~110 ms per association here. A shallow copy is enough: UIDs are
    immutable and `prefer_requestor_order` replaces a copy's list instead of
    changing it.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContext:
        return copy.copy(self)


def shared_contexts(contexts: Iterable[PresentationContext]) -> list[PresentationContext]:
    """The same contexts as SharedContext, for `AE.start_server(contexts=...)`."""
    shared: list[PresentationContext] = []
    for cx in contexts:
        twin = SharedContext()
        twin.abstract_syntax = cx.abstract_syntax
        twin.transfer_syntax = list(cx.transfer_syntax)
        twin.scu_role = cx.scu_role
        twin.scp_role = cx.scp_role
        shared.append(twin)
    return shared
