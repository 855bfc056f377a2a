"""What an instance renders as (PS3.18 8.7.4 resource categories) and which media type
the client gets, from its Accept ranges.

Categories: "image" (Pixel Data Chronicle decodes or not: decoding failures
surface when rendering), "video" (MPEG/H.264/HEVC pixel data: not rendered),
"sr" (a structured report's content tree), "document" (an encapsulated
PDF/CDA/...), "other" (no rendered representation). The first offer of each
category is its default: image/jpeg, text/html, the document's own type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from api.negotiation import MediaRange, related_type
from api.pixels import VIDEO_TRANSFER_SYNTAXES
from api.render_docs import (
    TEXT_HTML,
    TEXT_PLAIN,
    document_media_type,
    is_encapsulated_document,
    is_structured_report,
)

JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
IMAGE_OFFERS = (JPEG, PNG, GIF)
SR_OFFERS = (TEXT_HTML, TEXT_PLAIN)
_ANY = frozenset({"*/*", "multipart/*"})
# DICOM JSON keys of what decides the category.
_PIXEL_DATA, _ROWS = "7FE00010", "00280010"
_DOCUMENT, _DOCUMENT_TYPE = "00420011", "00420012"
_VALUE_TYPE, _CONTENT = "0040A040", "0040A730"
_SERIES_NUMBER = "00200011"


@dataclass(frozen=True, slots=True)
class Kind:
    """An instance's rendered category and, for documents, their media type."""

    category: str
    document_type: str = ""

    @property
    def offers(self) -> tuple[str, ...]:
        """Rendered media types of this kind, the default first."""
        if self.category == "image":
            return IMAGE_OFFERS
        if self.category == "sr":
            return SR_OFFERS
        if self.category == "document":
            return (self.document_type,)
        return ()


def kind_of_dataset(ds: Dataset) -> Kind:
    if is_encapsulated_document(ds):
        return Kind("document", document_media_type(ds))
    if is_structured_report(ds):
        return Kind("sr")
    if "PixelData" in ds and "Rows" in ds:
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        return Kind("video" if ts in VIDEO_TRANSFER_SYNTAXES else "image")
    return Kind("other")


def kind_of_metadata(meta: dict[str, Any], transfer_syntax: str) -> Kind:
    """The same decision from an instance's stored DICOM JSON (no blob read)."""
    if _DOCUMENT in meta:
        declared = str(_first_value(meta, _DOCUMENT_TYPE) or "").strip().lower()
        return Kind("document", declared or "application/octet-stream")
    if _first_value(meta, _VALUE_TYPE) == "CONTAINER" and _CONTENT in meta:
        return Kind("sr")
    if _PIXEL_DATA in meta and _ROWS in meta:
        return Kind("video" if transfer_syntax in VIDEO_TRANSFER_SYNTAXES else "image")
    return Kind("other")


def series_number(meta: dict[str, Any]) -> int | None:
    value = _first_value(meta, _SERIES_NUMBER)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _first_value(meta: dict[str, Any], key: str) -> Any:
    values = (meta.get(key) or {}).get("Value") or []
    return values[0] if values else None


def accepts(media_type: str, offer: str) -> bool:
    """Does the (single-part) range `media_type` accept `offer`?"""
    if media_type == "*/*" or media_type == offer:
        return True
    family, _, subtype = media_type.partition("/")
    return subtype == "*" and offer.startswith(family + "/")


def choose_single(ranges: Iterable[MediaRange], offers: tuple[str, ...]) -> str | None:
    """The first offer the most preferred acceptable range takes; None means 406."""
    for media in ranges:
        for offer in offers:
            if accepts(media.media_type, offer):
                return offer
    return None


def part_pattern(media: MediaRange) -> str | None:
    """For a multipart response: the type its parts must match, or None if `media`
    does not ask for multipart. A multipart range without a type takes any part."""
    if media.media_type in _ANY:
        return "*/*"
    if media.media_type == "multipart/related":
        return related_type(media, "*/*") or "*/*"
    return None


def part_type(pattern: str, kind: Kind) -> str | None:
    """The media type of an instance's part under `pattern`; None leaves it out."""
    return next((offer for offer in kind.offers if accepts(pattern, offer)), None)


def choose_parts(ranges: Iterable[MediaRange]) -> str | None:
    """The part pattern of the most preferred multipart range; None means 406."""
    for media in ranges:
        pattern = part_pattern(media)
        if pattern is not None:
            return pattern
    return None


def choose_frames(ranges: Iterable[MediaRange]) -> tuple[bool, str] | None:
    """Several frames: (False, image/gif) for one animation, (True, part type) for a
    multipart with a part per frame, by the client's preference; None means 406."""
    for media in ranges:
        pattern = part_pattern(media)
        if pattern is not None:
            chosen = next((o for o in IMAGE_OFFERS if accepts(pattern, o)), None)
            if chosen is not None:
                return True, chosen
        elif accepts(media.media_type, GIF):
            return False, GIF
    return None
