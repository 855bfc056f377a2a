"""PS3.19 Native DICOM Model XML, to and from DICOM JSON (PS3.18 Annex F).

Mapping choices (the round-trip tests pin them): a JSON null inside a
multi-valued element is an empty <Value number="n"/> (or <PersonName>, <Item>);
PN component groups are split on "^" into FamilyName, GivenName, MiddleName,
NamePrefix, NameSuffix (anything past the fifth "^" stays in NameSuffix);
numbers are written with repr() so they read back exactly; IS, DS, SV and UV
values that JSON keeps as strings stay strings. Parsing refuses any DOCTYPE,
so no entity can be declared or expanded (no XXE, no entity bombs).
"""

from __future__ import annotations

import math
import xml.parsers.expat
from typing import Any
from xml.etree.ElementTree import Element, TreeBuilder
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag

from infra.errors import Invalid

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
JSON = dict[str, Any]

_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_INTEGER_VRS = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
_MAX_SAFE_INT = 2**53 - 1
# XML 1.0 cannot carry most C0 controls; CR must be a reference or parsing turns it into LF
_TEXT_ESCAPES = {"\r": "&#13;"} | {chr(c): "\ufffd" for c in range(32) if c not in (9, 10, 13)}


def json_to_xml(obj: JSON) -> bytes:
    """One NativeDicomModel document for one DICOM JSON dataset."""
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xmlns="{NAMESPACE}">']
    _dataset(obj, parts)
    parts.append("</NativeDicomModel>\n")
    return "".join(parts).encode("utf-8")


def _text(value: str) -> str:
    return escape(value, _TEXT_ESCAPES)


def _dataset(obj: JSON, parts: list[str]) -> None:
    for key in sorted(obj):
        attr = obj[key]
        tag = int(key, 16)
        vr = attr.get("vr", "UN")
        head = f'<DicomAttribute tag="{key}" vr="{vr}"'
        keyword = keyword_for_tag(tag) if not tag >> 16 & 1 else ""
        if keyword:
            head += f' keyword="{keyword}"'
        creator = _private_creator(obj, tag)
        if creator:
            head += f" privateCreator={quoteattr(creator)}"
        parts.append(head + ">")
        _attribute_body(vr, attr, parts)
        parts.append("</DicomAttribute>")


def _private_creator(obj: JSON, tag: int) -> str:
    group, elem = tag >> 16, tag & 0xFFFF
    if not group & 1 or elem < 0x1000:
        return ""
    values = obj.get(f"{group:04X}00{elem >> 8:02X}", {}).get("Value") or [""]
    return values[0] if isinstance(values[0], str) else ""


def _attribute_body(vr: str, attr: JSON, parts: list[str]) -> None:
    if "BulkDataURI" in attr:
        parts.append(f"<BulkData uri={quoteattr(_single(attr['BulkDataURI']))}/>")
        return
    if "InlineBinary" in attr:
        parts.append(f"<InlineBinary>{_single(attr['InlineBinary'])}</InlineBinary>")
        return
    for number, value in enumerate(attr.get("Value") or (), start=1):
        if vr == "SQ":
            parts.append(f'<Item number="{number}">')
            _dataset(value or {}, parts)
            parts.append("</Item>")
        elif vr == "PN":
            parts.append(f'<PersonName number="{number}">{_person_name(value or {})}</PersonName>')
        elif value is None:
            parts.append(f'<Value number="{number}"/>')
        else:
            parts.append(f'<Value number="{number}">{_text(_value_text(value))}</Value>')


def _single(value: Any) -> str:
    return str(value[0] if isinstance(value, list) else value)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _person_name(name: Any) -> str:
    if isinstance(name, str):  # lenient: some producers send PN as a plain string
        name = {"Alphabetic": name}
    out = []
    for group in _GROUPS:
        text = name.get(group)
        if text:
            components = text.split("^", 4)
            inner = "".join(
                f"<{tag}>{_text(part)}</{tag}>"
                for tag, part in zip(_COMPONENTS, components, strict=False)
                if part
            )
            out.append(f"<{group}>{inner}</{group}>")
    return "".join(out)


def xml_to_json(data: bytes) -> JSON:
    """The DICOM JSON of one NativeDicomModel document; raises Invalid when malformed."""
    root = _parse(data)
    if _local(root.tag) != "NativeDicomModel":
        raise Invalid("XML root element is not NativeDicomModel")
    return _json_dataset(root)


def _parse(data: bytes) -> Element:
    builder = TreeBuilder()
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")

    def refuse(*_: Any) -> None:
        raise Invalid("XML with a DOCTYPE or entity declarations is refused")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        return builder.close()
    except xml.parsers.expat.ExpatError as exc:
        raise Invalid(f"malformed XML: {exc}") from exc


def _local(name: str) -> str:
    return name.rsplit(" ", 1)[-1]


def _json_dataset(parent: Element) -> JSON:
    out: JSON = {}
    for node in parent:
        if _local(node.tag) != "DicomAttribute":
            continue
        key = (node.get("tag") or "").upper()
        vr = node.get("vr") or ""
        if len(key) != 8 or len(vr) != 2:
            raise Invalid(f"DicomAttribute with tag {key!r} vr {vr!r} is malformed")
        try:
            int(key, 16)
        except ValueError as exc:
            raise Invalid(f"DicomAttribute tag {key!r} is not hexadecimal") from exc
        out[key] = _json_attribute(vr, node)
    return dict(sorted(out.items()))


def _json_attribute(vr: str, node: Element) -> JSON:
    attr: JSON = {"vr": vr}
    values: dict[int, Any] = {}
    for child in node:
        name = _local(child.tag)
        if name == "BulkData":
            attr["BulkDataURI"] = child.get("uri", "")
        elif name == "InlineBinary":
            attr["InlineBinary"] = "".join((child.text or "").split())
        elif name in ("Value", "PersonName", "Item"):
            values[_number(child, len(values) + 1)] = _json_value(vr, name, child)
    if values:
        attr["Value"] = [values.get(i) for i in range(1, max(values) + 1)]
    return attr


def _number(child: Element, default: int) -> int:
    try:
        number = int(child.get("number") or default)
    except ValueError as exc:
        raise Invalid(f"number attribute {child.get('number')!r} is not an integer") from exc
    if not 1 <= number <= 1 << 20:
        raise Invalid(f"number attribute {number} is out of range")
    return number


def _json_value(vr: str, name: str, child: Element) -> Any:
    if name == "Item":
        return _json_dataset(child)
    if name == "PersonName":
        name_json = {}
        for group in child:
            components = {_local(c.tag): c.text or "" for c in group}
            text = "^".join(components.get(c, "") for c in _COMPONENTS).rstrip("^")
            if text:
                name_json[_local(group.tag)] = text
        return name_json or None
    value = child.text
    return _typed(vr, value) if value else None


def _typed(vr: str, text: str) -> Any:
    if vr in _INTEGER_VRS:
        try:
            number = int(text)
        except ValueError:
            return text if vr in ("IS", "SV", "UV") else _float_or_text(text)
        return text if vr in ("SV", "UV") and abs(number) > _MAX_SAFE_INT else number
    if vr in _FLOAT_VRS:
        return _float_or_text(text)
    return text


def _float_or_text(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text
