"""Dataset to DICOM JSON (PS3.18 Annex F), fast on the ingest path.

`dataset_to_json` decodes RawDataElement bytes itself (pydicom's
`to_json_dict` converts every element through pydicom's value classes, an
order of magnitude slower) and falls back to converted values for
DataElements. Choices where Annex F leaves room (the tests pin each one):

- Bulk elements (Pixel Data always, other OB/OD/OF/OL/OV/OW/UN longer than
  1024 bytes) become a relative BulkDataURI "bulkdata/{offset}-{length}" in
  blob coordinates, or InlineBinary when no `bulk_offset_base` is given, or
  only {"vr": VR} with `omit_bulk` (deflated datasets: no byte ranges exist).
- IS, DS, SV, UV are JSON numbers; a value that is not a finite number (or an
  SV/UV beyond +/-(2**53 - 1)) stays a JSON string, as Annex F allows.
- Padding is removed per PS3.5 6.2: leading and trailing spaces for AE, AS,
  CS, DA, DT, TM, UI, DS, IS, SH, LO; trailing only for UC, PN, ST, LT, UT, UR.
- Empty values inside a multi-valued element are null; empty PN component
  groups are left out; an empty sequence or empty value has no "Value".
- Non-finite FL/FD values become null (JSON has no NaN).

The other direction, DICOM JSON to a Dataset, is `schemas.dicom_json_decode`;
Specific Character Set decoding is `schemas.dicom_charset`.
"""

from __future__ import annotations

import base64
import math
import struct
import sys
from array import array
from collections.abc import Mapping
from typing import Any

from pydicom._dicom_dict import DicomDictionary
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from schemas.dicom_charset import Charset, charset_for, default_charset_for

JSON = dict[str, Any]

BULK_THRESHOLD = 1024
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_UNDEFINED = 0xFFFFFFFF
_MAX_SAFE_INT = 2**53 - 1
_LITTLE_HOST = sys.byteorder == "little"

_STRIP_BOTH = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "DS", "IS", "SH", "LO"})
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "PN", "ST", "LT", "UT"})
_SINGLE_VALUED = frozenset({"ST", "LT", "UT", "UR"})
_NUMERIC_TEXT = frozenset({"DS", "IS"})
_STRUCT = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
#: VRs whose values are binary numbers
BINARY_NUMBER_VRS = frozenset(_STRUCT)
_SIZE = {"H": 2, "h": 2, "L": 4, "l": 4, "f": 4, "d": 8, "Q": 8, "q": 8}
# memoryview.cast uses native sizes: C long is 8 bytes on LP64, so 32-bit ints are "I"/"i"
_NATIVE = {"H": "H", "h": "h", "L": "I", "l": "i", "f": "f", "d": "d", "Q": "Q", "q": "q"}
_ASCII_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "DS", "IS", "UR"})
_WIDE = frozenset({"FL", "FD", "UV", "SV"})  # need NaN / 2**53 checks: not on the inline path
_SWAP_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_TEXT_DELIMS = {0x0D, 0x0A, 0x09, 0x0C, 0x5C}
_PN_DELIMS = _TEXT_DELIMS | {0x3D, 0x5E}
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def resolve_vr(tag: int, vr: str | None, elements: Mapping[Any, Any], pixel_rep: int) -> str:
    """The VR of an element read without one (implicit VR) or read as UN."""
    group, elem = tag >> 16, tag & 0xFFFF
    if elem == 0:
        return "UL"
    found: str | None = None
    if group & 1:
        if 0x10 <= elem <= 0xFF:
            return "LO"
        creator = _text_of(elements.get((group << 16) | (elem >> 8)))
        if creator and elem >= 0x1000:
            try:
                found = private_dictionary_VR(tag, creator)
            except KeyError:
                found = None
    else:
        entry = DicomDictionary.get(tag)
        if entry is not None:
            found = entry[0]
        else:
            try:
                found = dictionary_VR(tag)
            except KeyError:
                found = None
    if found is None or found == "NONE":
        return vr or "UN"
    if len(found) == 2:
        return found
    return ("SS" if pixel_rep == 1 else "US") if found == "US or SS" else "OW"


def pixel_representation(element: Any, inherited: int) -> int:
    """(0028,0103) of a dataset, needed to resolve US-or-SS in implicit VR."""
    if isinstance(element, RawDataElement):
        if element.value is None or len(element.value) < 2:
            return inherited
        return int(struct.unpack("<H" if element.is_little_endian else ">H", element.value[:2])[0])
    if element is not None and isinstance(element.value, int):
        return int(element.value)
    return inherited


def _text_of(element: Any) -> str:
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    return "" if value is None else str(value).strip()


def dataset_to_json(
    ds: Dataset,
    *,
    bulk_offset_base: int | None = None,
    dataset_start: int = 0,
    default_charset: str = "ISO_IR 100",
    omit_bulk: bool = False,
    notes: list[str] | None = None,
) -> JSON:
    """DICOM JSON of `ds`, tags ascending, group lengths dropped.

    With `bulk_offset_base`, bulk elements read from a file (value_tell known)
    become "bulkdata/{bulk_offset_base + value_tell - dataset_start}-{length}".
    Decoding problems are appended to `notes` instead of raising.
    """
    encoder = _Encoder(bulk_offset_base, dataset_start, omit_bulk, notes)
    return encoder.dataset(ds, default_charset_for(default_charset), 0)


class _Encoder:
    __slots__ = ("base", "start", "omit_bulk", "notes")

    def __init__(
        self, base: int | None, start: int, omit_bulk: bool, notes: list[str] | None
    ) -> None:
        self.base = base
        self.start = start
        self.omit_bulk = omit_bulk
        self.notes: list[str] = [] if notes is None else notes

    def dataset(self, ds: Dataset, parent: Charset, parent_pixel_rep: int) -> JSON:
        elements: Mapping[Any, Any] = ds._dict
        charset = parent
        if 0x00080005 in elements:
            charset = charset_for(_text_of_charset(elements[0x00080005]), parent, self.notes)
        pixel_rep = pixel_representation(elements.get(0x00280103), parent_pixel_rep)
        out: JSON = {}
        # plain ints: BaseTag's Python-level comparisons would dominate the sort
        for tag, element in sorted(zip(map(int, elements), elements.values(), strict=True)):
            if not tag & 0xFFFF:
                continue
            if type(element) is not RawDataElement:
                out[f"{tag:08X}"] = self.converted(element, tag, elements, charset, pixel_rep)
                continue
            vr, raw = element.VR, element.value
            if raw and vr in _ASCII_TEXT:  # the common case, kept inline for speed
                values = text_values(vr, raw.decode("latin-1"))
                out[f"{tag:08X}"] = {"vr": vr, "Value": values} if values else {"vr": vr}
            elif raw and vr in _STRUCT and element.is_little_endian and _LITTLE_HOST:
                size = _SIZE[_STRUCT[vr]]
                if len(raw) % size or vr in _WIDE:
                    out[f"{tag:08X}"] = self.raw(element, tag, ds, charset, pixel_rep)
                else:
                    numbers = _cast(raw, _NATIVE[_STRUCT[vr]])
                    out[f"{tag:08X}"] = {"vr": vr, "Value": numbers}
            else:
                out[f"{tag:08X}"] = self.raw(element, tag, ds, charset, pixel_rep)
        return out

    def raw(self, e: RawDataElement, tag: int, ds: Dataset, charset: Charset, rep: int) -> JSON:
        vr = e.VR
        if vr is None or vr == "UN" or len(vr) != 2:
            vr = resolve_vr(tag, vr if vr == "UN" else None, ds._dict, rep)
            if e.length == _UNDEFINED and vr in BINARY_VRS:
                vr = "OB"  # encapsulated
        if vr in BINARY_VRS or tag in PIXEL_DATA_TAGS:
            return self.binary(e.value, e.length, e.value_tell, vr, e.is_little_endian, tag, ds)
        raw = e.value
        if vr == "SQ" or raw is None:  # SQ (or UN) bytes or deferred text: pydicom converts
            try:
                element = ds[tag]
            except Exception as exc:  # malformed bytes pydicom cannot convert: keep them
                self.notes.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): kept as UN: {exc}")
                return self.binary(raw, e.length, e.value_tell, "UN", True, tag, None)
            return self.converted(element, tag, ds._dict, charset, rep)
        if not raw:
            return {"vr": vr}
        code = _STRUCT.get(vr)
        if code is not None:
            values: list[Any] | None = _numbers(raw, code, vr, e.is_little_endian, tag, self.notes)
        elif vr == "AT":
            values = _tags(raw, e.is_little_endian)
        elif vr in _CHARSET_VRS:
            delims = _PN_DELIMS if vr == "PN" else _TEXT_DELIMS
            values = text_values(vr, charset.decode(raw, tag, self.notes, delims))
        else:
            values = text_values(vr, raw.decode("latin-1"))
        return {"vr": vr, "Value": values} if values else {"vr": vr}

    def binary(
        self,
        value: bytes | None,
        length: int,
        value_tell: int | None,
        vr: str,
        little: bool,
        tag: int,
        ds: Dataset | None,
    ) -> JSON:
        if value is None and length == _UNDEFINED:  # deferred by pydicom, length unknown
            value = _load_deferred(ds, tag)
        if value is not None:
            length = len(value)
        if not length:
            return {"vr": vr}
        if tag in PIXEL_DATA_TAGS or length > BULK_THRESHOLD:
            if self.omit_bulk:
                return {"vr": vr}
            if self.base is not None and value_tell is not None:
                offset = self.base + value_tell - self.start
                return {"vr": vr, "BulkDataURI": f"bulkdata/{offset}-{length}"}
        if value is None:
            value = _load_deferred(ds, tag)
        if not little and vr in _SWAP_SIZE:
            value = _to_little_endian(value, _SWAP_SIZE[vr])
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}

    def converted(
        self, e: DataElement, tag: int, elements: Mapping[Any, Any], charset: Charset, rep: int
    ) -> JSON:
        vr = e.VR
        if len(vr) != 2:
            vr = resolve_vr(tag, None, elements, rep)
        value = e.value
        if vr == "SQ":
            items = [self.dataset(item, charset, rep) for item in value or ()]
            return {"vr": vr, "Value": items} if items else {"vr": vr}
        if vr in BINARY_VRS or tag in PIXEL_DATA_TAGS:
            data = value if isinstance(value, bytes) else b""
            return self.binary(data, len(data), e.file_tell, vr, True, tag, None)
        if value is None or value == "" or value == b"":
            return {"vr": vr}
        many = list(value) if isinstance(value, list | MultiValue | tuple) else [value]
        if not many:
            return {"vr": vr}
        out = _converted_values(vr, many)
        return {"vr": vr, "Value": out} if out else {"vr": vr}


def _load_deferred(ds: Dataset | None, tag: int) -> bytes:
    """A value pydicom deferred: it reads it again from the dataset's file."""
    if ds is None:
        raise ValueError(f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) was not read")
    value = ds[tag].value
    return value if isinstance(value, bytes) else b""


def _text_of_charset(element: Any) -> str:
    value = element.value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list | MultiValue):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _converted_values(vr: str, many: list[Any]) -> list[Any] | None:
    if vr in _STRUCT:
        return [_number(v, vr) for v in many]
    if vr == "AT":
        return [f"{int(v):08X}" for v in many]
    return text_values(vr, "\\".join("" if v is None else str(v) for v in many))


def _number(v: Any, vr: str) -> Any:
    if v is None:
        return None
    if vr in ("FL", "FD"):
        f = float(v)
        return f if math.isfinite(f) else None
    n = int(v)
    return str(n) if abs(n) > _MAX_SAFE_INT else n


def _numbers(raw: bytes, code: str, vr: str, little: bool, tag: int, notes: list[str]) -> list[Any]:
    size = _SIZE[code]
    extra = len(raw) % size
    if extra:
        notes.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): {extra} stray bytes ignored")
        raw = raw[: len(raw) - extra]
    if little and _LITTLE_HOST:
        values = _cast(raw, _NATIVE[code])
    else:
        values = list(struct.unpack(f"{'<' if little else '>'}{len(raw) // size}{code}", raw))
    if code in "fd":
        return [v if math.isfinite(v) else None for v in values]
    if code in "Qq":
        return [str(v) if abs(v) > _MAX_SAFE_INT else v for v in values]
    return values


def _cast(raw: bytes, native_code: str) -> list[Any]:
    view: Any = memoryview(raw)  # the format is only known at run time
    return list(view.cast(native_code).tolist())


def _tags(raw: bytes, little: bool) -> list[Any]:
    count = len(raw) // 4
    words = struct.unpack(f"{'<' if little else '>'}{count * 2}H", raw[: count * 4])
    return [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, count * 2, 2)]


def text_values(vr: str, text: str) -> list[Any] | None:
    """The JSON "Value" list of a decoded string value, None when empty."""
    if vr in _SINGLE_VALUED:
        text = text.rstrip(" \x00")
        return [text] if text else None
    if "\\" not in text and vr not in _NUMERIC_TEXT and vr != "PN":
        text = text.strip(" \x00") if vr in _STRIP_BOTH else text.rstrip(" \x00")
        return [text] if text else None
    parts = text.split("\\")
    if vr in _STRIP_BOTH:
        stripped = [p.strip(" \x00") for p in parts]
    else:
        stripped = [p.rstrip(" \x00") for p in parts]
    if len(stripped) == 1 and not stripped[0]:
        return None
    if vr == "PN":
        return [_person_name(p) for p in stripped]
    if vr == "DS":
        return [_decimal(p) for p in stripped]
    if vr == "IS":
        return [_integer(p) for p in stripped]
    return [p or None for p in stripped]


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    groups = text.split("=", 2)
    name = {PN_GROUPS[i]: g.rstrip(" \x00") for i, g in enumerate(groups) if g.rstrip(" \x00")}
    return name or None


def _decimal(text: str) -> Any:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _integer(text: str) -> Any:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _to_little_endian(value: bytes, size: int) -> bytes:
    usable = len(value) - len(value) % size
    words = array({2: "H", 4: "L" if array("L").itemsize == 4 else "I", 8: "Q"}[size])
    words.frombytes(value[:usable])
    words.byteswap()
    return words.tobytes() + value[usable:]


def absolutize_bulk_uris(obj: JSON, instance_url: str) -> JSON:
    """A copy of `obj` with relative "bulkdata/..." URIs under `instance_url`."""
    base = instance_url.rstrip("/")
    out: JSON = {}
    for key, attr in obj.items():
        uri = attr.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith("bulkdata/"):
            attr = {**attr, "BulkDataURI": f"{base}/{uri}"}
        elif attr.get("vr") == "SQ" and "Value" in attr:
            items = [absolutize_bulk_uris(item or {}, base) for item in attr["Value"]]
            attr = {**attr, "Value": items}
        out[key] = attr
    return out
