"""Rendered documents (PS3.18 8.7.4 Text category): structured reports and encapsulated files.

An SR's content tree (PS3.3 C.17.3) becomes indented text/plain or nested
text/html lists: one line per content item, "concept name: value", with the
relationship to its parent in brackets. Encapsulated documents (PDF, CDA,
STL...) are served as the document itself, in the media type the instance
names. Instances that are neither an image nor a document get a thumbnail
that says what they are.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

TEXT_HTML = "text/html"
TEXT_PLAIN = "text/plain"


# -- encapsulated documents ------------------------------------------------------


def is_encapsulated_document(ds: Dataset) -> bool:
    return "EncapsulatedDocument" in ds


def document_media_type(ds: Dataset) -> str:
    """The encapsulated document's media type, lower case (PS3.3 C.24.2.1)."""
    declared = str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "").strip().lower()
    return declared or "application/octet-stream"


def encapsulated_document(ds: Dataset) -> bytes:
    """The document bytes, without the padding byte an odd length gets in DICOM."""
    data = bytes(ds.EncapsulatedDocument or b"")
    length = ds.get("EncapsulatedDocumentLength")
    if isinstance(length, int) and 0 <= length <= len(data):
        return data[:length]
    return data


# -- structured reports ----------------------------------------------------------


def is_structured_report(ds: Dataset) -> bool:
    return str(ds.get("ValueType", "")).strip() == "CONTAINER" and "ContentSequence" in ds


@dataclass
class ContentItem:
    """One SR content item, ready to print."""

    relationship: str
    name: str
    value: str
    children: list[ContentItem] = field(default_factory=list)


def content_tree(ds: Dataset) -> list[ContentItem]:
    """The document's content items (the root's children), depth first."""
    return [_item(child) for child in ds.get("ContentSequence") or []]


def _item(item: Dataset) -> ContentItem:
    children = [_item(child) for child in item.get("ContentSequence") or []]
    return ContentItem(
        relationship=str(item.get("RelationshipType", "")).strip(),
        name=_code_meaning(item.get("ConceptNameCodeSequence")),
        value=item_value(item),
        children=children,
    )


def _code_meaning(sequence: Any) -> str:
    if not sequence:
        return ""
    code = sequence[0]
    meaning = str(code.get("CodeMeaning", "") or "").strip()
    return meaning or str(code.get("CodeValue", "") or "").strip()


def item_value(item: Dataset) -> str:
    """The value of a content item as text, whatever its Value Type (PS3.3 C.17.3.2)."""
    if "ReferencedContentItemIdentifier" in item and "ValueType" not in item:
        path = ".".join(str(n) for n in _values(item.ReferencedContentItemIdentifier))
        return f"(see content item {path})"
    value_type = str(item.get("ValueType", "")).strip()
    reader = _VALUE_READERS.get(value_type)
    return reader(item) if reader else ""


def _values(value: Any) -> list[Any]:
    """A possibly multi-valued element value as a list (empty when absent)."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)


ValueReader = Callable[[Dataset], str]


def _text(keyword: str) -> ValueReader:
    return lambda item: str(item.get(keyword, "") or "").strip()


def _code_value(item: Dataset) -> str:
    return _code_meaning(item.get("ConceptCodeSequence"))


def _num_value(item: Dataset) -> str:
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return _code_meaning(item.get("NumericValueQualifierCodeSequence"))
    value = measured[0]
    units = value.get("MeasurementUnitsCodeSequence")
    unit = str(units[0].get("CodeValue", "") or "").strip() if units else ""
    number = str(value.get("NumericValue", "")).strip()
    # UCUM's "1" means "no unit": the number alone reads better.
    return f"{number} {unit}".strip() if unit not in ("1", "") else number


def _reference_value(item: Dataset) -> str:
    references = item.get("ReferencedSOPSequence")
    if not references:
        return ""
    reference = references[0]
    text = str(reference.get("ReferencedSOPInstanceUID", "")).strip()
    frames = _values(reference.get("ReferencedFrameNumber"))
    return f"{text} frames {', '.join(str(f) for f in frames)}" if frames else text


def _coordinates_value(item: Dataset) -> str:
    points = [f"{float(v):g}" for v in _values(item.get("GraphicData"))]
    pairs = ", ".join(f"({points[i]}, {points[i + 1]})" for i in range(0, len(points) - 1, 2))
    return f"{str(item.get('GraphicType', '')).strip()} {pairs}".strip()


def _coordinates_3d_value(item: Dataset) -> str:
    points = [f"{float(v):g}" for v in _values(item.get("GraphicData"))]
    triples = ", ".join(
        f"({points[i]}, {points[i + 1]}, {points[i + 2]})" for i in range(0, len(points) - 2, 3)
    )
    return f"{str(item.get('GraphicType', '')).strip()} {triples}".strip()


def _temporal_value(item: Dataset) -> str:
    for keyword in ("ReferencedTimeOffsets", "ReferencedSamplePositions", "ReferencedDateTime"):
        found = _values(item.get(keyword))
        if found:
            kind = str(item.get("TemporalRangeType", "")).strip()
            return f"{kind} {', '.join(str(v) for v in found)}".strip()
    return ""


_VALUE_READERS: dict[str, ValueReader] = {
    "TEXT": _text("TextValue"),
    "CODE": _code_value,
    "NUM": _num_value,
    "DATETIME": _text("DateTime"),
    "DATE": _text("Date"),
    "TIME": _text("Time"),
    "UIDREF": _text("UID"),
    "PNAME": lambda item: str(item.get("PersonName", "") or "").replace("^", " ").strip(),
    "COMPOSITE": _reference_value,
    "IMAGE": _reference_value,
    "WAVEFORM": _reference_value,
    "SCOORD": _coordinates_value,
    "SCOORD3D": _coordinates_3d_value,
    "TCOORD": _temporal_value,
    "CONTAINER": lambda item: "",
}


def report_header(ds: Dataset) -> list[tuple[str, str]]:
    """(label, value) pairs shown above the content tree."""
    pairs = [
        ("Patient", str(ds.get("PatientName", "") or "").replace("^", " ").strip()),
        ("Patient ID", str(ds.get("PatientID", "") or "").strip()),
        ("Study date", str(ds.get("StudyDate", "") or "").strip()),
        ("Content date", f"{ds.get('ContentDate', '')} {ds.get('ContentTime', '')}".strip()),
        ("Completion", str(ds.get("CompletionFlag", "") or "").strip()),
        ("Verification", str(ds.get("VerificationFlag", "") or "").strip()),
    ]
    return [(label, value) for label, value in pairs if value]


def report_title(ds: Dataset) -> str:
    return _code_meaning(ds.get("ConceptNameCodeSequence")) or "Structured report"


def _label(item: ContentItem) -> str:
    relation = f"[{item.relationship}] " if item.relationship else ""
    if item.name and item.value:
        return f"{relation}{item.name}: {item.value}"
    return f"{relation}{item.name or item.value}"


def sr_text(ds: Dataset) -> str:
    """The report as text/plain: title, header, then the tree indented two spaces a level."""
    title = report_title(ds)
    lines = [title, "=" * len(title)]
    lines += [f"{label}: {value}" for label, value in report_header(ds)]
    lines.append("")
    lines += [f"{'  ' * depth}{_label(item)}" for depth, item in _walk(content_tree(ds), 0)]
    return "\n".join(line.replace("\r\n", "\n") for line in lines) + "\n"


def _walk(items: list[ContentItem], depth: int) -> Iterator[tuple[int, ContentItem]]:
    for item in items:
        yield depth, item
        yield from _walk(item.children, depth + 1)


def sr_html(ds: Dataset) -> str:
    """The report as a small self-contained HTML page: title, header list, nested lists."""
    title = html.escape(report_title(ds))
    header = "".join(
        f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>"
        for label, value in report_header(ds)
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body><h1>{title}</h1>\n"
        f"<dl>{header}</dl>\n{_html_list(content_tree(ds))}\n</body></html>\n"
    )


def _html_list(items: list[ContentItem]) -> str:
    if not items:
        return ""
    entries = []
    for item in items:
        # Text values keep their line breaks.
        text = html.escape(_label(item)).replace("\r\n", "<br>").replace("\n", "<br>")
        entries.append(f"<li>{text}{_html_list(item.children)}</li>")
    return "<ul>" + "".join(entries) + "</ul>"


# -- thumbnails of what has no pixels --------------------------------------------


def placeholder_label(ds: Dataset) -> tuple[str, str]:
    """(kind, title) drawn on the thumbnail of an instance that is not an image."""
    if is_encapsulated_document(ds):
        subtype = document_media_type(ds).rpartition("/")[2].upper()
        return subtype or "DOC", str(ds.get("DocumentTitle", "") or "").strip()
    if is_structured_report(ds):
        return "SR", report_title(ds)
    if "PixelData" in ds:
        return "VIDEO", str(ds.get("SeriesDescription", "") or "").strip()
    return str(ds.get("Modality", "") or "DICOM").strip(), ""


def placeholder_image(ds: Dataset, size: tuple[int, int]) -> Image.Image:
    """A dark (width, height) image naming what the instance is, for its thumbnail."""
    width, height = max(size[0], 16), max(size[1], 16)
    image = Image.new("RGB", (width, height), (40, 44, 52))
    draw = ImageDraw.Draw(image)
    kind, title = placeholder_label(ds)
    big = ImageFont.load_default(size=max(10, height // 4))
    small = ImageFont.load_default(size=max(8, height // 12))
    draw.text((width / 2, height / 2), kind, fill=(230, 230, 230), font=big, anchor="mm")
    if title:
        line = title if len(title) <= 24 else title[:21] + "..."
        draw.text((width / 2, height * 0.8), line, fill=(180, 180, 180), font=small, anchor="mm")
    return image
