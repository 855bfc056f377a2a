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
Retrieve AE Title (ours) and Specific Character Set.

Character sets (PS3.5 6.1, PS3.4 C.4.1.1.3.1): the request's text is decoded
the way ingest decodes stored data (its Specific Character Set, else the
configured default; bytes invalid in the declared set fall back to the
default). A response is encoded in the request's character set when every
value fits its repertoire, otherwise in "ISO_IR 192", declared in the
response. A request without one asks for the default repertoire (ASCII).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from typing import Any, Protocol

from pydicom.charset import STAND_ALONE_ENCODINGS, custom_encoders, python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pynetdicom.dsutils import decode, encode

from api import matching
from infra.errors import Invalid, Unavailable
from infra.settings import Settings
from schemas.dicom_charset import charset_for, default_charset_for
from schemas.dicom_json_decode import json_to_dataset

from .ae import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from .find_encode import EncodedIdentifier, encode_response
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

#: Transfer syntaxes `find_encode` writes -> implicit VR?
_FAST_SYNTAXES = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}


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


# ---------------------------------------------------------------- character sets

#: VRs whose text follows the Specific Character Set (PS3.5 6.1.2.3).
CHARSET_VRS = frozenset({"SH", "LO", "UC", "PN", "ST", "LT", "UT"})
#: Terms naming the default repertoire: ASCII, even where pydicom reads Latin-1.
_ASCII_TERMS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
_SINGLE_VALUED = frozenset({"ST", "LT", "UT"})
_TEXT_DELIMS = {0x0D, 0x0A, 0x09, 0x0C, 0x5C}
_PN_DELIMS = _TEXT_DELIMS | {0x3D, 0x5E}


def requested_character_set(identifier: Dataset) -> list[str]:
    """The request's Specific Character Set terms; [] for the default repertoire."""
    elem = identifier.get(_SPECIFIC_CHARACTER_SET)
    if elem is None or not elem.value:
        return []
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace").split("\\")
    values = value if isinstance(value, list | MultiValue) else [value]
    terms = [str(t).strip(" \x00") for t in values]
    return [] if not any(terms) else terms


def decode_identifier(identifier: Dataset, default_charset: str) -> list[str]:
    """Decode the request's non-ASCII text as ingest decodes stored data; the notes.

    pydicom would read a request without Specific Character Set as Latin-1 and
    replace bytes invalid in the declared set; ingest uses the configured
    default for both, and a query must see the same text the archive holds.
    """
    pending = [
        (tag, elem.VR, elem.value)
        for tag, elem in identifier._dict.items()
        if isinstance(elem, RawDataElement) and elem.value and _needs_decoding(elem.value)
    ]
    notes: list[str] = []
    if not pending:
        return notes
    declared = "\\".join(requested_character_set(identifier))
    charset = charset_for(declared, default_charset_for(default_charset), notes)
    for tag, raw_vr, raw in pending:
        vr = raw_vr if raw_vr and len(raw_vr) == 2 else _dictionary_vr(int(tag))
        if vr not in CHARSET_VRS:
            continue
        delims = _PN_DELIMS if vr == "PN" else _TEXT_DELIMS
        text = charset.decode(raw, int(tag), notes, delims).rstrip(" \x00")
        value: str | list[str] = text
        if vr not in _SINGLE_VALUED and "\\" in text:
            value = [part.strip(" \x00") for part in text.split("\\")]
        identifier[tag] = DataElement(tag, vr, value)
    return notes


def _needs_decoding(raw: bytes) -> bool:
    # ISO 2022 multi-byte sets (JIS X 0208, KS X 1001) are 7-bit after an escape.
    return not raw.isascii() or b"\x1b" in raw


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def response_character_set(requested: Sequence[str], response: Dataset) -> list[str]:
    """The terms a response is encoded in: the request's when every value fits
    its repertoire, else ISO_IR 192. [] means the default repertoire (ASCII)."""
    if is_ascii(response):
        return list(requested)
    if requested and fits(response, requested):
        return list(requested)
    return [UTF8]


def fits(ds: Dataset, terms: Sequence[str]) -> bool:
    """Every text value of `ds` is representable in `terms`, and pydicom's
    encoding in them reads back unchanged."""
    key = tuple(terms)
    if not _known(key):
        return False
    for elem in ds.iterall():
        if elem.VR == "SQ":
            continue
        for text in _texts(elem.value):
            if text.isascii():
                continue
            if elem.VR not in CHARSET_VRS or not all(_char_fits(c, key) for c in text):
                return False
    return key == (UTF8,) or _reads_back(ds, list(terms))


def _known(terms: tuple[str, ...]) -> bool:
    if not all(t in python_encoding for t in terms):
        return False
    # Stand-alone sets allow no code extensions (PS3.3 C.12.1.1.2).
    return len(terms) == 1 or not any(t in STAND_ALONE_ENCODINGS for t in terms)


@lru_cache(maxsize=65536)
def _char_fits(char: str, terms: tuple[str, ...]) -> bool:
    first = terms[0]
    if first in _ASCII_TERMS:
        if char.isascii():
            return True
        if char <= "\xff":
            # pydicom writes these with its Latin-1 stand-in for ISO IR 6, unescaped:
            # bytes no ASCII reader (dcmtk among them) would accept.
            return False
    elif _encodes(char, python_encoding[first]):
        return True
    return any(_encodes(char, python_encoding[t]) for t in terms[1:])


def _encodes(char: str, codec: str) -> bool:
    try:
        if codec in custom_encoders:
            custom_encoders[codec](char, errors="strict")
        else:
            char.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return True


def _reads_back(ds: Dataset, terms: list[str]) -> bool:
    """Encode as pynetdicom will (explicit VR keeps every VR) and decode again."""
    # A copy: pydicom's PersonName keeps its first encoding and would send those
    # bytes again whatever the character set of the real response.
    probe = copy.deepcopy(ds)
    probe.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
    again = decode(BytesIO(encode(probe, False, True) or b""), False, True)
    return _charset_texts(probe) == _charset_texts(again)


def _charset_texts(ds: Dataset) -> list[str]:
    return ["\\".join(_texts(e.value)) for e in ds.iterall() if e.VR in CHARSET_VRS]


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
    terms = response_character_set(requested_character_set(identifier), response)
    if terms:
        response.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
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
        respond = self._responder(identifier, level, event.context.transfer_syntax)
        for match in matches:
            if event.is_cancelled:
                log.info("C-FIND from %s cancelled after %d of %d", calling, sent, len(matches))
                yield CANCELLED, None
                return
            try:
                response = respond(match)
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

    def _responder(
        self, identifier: Dataset, level: str, transfer_syntax: str
    ) -> Callable[[dict[str, Any]], Dataset]:
        """How each match becomes a response: encoded directly when the context is
        uncompressed little endian and the match allows it, else through pydicom."""
        ae_title = self._archive.settings.ae_title
        implicit = _FAST_SYNTAXES.get(str(transfer_syntax))
        keys = [
            (int(elem.tag), str(elem.VR))
            for elem in identifier
            if elem.tag.element != 0 and elem.tag not in _OURS
        ]
        requested = requested_character_set(identifier)

        def respond(match: dict[str, Any]) -> Dataset:
            if implicit is not None:
                encoded = encode_response(
                    match,
                    keys,
                    level=level,
                    ae_title=ae_title,
                    requested=requested,
                    implicit_vr=implicit,
                )
                if encoded is not None:
                    return EncodedIdentifier(encoded, implicit_vr=implicit)
            return build_response(match, identifier, level=level, ae_title=ae_title)

        return respond

    def _run(self, event: Any, calling: str) -> tuple[Dataset, str, list[dict[str, Any]]]:
        identifier: Dataset = event.identifier
        sop_class = str(event.context.abstract_syntax)
        model = MODELS.get(sop_class)
        if model is None:
            raise Invalid(f"not a FIND model: {sop_class}", 0xA900)
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        options = QueryOptions.agreed(event.assoc, sop_class)
        for note in decode_identifier(identifier, self._archive.settings.default_character_set):
            log.warning("C-FIND from %s: %s", calling, note)
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
