"""HTTP content negotiation shared by the DICOMweb routers.

One Accept parser (RFC 9110 12.5.1) for QIDO-RS, WADO-RS and STOW-RS, so a
client's q-values, quoted parameters and wildcards mean the same thing to all
three; each router only says which of its offers a media range accepts. Also
the single-range `bytes=` Range header (RFC 9110 14.2) for bulk data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

_BYTE_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
_QUOTED_PAIR = re.compile(r"\\(.)")

Offer = TypeVar("Offer")


class Refusal(Exception):
    """An HTTP problem to answer instead of content: 406 when no offer is acceptable,
    416 for a Range that selects nothing, or a router's own refusal."""

    def __init__(
        self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One member of an Accept header."""

    media_type: str  # lower case, e.g. "multipart/related", "application/*", "*/*"
    params: dict[str, str]  # lower-case names, unquoted values (q removed)
    q: float


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges by preference (q, then order); an absent or blank header means */*.

    Ranges with q=0 are refusals and left out; members without a media type
    are ignored, as are parameters without a name.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges: list[MediaRange] = []
    for text in _split(header, ","):
        fields = _split(text, ";")
        media_type = fields[0].strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for field in fields[1:]:
            name, _, value = field.partition("=")
            name, value = name.strip().lower(), _unquote(value.strip())
            if name == "q":
                q = _quality(value)
            elif name:
                params[name] = value
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    # sorted() is stable: equal q keeps the client's order.
    return sorted(ranges, key=lambda r: -r.q)


def related_type(media: MediaRange, default: str = "") -> str:
    """The `type` parameter of a (multipart/related) range, lower case."""
    return media.params.get("type", default).lower()


def first_offer(
    ranges: Iterable[MediaRange], offer: Callable[[MediaRange], Offer | None]
) -> Offer | None:
    """What `offer` answers for the most preferred range it accepts; None means 406."""
    for media in ranges:
        found = offer(media)
        if found is not None:
            return found
    return None


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes (a backslash escapes inside them)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value


def _quality(value: str) -> float:
    """A qvalue clamped to [0, 1]; one that does not parse refuses the range."""
    try:
        return min(max(float(value), 0.0), 1.0)
    except ValueError:
        return 0.0


# -- Range -----------------------------------------------------------------------


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single `bytes=` range; None to send everything.

    Multiple ranges and unparseable headers are ignored (RFC 9110 14.2);
    a range that selects nothing is refused with 416.
    """
    match = _BYTE_RANGE.match((header or "").strip().replace(" ", ""))
    if not match or not (match[1] or match[2]):
        return None
    if match[1]:
        start = int(match[1])
        end = size if not match[2] else min(size, int(match[2]) + 1)
    else:
        start, end = max(0, size - int(match[2])), size
    if start >= end:
        unsatisfiable = {"Content-Range": f"bytes */{size}"}
        raise Refusal(416, "Range Not Satisfiable", f"resource is {size} bytes", unsatisfiable)
    return start, end
