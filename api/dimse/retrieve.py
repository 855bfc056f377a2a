"""What C-MOVE, C-GET and `chronicle send` share: which instances, over which contexts, how.

Resolution (`resolve`): a retrieve identifier names instances by unique keys
only (PS3.4 C.4.2.2.1): its level's key (a UID list is allowed) and, for a
hierarchical retrieve, one value for each level above. Other keys are
ignored. The identifier is checked by the one query engine
(`api.matching.query_from_identifier`, which enforces the hierarchical rules
unless relational retrieval was negotiated). Study UIDs, or one study's
series UIDs, or one series' instance UIDs are then looked up directly in
the catalog (`api.catalog.list_instances`, one query per UID); anything else
(a patient, a relational identifier without the keys above) runs as an
IMAGE-level relational query of the engine for the instances' UIDs, then
the catalog. At most 65535 sub-operations: the response counts are US.

Presentation contexts and the as-stored / decoded / transcoded choice:
`api.dimse.delivery` (re-exported here). `part10_file` gives the file that
goes out: the blob's own file when the blob store has one, else a spooled
copy or the converted bytes (`api.transcode`), in `<data_dir>/outgoing`,
removed afterwards.
C-MOVE and `chronicle send` send it with `api.dimse.peer.PeerAssociation`, C-GET
with pynetdicom (api/dimse/get.py).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from api import catalog, matching, pixels, transcode
from api.catalog import InstanceRow
from api.query_model import Level
from infra.errors import Invalid, Unavailable
from infra.ports import BlobStore, ProjectionStore
from infra.settings import Settings

from .delivery import MAX_CONTEXTS as MAX_CONTEXTS
from .delivery import TRANSCODE_TARGETS as TRANSCODE_TARGETS
from .delivery import Delivery as Delivery
from .delivery import choose_delivery as choose_delivery
from .delivery import delivered_syntax as delivered_syntax
from .delivery import storage_contexts as storage_contexts
from .find import QueryOptions, negotiate_options
from .store import CANNOT_UNDERSTAND, failure, is_failure_status

log = logging.getLogger("chronicle.dimse")

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: Retrieve information model (MOVE/GET SOP class) -> api.matching's model name.
MODELS: dict[str, str] = {
    PATIENT_ROOT_MOVE: "PATIENT",
    STUDY_ROOT_MOVE: "STUDY",
    PATIENT_ROOT_GET: "PATIENT",
    STUDY_ROOT_GET: "STUDY",
}

PENDING = 0xFF00
CANCELLED = 0xFE00
UNABLE_TO_CALCULATE_MATCHES = 0xA701
IDENTIFIER_MISMATCH = 0xA900
#: Number of Remaining/Completed/... Sub-operations are US.
MAX_SUBOPERATIONS = 65535
EXPLICIT = pixels.EXPLICIT_VR_LITTLE_ENDIAN
IMPLICIT = pixels.IMPLICIT_VR_LITTLE_ENDIAN
SPOOL_CHUNK = 1024 * 1024

#: Each level's unique key, top down (PS3.4 C.6.1.1 and C.6.2.1).
UNIQUE_KEYS = (
    ("PATIENT", "PatientID"),
    ("STUDY", "StudyInstanceUID"),
    ("SERIES", "SeriesInstanceUID"),
    ("IMAGE", "SOPInstanceUID"),
)
_SOP_CLASS_UID_TAG = "00080016"
_TOO_MANY = f"more than {MAX_SUBOPERATIONS} instances; retrieve less at once"

#: Extended negotiation bytes for MOVE/GET (PS3.4 C.5.2.1, C.5.3.1): relational
#: retrieval accepted, Enhanced Multi-Frame Image Conversion declined.
SUPPORTED_OPTIONS = (1, 0)


class RetrieveArchive(Protocol):
    """The parts of `api.wiring.Archive` retrieval uses."""

    @property
    def settings(self) -> Settings: ...

    @property
    def index(self) -> Any: ...

    @property
    def blobs(self) -> BlobStore: ...

    def read_barrier(self) -> bool: ...


# -- what to send ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One instance to send: its identity, stored syntax, and how to read its Part-10 bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    open: Callable[[], BinaryIO] = field(compare=False, repr=False)

    @classmethod
    def from_row(cls, row: InstanceRow, blobs: BlobStore) -> Outgoing:
        opener = functools.partial(blobs.get, row.blob_key)
        return cls(row.sop_class_uid, row.sop_instance_uid, row.transfer_syntax_uid, opener)


def unique_key_identifier(identifier: Dataset, *, model: str) -> Dataset:
    """The identifier reduced to its level and the unique keys at or above it."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    levels = [name for name, _ in UNIQUE_KEYS]
    if level not in levels or (model == "STUDY" and level == "PATIENT"):
        raise Invalid(f"QueryRetrieveLevel {level!r} is not valid here", IDENTIFIER_MISMATCH)
    reduced = Dataset()
    if "SpecificCharacterSet" in identifier:
        reduced.SpecificCharacterSet = identifier.SpecificCharacterSet
    reduced.QueryRetrieveLevel = level
    first = 0 if model == "PATIENT" else 1
    for name, keyword in UNIQUE_KEYS[first : levels.index(level) + 1]:
        if _has_value(identifier.get(keyword)):
            reduced.add(identifier[keyword])
        elif name == level:
            raise Invalid(f"a {level} retrieve needs {keyword}", IDENTIFIER_MISMATCH)
    return reduced


def _has_value(value: Any) -> bool:
    if isinstance(value, MultiValue | list):
        return any(str(item).strip() for item in value)
    return value is not None and str(value).strip() != ""


def resolve(
    index: ProjectionStore, identifier: Dataset, *, model: str, relational: bool
) -> list[InstanceRow]:
    """The live instances a retrieve identifier names, study by study, in catalog order."""
    reduced = unique_key_identifier(identifier, model=model)
    query = matching.query_from_identifier(reduced, model=model, relational=relational)
    direct = _from_catalog(index, reduced)
    if direct is not None:
        named = _unique(direct)
        if len(named) > MAX_SUBOPERATIONS:
            raise Invalid(_TOO_MANY, UNABLE_TO_CALCULATE_MATCHES)
        return named
    instances = dataclasses.replace(
        query,
        level=Level.IMAGE,
        include=(_SOP_CLASS_UID_TAG,),
        limit=MAX_SUBOPERATIONS,
        relational=True,
    )
    page = matching.search_page(index, instances)
    if page.more:
        raise Invalid(_TOO_MANY, UNABLE_TO_CALCULATE_MATCHES)
    wanted: dict[str, set[str]] = {}
    for match in page.results:
        study = _first_value(match, "0020000D")
        wanted.setdefault(study, set()).add(_first_value(match, "00080018"))
    rows: list[InstanceRow] = []
    for study, sops in wanted.items():
        rows += [r for r in catalog.list_instances(index, study) if r.sop_instance_uid in sops]
    return rows


def _from_catalog(index: ProjectionStore, reduced: Dataset) -> list[InstanceRow] | None:
    """Study UIDs, or one study's series UIDs, or one series' SOP Instance UIDs:
    the catalog answers those in one query each. None: the engine must (a
    patient to check, or a relational identifier without the keys above)."""
    level = str(reduced.QueryRetrieveLevel)
    studies = _uids(reduced, "StudyInstanceUID")
    if "PatientID" in reduced or not studies:
        return None
    if level == "STUDY":
        return [row for study in studies for row in catalog.list_instances(index, study)]
    series = _uids(reduced, "SeriesInstanceUID")
    if len(studies) != 1 or not series:
        return None
    if level == "SERIES":
        return [row for one in series for row in catalog.list_instances(index, studies[0], one)]
    sops = set(_uids(reduced, "SOPInstanceUID"))
    if len(series) != 1:
        return None
    rows = catalog.list_instances(index, studies[0], series[0])
    return [row for row in rows if row.sop_instance_uid in sops]


def _uids(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    values = value if isinstance(value, MultiValue | list) else [value]
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def _unique(rows: list[InstanceRow]) -> list[InstanceRow]:
    """Each instance once (a study named twice), in the order first named."""
    seen: dict[str, InstanceRow] = {}
    for row in rows:
        seen.setdefault(row.sop_instance_uid, row)
    return list(seen.values())


def _first_value(match: dict[str, Any], tag: str) -> str:
    values = match.get(tag, {}).get("Value") or [""]
    return str(values[0])


def plan_retrieve(archive: RetrieveArchive, event: Any, calling: str) -> list[Outgoing]:
    """Read-your-writes, then the instances a C-MOVE/C-GET request names."""
    sop_class = str(event.context.abstract_syntax)
    model = MODELS.get(sop_class)
    if model is None:
        raise Invalid(f"not a retrieve model: {sop_class}", IDENTIFIER_MISMATCH)
    identifier: Dataset = event.identifier
    if not archive.read_barrier():
        log.warning("retrieve from %s resolved on a lagging projection", calling)
    relational = QueryOptions.agreed(event.assoc, sop_class).relational
    rows = resolve(archive.index, identifier, model=model, relational=relational)
    return [Outgoing.from_row(row, archive.blobs) for row in rows]


def retrieve_failure(exc: Exception) -> Dataset:
    """The C-MOVE/C-GET failure status for an error raised before any sub-operation."""
    if isinstance(exc, Invalid):
        status = exc.status if is_failure_status(exc.status) else CANNOT_UNDERSTAND
        return failure(status, str(exc))
    if isinstance(exc, Unavailable):
        return failure(UNABLE_TO_CALCULATE_MATCHES, f"out of resources: {exc}")
    return failure(CANNOT_UNDERSTAND, f"cannot process: {type(exc).__name__}")


def log_refusal(what: str, calling: str, exc: Exception) -> None:
    if isinstance(exc, Invalid | Unavailable):
        log.warning("%s from %s refused: %s", what, calling, exc)
    else:
        log.exception("%s from %s failed unexpectedly", what, calling, exc_info=exc)


# -- negotiation -----------------------------------------------------------------


def negotiate_retrieve_options(app_info: dict[Any, bytes]) -> dict[Any, bytes]:
    """Answer the MOVE/GET extended negotiation asked for, same length as asked."""
    answers: dict[Any, bytes] = {}
    for sop_class, asked in app_info.items():
        if str(sop_class) in MODELS and asked:
            fields = asked[: len(SUPPORTED_OPTIONS)]
            answers[sop_class] = bytes(
                int(bool(byte)) & ours
                for byte, ours in zip(fields, SUPPORTED_OPTIONS, strict=False)
            )
    return answers


def on_sop_extended(event: Any) -> dict[Any, bytes]:
    """EVT_SOP_EXTENDED for FIND, MOVE and GET together.

    pynetdicom keeps one handler per intervention event; binding this one
    (after the server's FIND-only handler) answers all three.
    """
    return {**negotiate_options(event.app_info), **negotiate_retrieve_options(event.app_info)}


# -- how to send -------------------------------------------------------------------


class SubOperationFailed(Exception):
    """A C-STORE sub-operation that could not be attempted (no usable context...)."""


@dataclass(frozen=True, slots=True)
class Part10File:
    """An instance as it goes out: a Part-10 file, by name and open for reading."""

    name: str
    file: io.BufferedIOBase

    @property
    def path(self) -> Path:
        return Path(self.name)

    @property
    def size(self) -> int:
        return os.fstat(self.file.fileno()).st_size


@contextmanager
def part10_file(item: Outgoing, delivery: Delivery, spool: Path) -> Iterator[Part10File]:
    """The instance as it will go out: the blob's own file when it has one (as
    stored from a file blob store), else a spooled copy or the converted bytes."""
    stream = item.open()
    try:
        if not delivery.target:
            if _is_local_file(stream):
                yield Part10File(stream.name, stream)  # type: ignore[arg-type]
                return
            with _spooled(spool, lambda out: shutil.copyfileobj(stream, out, SPOOL_CHUNK)) as part:
                yield part
            return
        try:
            stored = b"".join(iter(lambda: stream.read(SPOOL_CHUNK), b""))
            data = transcode.transcode(stored, delivery.target)
        except pixels.TranscodeUnsupported as exc:
            raise SubOperationFailed(exc.reason) from exc
    finally:
        stream.close()
    with _spooled(spool, lambda out: out.write(data)) as part:
        yield part


def _is_local_file(stream: BinaryIO) -> bool:
    """A plain local file (a file blob store's blob), not a network body or a buffer."""
    return isinstance(stream, io.BufferedReader) and isinstance(getattr(stream, "name", None), str)


@contextmanager
def _spooled(spool: Path, fill: Callable[[BinaryIO], object]) -> Iterator[Part10File]:
    spool.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool, prefix="cstore-out-", suffix=".dcm") as out:
        fill(out)  # type: ignore[arg-type]
        out.flush()
        out.seek(0)
        yield Part10File(out.name, out.file)  # type: ignore[arg-type]


def no_delay(assoc: Any, on: bool = True) -> None:
    """TCP_NODELAY on (or off) for an association's socket.

    Off while a C-MOVE's sub-operations run: its Pending responses are small
    writes, and Nagle's algorithm then sends those written while one is
    unacknowledged together, instead of waking the requestor ~1000 times a
    second. On again before the final response, which it flushes at once.
    """
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(on))
    except OSError as exc:
        log.debug("TCP_NODELAY not changed: %s", exc)


def spool_directory(settings: Settings) -> Path:
    """Where converted instances wait for their C-STORE (on the data disk)."""
    return settings.data_dir.resolve() / "outgoing"
