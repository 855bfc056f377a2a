"""The C-STORE SCP handler: hand the received file to ingest, answer truthfully.

pynetdicom (with STORE_RECV_CHUNKED_DATASET) has already written the dataset
to a temporary Part-10 file whose File Meta carries the command's Affected SOP
Class / Instance UIDs and the context's transfer syntax, so the handler calls
`ingest.store_part10_file(event.dataset_path, ...)` and nothing is decoded or
held in memory here. Statuses (PS3.4 B.2.3):

- 0x0000 only after ingest returned (blob and event durable), duplicates too;
- `Invalid` -> its `.status` (0xA900 does not match SOP class, 0xC000 cannot
  understand, 0x0122 SOP class not supported, 0xA700 too large...) with the
  message as Error Comment; a non-failure status there becomes 0xC000;
- `Unavailable` (log or blob store down, disk below the floor) -> 0xA700;
- anything else -> 0xC000 with an Error Comment, logged with its traceback.
  pynetdicom's own fallback for a raising handler is 0xC211; we never let it
  come to that, and never answer success for something not kept.
"""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.dataset import Dataset

from infra.errors import Invalid, Unavailable
from infra.settings import Settings
from schemas.events import Source

if TYPE_CHECKING:
    from ingest.service import StoreOutcome

log = logging.getLogger("chronicle.dimse")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: Error Comment is LO: at most 64 characters of the default repertoire.
ERROR_COMMENT_MAX = 64

_SOP_INSTANCE_UID = 0x00080018
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Enough for the File Meta and the group 0008 elements before the UID.
HEAD_BYTES = 16 * 1024
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: Transfer syntaxes whose whole dataset is deflated (PS3.5 A.5, A.6).
DEFLATED_DATASETS = frozenset(
    {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"}
)


class StoreService(Protocol):
    def store_part10_file(self, path: Path, *, source: Source) -> StoreOutcome: ...

    def store_dataset_file(
        self,
        path: Path,
        *,
        transfer_syntax_uid: str,
        source: Source,
        offset: int = 0,
        expected_sop_instance_uid: str | None = None,
        dataset_sha256: str | None = None,
        received: bool = False,
    ) -> StoreOutcome: ...


class StoreArchive(Protocol):
    """The parts of `api.wiring.Archive` the C-STORE handler uses."""

    @property
    def settings(self) -> Settings: ...

    @property
    def ingest(self) -> StoreService: ...


def failure(status: int, comment: str) -> Dataset:
    """A status dataset pynetdicom copies into the response (Status + Error Comment)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = error_comment(comment)
    return ds


def error_comment(comment: str) -> str:
    """Error Comment is LO: 64 characters of the default repertoire, no backslash."""
    text = comment.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    return text[:ERROR_COMMENT_MAX]


def is_failure_status(status: int) -> bool:
    """Failure statuses a C-STORE response may carry (PS3.4 B.2.3, PS3.7 C)."""
    return (
        0xA000 <= status <= 0xAFFF
        or 0xC000 <= status <= 0xCFFF
        or 0x0100 <= status <= 0x01FF
        or 0x0210 <= status <= 0x02FF
    )


def invalid_status(exc: Invalid) -> int:
    return exc.status if is_failure_status(exc.status) else CANNOT_UNDERSTAND


def source_of(assoc: Any) -> Source:
    """The route: calling/called AE titles and the peer's ip:port."""
    address = str(assoc.requestor.address)
    host = f"[{address}]" if ":" in address else address
    return Source(
        "DIMSE",
        calling_ae=str(assoc.requestor.ae_title).strip(),
        called_ae=str(assoc.acceptor.ae_title).strip(),
        peer=f"{host}:{assoc.requestor.port}",
    )


def _element_header(
    head: bytes, pos: int, *, implicit: bool, order: str
) -> tuple[int, int, int] | None:
    """(tag, header length, value length) of the element at `pos`, or None past the end."""
    if pos + 8 > len(head):
        return None
    group, element = struct.unpack_from(order + "HH", head, pos)
    if implicit:
        return (group << 16) | element, 8, struct.unpack_from(order + "I", head, pos + 4)[0]
    if head[pos + 4 : pos + 6] in LONG_VRS:
        if pos + 12 > len(head):
            return None
        return (group << 16) | element, 12, struct.unpack_from(order + "I", head, pos + 8)[0]
    return (group << 16) | element, 8, struct.unpack_from(order + "H", head, pos + 6)[0]


def _dataset_start(head: bytes) -> int | None:
    """Offset just past the File Meta (always Explicit VR Little Endian)."""
    if head[128:132] != b"DICM":
        return None
    pos = 132
    while (found := _element_header(head, pos, implicit=False, order="<")) is not None:
        tag, header, length = found
        if tag >> 16 != 0x0002:
            return pos
        pos += header + length
    return None


def dataset_sop_instance_uid(path: Path, transfer_syntax: str) -> str | None:
    """The dataset's own SOP Instance UID, from the file's first 16 KB.

    A walk over the leading elements (only group 0008 precedes the UID in a
    valid dataset): ~30 us against ~600 us for pydicom's `read_partial`. None when it
    cannot be had that way (deflated dataset, undefined length, truncated,
    absent): ingest's full parse then decides.
    """
    if transfer_syntax in DEFLATED_DATASETS:
        return None
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    order = ">" if transfer_syntax == "1.2.840.10008.1.2.2" else "<"
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    pos = _dataset_start(head)
    while pos is not None and (found := _element_header(head, pos, implicit=implicit, order=order)):
        tag, header, length = found
        if tag > _SOP_INSTANCE_UID or length == UNDEFINED_LENGTH:
            return None
        if tag == _SOP_INSTANCE_UID:
            value = head[pos + header : pos + header + length]
            return value.rstrip(b"\0 ").decode("ascii", "replace")
        pos += header + length
    return None


class StoreHandler:
    """EVT_C_STORE handler bound to an archive: `StoreHandler(archive)(event)`."""

    def __init__(self, archive: StoreArchive) -> None:
        self._archive = archive

    def __call__(self, event: Any) -> Dataset | int:
        started = time.perf_counter()
        source = source_of(event.assoc)
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            path = Path(event.dataset_path)
            self._precheck(path, sop_uid, str(event.context.transfer_syntax))
            outcome = self._archive.ingest.store_part10_file(path, source=source)
        except Invalid as exc:
            status = invalid_status(exc)
            log.warning(
                "C-STORE from %s: %s refused 0x%04X: %s", source.calling_ae, sop_uid, status, exc
            )
            return failure(status, str(exc))
        except Unavailable as exc:
            log.error("C-STORE from %s: %s not kept (0xA700): %s", source.calling_ae, sop_uid, exc)
            return failure(OUT_OF_RESOURCES, f"out of resources: {exc}")
        except Exception as exc:
            log.exception("C-STORE from %s: %s failed unexpectedly", source.calling_ae, sop_uid)
            return failure(CANNOT_UNDERSTAND, f"cannot process: {type(exc).__name__}")
        log.info(
            "C-STORE from %s: %s stored%s in %.1f ms",
            source.calling_ae,
            sop_uid,
            " (duplicate)" if outcome.duplicate else "",
            (time.perf_counter() - started) * 1000,
        )
        return SUCCESS

    def _precheck(self, path: Path, sop_uid: str, transfer_syntax: str) -> None:
        size = path.stat().st_size
        limit = self._archive.settings.max_body_bytes
        if size > limit:
            raise Invalid(f"dataset of {size} bytes exceeds limit {limit}", OUT_OF_RESOURCES)
        in_dataset = dataset_sop_instance_uid(path, transfer_syntax)
        if in_dataset is not None and in_dataset != sop_uid:
            # The File Meta pynetdicom wrote carries the command's UID; a
            # dataset naming another instance must not be kept under either.
            raise Invalid(
                f"dataset SOP Instance UID {in_dataset} differs from the command's",
                DOES_NOT_MATCH_SOP_CLASS,
            )


def store_received_dataset(
    archive: StoreArchive,
    path: Path,
    *,
    transfer_syntax: str,
    sop_instance_uid: str,
    source: Source,
    offset: int = 0,
    dataset_sha256: str | None = None,
) -> tuple[int, str]:
    """(status, error comment) for a data set received on a storage association
    served by `api.dimse.storage_link`: the same rules as `StoreHandler`. The
    data set starts at `offset` in `path` (after the File Meta the receiver
    wrote); the file is the receiver's, so ingest may keep it as the blob."""
    try:
        size = path.stat().st_size
        limit = archive.settings.max_body_bytes
        if size > limit:
            raise Invalid(f"dataset of {size} bytes exceeds limit {limit}", OUT_OF_RESOURCES)
        # Ingest parses the data set anyway and refuses one naming another
        # instance before anything is kept: no second read here.
        outcome = archive.ingest.store_dataset_file(
            path,
            transfer_syntax_uid=transfer_syntax,
            source=source,
            offset=offset,
            expected_sop_instance_uid=sop_instance_uid,
            dataset_sha256=dataset_sha256,
            received=True,
        )
    except Invalid as exc:
        status = invalid_status(exc)
        log.warning(
            "C-STORE from %s: %s refused 0x%04X: %s",
            source.calling_ae,
            sop_instance_uid,
            status,
            exc,
        )
        return status, error_comment(str(exc))
    except Unavailable as exc:
        log.error(
            "C-STORE from %s: %s not kept (0xA700): %s", source.calling_ae, sop_instance_uid, exc
        )
        return OUT_OF_RESOURCES, error_comment(f"out of resources: {exc}")
    except Exception as exc:
        log.exception(
            "C-STORE from %s: %s failed unexpectedly", source.calling_ae, sop_instance_uid
        )
        return CANNOT_UNDERSTAND, error_comment(f"cannot process: {type(exc).__name__}")
    if outcome.duplicate:
        log.info("C-STORE from %s: %s was a duplicate", source.calling_ae, sop_instance_uid)
    return SUCCESS, ""
