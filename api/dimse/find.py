"""The C-FIND SCP handler (Patient Root and Study Root, every level).

One query engine serves QIDO-RS and C-FIND (`api.matching`); this module only
adapts it to DIMSE: identifier -> Query, read-your-writes barrier, DICOM JSON
matches -> response identifiers, one pending (0xFF00) response per match,
C-CANCEL honoured between matches (0xFE00), and failures that say so:
`Invalid` -> its status (0xA900 identifier does not match SOP class, 0xC000
unable to process...), `Unavailable` -> 0xA700, anything else -> 0xC000 with
an Error Comment and the traceback in the log. Never an empty success for a
query that was not run, nor a truncated answer: beyond the engine's C-FIND
limit (`api.query_model.CFIND_MAX_MATCHES`) the query is refused with 0xA700.

Extended negotiation (PS3.4 C.5.1.1.1, SOP Class Extended Negotiation):
relational queries, combined date-time matching and fuzzy semantic matching
of person names are accepted when the SCU asks; timezone query adjustment is
declined. What was agreed for the context's SOP class is passed on to the
query engine.

Each response holds exactly the keys of the request (zero length when the
match has no value, as PS3.4 C.4.1.1.3.2 asks), plus Query/Retrieve Level,
Retrieve AE Title (ours) and Specific Character Set: "ISO_IR 192" when any
returned value is not ASCII, else the one the request named, else none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from api import matching
from infra.errors import Invalid, Unavailable
from infra.settings import Settings
from schemas.dicom_json import json_to_dataset

from .ae import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from .store import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, failure, is_failure_status

log = logging.getLogger("chronicle.dimse")

PENDING = 0xFF00
CANCELLED = 0xFE00
UTF8 = "ISO_IR 192"

#: Query/Retrieve information model (FIND SOP class) -> api.matching's model name.
MODELS: dict[str, str] = {PATIENT_ROOT_FIND: "PATIENT", STUDY_ROOT_FIND: "STUDY"}

_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
_RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
#: Set by us on every response, whatever the request held.
_OURS = frozenset({_SPECIFIC_CHARACTER_SET, _QUERY_RETRIEVE_LEVEL, _RETRIEVE_AE_TITLE})

FindResponse = tuple["int | Dataset", "Dataset | None"]


class FindArchive(Protocol):
    """The parts of `api.wiring.Archive` the C-FIND handler uses."""

    @property
    def settings(self) -> Settings: ...

    @property
    def index(self) -> Any: ...

    def read_barrier(self) -> bool: ...


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, MultiValue | list | tuple):
        for item in value:
            yield from _texts(item)
    elif value is not None and not isinstance(value, bytes | int | float):
        yield str(value)


def is_ascii(ds: Dataset) -> bool:
    """True when every text value (sequences included) is plain ASCII."""
    for elem in ds.iterall():
        if elem.VR == "SQ":
            continue
        if not all(text.isascii() for text in _texts(elem.value)):
            return False
    return True


def build_response(
    match: dict[str, Any], identifier: Dataset, *, level: str, ae_title: str
) -> Dataset:
    """The response identifier for one match: the requested keys, ours added."""
    found = json_to_dataset(match)
    response = Dataset()
    for elem in identifier:
        if elem.tag.element == 0 or elem.tag in _OURS:
            continue
        if elem.tag in found:
            response[elem.tag] = found[elem.tag]
        else:
            response.add_new(elem.tag, elem.VR, [] if elem.VR == "SQ" else None)
    response.QueryRetrieveLevel = level
    response.RetrieveAETitle = ae_title
    if not is_ascii(response):
        response.SpecificCharacterSet = UTF8
    elif _SPECIFIC_CHARACTER_SET in identifier and identifier.SpecificCharacterSet:
        response.SpecificCharacterSet = identifier.SpecificCharacterSet
    return response


#: Extended negotiation bytes we accept (1) or decline (0), in PS3.4 order:
#: relational queries, combined date-time matching, fuzzy semantic matching
#: of person names, timezone query adjustment.
SUPPORTED_OPTIONS = (1, 1, 1, 0)


def negotiate_options(app_info: dict[Any, bytes]) -> dict[Any, bytes]:
    """EVT_SOP_EXTENDED: answer the FIND options asked for, same length as asked."""
    answers: dict[Any, bytes] = {}
    for sop_class, asked in app_info.items():
        if str(sop_class) in MODELS and asked:
            fields = asked[: len(SUPPORTED_OPTIONS)]
            answers[sop_class] = bytes(
                int(bool(byte)) & ours
                for byte, ours in zip(fields, SUPPORTED_OPTIONS, strict=False)
            )
    return answers


@dataclass(frozen=True, slots=True)
class QueryOptions:
    relational: bool = False
    combined_datetime: bool = False
    fuzzy: bool = False

    @classmethod
    def agreed(cls, assoc: Any, sop_class: str) -> QueryOptions:
        """The options this association agreed for `sop_class` (none if not negotiated)."""
        agreed = assoc.acceptor.sop_class_extended.get(sop_class, b"")
        flags = [bool(agreed[i]) if i < len(agreed) else False for i in range(3)]
        return cls(*flags)


def find_failure(exc: Exception) -> Dataset:
    """The failure status for an exception raised while answering a C-FIND."""
    if isinstance(exc, Invalid):
        status = exc.status if is_failure_status(exc.status) else CANNOT_UNDERSTAND
        return failure(status, str(exc))
    if isinstance(exc, Unavailable):
        return failure(OUT_OF_RESOURCES, f"out of resources: {exc}")
    return failure(CANNOT_UNDERSTAND, f"cannot process: {type(exc).__name__}")


class FindHandler:
    """EVT_C_FIND handler bound to an archive: a generator of (status, identifier)."""

    def __init__(self, archive: FindArchive) -> None:
        self._archive = archive

    def __call__(self, event: Any) -> Iterator[FindResponse]:
        started = time.perf_counter()
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            identifier, level, matches = self._run(event, calling)
        except Exception as exc:
            self._log_failure(calling, exc)
            yield find_failure(exc), None
            return
        sent = 0
        for match in matches:
            if event.is_cancelled:
                log.info("C-FIND from %s cancelled after %d of %d", calling, sent, len(matches))
                yield CANCELLED, None
                return
            try:
                response = build_response(
                    match, identifier, level=level, ae_title=self._archive.settings.ae_title
                )
            except Exception as exc:
                self._log_failure(calling, exc)
                yield find_failure(exc), None
                return
            sent += 1
            yield PENDING, response
        log.info(
            "C-FIND from %s at %s level: %d matches in %.1f ms",
            calling,
            level,
            sent,
            (time.perf_counter() - started) * 1000,
        )

    def _run(self, event: Any, calling: str) -> tuple[Dataset, str, list[dict[str, Any]]]:
        identifier: Dataset = event.identifier
        sop_class = str(event.context.abstract_syntax)
        model = MODELS.get(sop_class)
        if model is None:
            raise Invalid(f"not a FIND model: {sop_class}", 0xA900)
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        options = QueryOptions.agreed(event.assoc, sop_class)
        query = matching.query_from_identifier(
            identifier,
            model=model,
            relational=options.relational,
            combined_datetime=options.combined_datetime,
            fuzzy=options.fuzzy,
        )
        if not self._archive.read_barrier():
            log.warning("C-FIND from %s answered from a lagging projection", calling)
        page = matching.search_page(self._archive.index, query)
        if page.more:
            # C-FIND cannot page: a truncated answer would pass for a complete one.
            raise Unavailable(f"more than {len(page.results)} matches; narrow the query")
        return identifier, level, page.results

    @staticmethod
    def _log_failure(calling: str, exc: Exception) -> None:
        if isinstance(exc, Invalid | Unavailable):
            log.warning("C-FIND from %s refused: %s", calling, exc)
        else:
            log.exception("C-FIND from %s failed unexpectedly", calling, exc_info=exc)
