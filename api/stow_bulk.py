"""The bulk data parts of a STOW-RS metadata request, found by the URI naming them.

PS3.18 10.5.1.4: each bulk data part carries a Content-Location equal to a
BulkDataURI in the metadata. Clients write both forms: absolute URLs and
relative references ("jpeg-image", "/bulk/1"). Both sides are resolved against
the request URL before they are compared, so an absolute Content-Location
matches a relative BulkDataURI naming the same resource and the other way
round; percent-escapes are compared decoded. A part may instead be named by
its Content-ID, referenced as "cid:..." (RFC 2392).

Compressed pixel data of several frames comes one part per frame: several
parts with the same location, in request order, or locations ending
"/frames/{n}" (the form WADO-RS bulk data responses use).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin

from infra.errors import Invalid
from ingest.multipart import Part, parse_content_type

_FRAME = re.compile(r"^(.*)/frames/([0-9]{1,9})$")


@dataclass(frozen=True, slots=True)
class BulkPart:
    """One spooled bulk data part."""

    path: Path
    size: int
    media_type: str  # lower case, without parameters; "" when the part had none
    transfer_syntax: str  # the media type's transfer-syntax parameter, "" when absent
    location: str  # as the client wrote it, for messages


class BulkParts:
    """Bulk data parts by the resolved URI that names them."""

    def __init__(self, base_url: str) -> None:
        self._base = base_url
        self._whole: dict[str, list[BulkPart]] = {}
        self._frames: dict[str, dict[int, BulkPart]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, part: Part) -> bool:
        """Index a part by its Content-Location and Content-ID; False when it has neither."""
        names = [self._key(part.headers.get("content-location", ""))]
        content_id = part.headers.get("content-id", "").strip().strip("<>")
        if content_id:
            names.append(self._key(f"cid:{content_id}"))
        names = [name for name in names if name]
        if not names:
            return False
        media_type, params = parse_content_type(part.content_type)
        location = part.headers.get("content-location", "") or f"cid:{content_id}"
        bulk = BulkPart(
            part.path, part.size, media_type, params.get("transfer-syntax", ""), location
        )
        for name in names:
            frame = _FRAME.match(name)
            if frame:
                self._frames.setdefault(frame.group(1), {}).setdefault(int(frame.group(2)), bulk)
            else:
                self._whole.setdefault(name, []).append(bulk)
        self._count += 1
        return True

    def find(self, uri: str) -> list[BulkPart]:
        """The parts a BulkDataURI names, frames in order; [] when none was sent.

        Raises Invalid (0xA900) when per-frame parts skip a frame number.
        """
        key = self._key(uri)
        if not key:
            return []
        whole = self._whole.get(key)
        if whole:
            return list(whole)
        frames = self._frames.get(key, {})
        numbers = sorted(frames)
        if numbers and numbers != list(range(1, len(numbers) + 1)):
            missing = min(set(range(1, numbers[-1] + 1)) - set(numbers))
            raise Invalid(f"bulk data {uri!r}: the part for frame {missing} is missing", 0xA900)
        return [frames[n] for n in numbers]

    def _key(self, reference: str) -> str:
        reference = reference.strip()
        if not reference:
            return ""
        if reference[:4].lower() == "cid:":
            return "cid:" + unquote(reference[4:]).strip("<>")
        return unquote(urldefrag(urljoin(self._base, reference)).url)
