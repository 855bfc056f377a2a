"""WADO-RS frames and pixel data (PS3.18 10.4, CP 2040): pixels without the DICOM around them.

    GET {root}/studies/{s}/series/{r}/instances/{i}/frames/{list}   list = "1,3,5"
    GET {root}/studies/{s}[/series/{r}[/instances/{i}]]/pixeldata

Accept (PS3.18 8.7.3.3, Table 8.7.3-4/-5), multipart/related with a `type`,
or the bare media type for one frame: application/octet-stream (uncompressed
little endian; decoded when stored compressed), image/jpeg, image/jls,
image/jp2, image/jphc, image/jxl, image/dicom-rle (x- spellings too, echoed
back as asked). `transfer-syntax` picks the encoding; without it each media
type's default (octet-stream: Explicit VR LE, image/jpeg: .4.70, image/jls:
.4.80, image/jp2: .4.90, image/jphc: .4.201, image/jxl: .4.110, RLE: .5),
except that an image/* type whose stored syntax is a lossy one of that type
answers as stored (PS3.18 8.7.3: the origin server has only the lossy form).
`transfer-syntax=*` answers as stored (octet-stream then carries the stored
codestream, labelled with its syntax). Explicit lossy syntaxes are produced
when named. Frames are read as `api.frame_access` says (ranged reads when the
index has the ranges).

A bare application/octet-stream (no syntax or Explicit VR LE) for several
frames answers one body: the uncompressed frames end to end, as in Pixel Data.

/pixeldata: every frame, one part each (Content-Location names the frame);
a video instance's stream whole, as video/mpeg or video/mp4 (or
application/octet-stream: video exists only lossy, so as stored is its
default). Series and study: the frames of their image instances; video
streams only from the instance. An encapsulated Pixel Data BulkDataURI
answers as its instance's /pixeldata (compressed bulk data is the octet
streams without item delimiters, PS3.18 8.7.3.3.2); native Pixel Data stays
a plain byte range (`api.wado`). Errors: 400 for a malformed frame list, 404
for a frame past the last or no pixel data, 406 naming why no acceptable
form can be produced.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from api import codecs, pixels, transcode
from api.catalog import InstanceRow
from api.deps import ArchiveDep
from api.frame_access import StoredFrames
from api.negotiation import MediaRange, Refusal, parse_accept
from api.wado_common import REFUSALS, answer, base_url, find_rows, instance_url

log = logging.getLogger("chronicle.wado")
router = APIRouter(prefix="/dicomweb")

OCTET = "application/octet-stream"
EXPLICIT = pixels.EXPLICIT_VR_LITTLE_ENDIAN
_FRAME_NUMBER = re.compile(r"^[1-9][0-9]{0,8}$")
#: Media type -> (default transfer syntax, the syntaxes it carries) (PS3.18 Table 8.7.3-5).
MEDIA: dict[str, tuple[str, frozenset[str]]] = {
    OCTET: (EXPLICIT, frozenset({EXPLICIT})),
    "image/jpeg": ("1.2.840.10008.1.2.4.70", frozenset({"1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"})),
    "image/jls": ("1.2.840.10008.1.2.4.80", frozenset({"1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81"})),
    "image/jp2": ("1.2.840.10008.1.2.4.90", frozenset({"1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91"})),
    "image/jpx": ("1.2.840.10008.1.2.4.92", frozenset({"1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93"})),
    "image/jphc": ("1.2.840.10008.1.2.4.201", frozenset({"1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})),
    "image/jxl": ("1.2.840.10008.1.2.4.110", frozenset({"1.2.840.10008.1.2.4.110",
        "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"})),
    "image/dicom-rle": ("1.2.840.10008.1.2.5", frozenset({"1.2.840.10008.1.2.5"})),
    "video/mpeg": ("", frozenset({"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"})),
    "video/mp4": ("", frozenset({f"1.2.840.10008.1.2.4.{n}" for n in range(102, 109)})),
}  # fmt: skip
_ALIASES = {f"image/x-{name}": f"image/{name}" for name in ("jls", "jp2", "jpx", "jphc", "jxl")}
_ALIASES |= {"image/x-dicom-rle": "image/dicom-rle", "application/*": OCTET}
_ANY = frozenset({"*/*", "multipart/*"})


#: Stored syntaxes an image/* type answers as stored when no syntax is named (lossy).
_LOSSY_STORED = {uid for uid, codec in codecs.CODECS.items() if codec.lossy}
_LOSSY_STORED |= {"1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.112"}


@dataclass(frozen=True, slots=True)
class FrameOffer:
    """A form the client accepts: media type as it spelled it, the transfer-syntax
    parameter (a UID, "*" or None), packaging."""

    media_type: str
    asked: str | None
    multipart: bool

    def target(self, stored_ts: str) -> str:
        """The syntax this offer means for pixels stored in `stored_ts`."""
        media_type = _ALIASES.get(self.media_type, self.media_type)
        default, carried = MEDIA[media_type]
        if self.asked == "*":
            return stored_ts if stored_ts in carried or media_type == OCTET else default
        if self.asked is None and stored_ts in pixels.VIDEO_TRANSFER_SYNTAXES:
            # Only lossy video exists: the default does not apply (PS3.18 8.7.3.3).
            return stored_ts if stored_ts in carried or media_type == OCTET else default
        if self.asked is None:
            # Video types have no default: their stream as stored.
            as_stored = stored_ts in carried and (not default or stored_ts in _LOSSY_STORED)
            return stored_ts if as_stored and media_type != OCTET else default
        return self.asked


def frame_offers(ranges: list[MediaRange], *, single: bool) -> list[FrameOffer]:
    """What the client accepts, best first.

    `single`: the response is one part, so a bare media type is acceptable."""
    offers: list[FrameOffer] = []
    for media in ranges:
        if media.media_type in _ANY:
            offers.append(FrameOffer(OCTET, None, True))
            continue
        spelled, multipart = media.media_type, False
        asked = media.params.get("transfer-syntax")
        if spelled == "multipart/related":
            spelled, multipart = media.params.get("type", OCTET).lower(), True
        elif not single and not (spelled == OCTET and asked in (None, EXPLICIT)):
            continue  # one part holds one frame, or uncompressed frames end to end
        canonical = _ALIASES.get(spelled, spelled)
        if canonical not in MEDIA:
            continue
        if asked not in (None, "*") and canonical != OCTET and asked not in MEDIA[canonical][1]:
            continue  # a syntax this media type does not carry
        offers.append(
            FrameOffer(OCTET if spelled == "application/*" else spelled, asked, multipart)
        )
    return offers


def choose(frames: list[StoredFrames], offers: list[FrameOffer], *, stream: bool) -> FrameOffer:
    """The first offer every instance's frames can be delivered in, or 406 saying why not.

    `stream`: a video may be delivered (whole, as stored)."""
    reason = "" if offers else "pixels are application/octet-stream or an image media type"
    for offer in offers:
        blocker = next((why for f in frames if (why := _refusal(f, offer, stream))), "")
        if not blocker:
            return offer
        reason = reason or blocker
    raise Refusal(406, "Not Acceptable", reason)


def _refusal(frames: StoredFrames, offer: FrameOffer, stream: bool) -> str:
    stored = frames.stored_syntax
    target = offer.target(stored)
    if frames.video:
        if stream and target == stored:
            return ""
        return "a video is one stream: its /pixeldata, as stored (its video media type or *)"
    if not target or offer.media_type.startswith("video/"):
        return f"instance {frames.row.sop_instance_uid} is not a video"
    why = transcode.refusal(stored, target, frames.spec, allow_lossy=True)
    return f"instance {frames.row.sop_instance_uid}: {why}" if why else ""


def parse_frame_list(text: str) -> list[int]:
    """'1,3,5' -> [1, 3, 5]; 400 for anything else."""
    numbers = [part.strip() for part in text.split(",")]
    if not numbers or not all(_FRAME_NUMBER.match(n) for n in numbers):
        raise Refusal(400, "Bad Request", f"frame list {text!r}: comma-separated numbers from 1")
    return [int(n) for n in numbers]


# -- responses ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    frames: StoredFrames
    index: int  # 0-based; -1: the whole video stream
    location: str


def _body(part: _Part, offer: FrameOffer) -> tuple[str, bytes]:
    """(Content-Type, bytes) of one part, computed now so its failure can still be a status."""
    source = part.frames
    target = offer.target(source.stored_syntax)
    try:
        data = source.video_stream() if part.index < 0 else source.in_syntax(part.index, target)
    except pixels.TranscodeUnsupported as exc:
        raise Refusal(406, "Not Acceptable", exc.reason) from exc
    return f"{offer.media_type}; transfer-syntax={target}", data


def _respond(parts: list[_Part], offer: FrameOffer, headers: dict[str, str]) -> Response:
    first = _body(parts[0], offer)
    if not offer.multipart:
        # One part: one frame, or uncompressed frames end to end (as in Pixel Data).
        media, data = first
        data += b"".join(_body(part, offer)[1] for part in parts[1:])
        return Response(data, media_type=media, headers=headers)
    boundary = uuid.uuid4().hex

    def chunks() -> Iterator[bytes]:
        for index, part in enumerate(parts):
            try:
                media, data = first if index == 0 else _body(part, offer)
            except Exception:
                log.exception("frames cut short at %s", part.location)
                raise
            yield (
                f"--{boundary}\r\nContent-Type: {media}\r\n"
                f"Content-Location: {part.location}\r\n\r\n"
            ).encode()
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media = f'multipart/related; type="{offer.media_type}"; boundary={boundary}'
    return StreamingResponse(chunks(), media_type=media, headers=headers)


def _sources(archive: ArchiveDep, rows: list[InstanceRow]) -> list[StoredFrames]:
    return [StoredFrames(archive.blobs, row) for row in rows]


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}")
def retrieve_frames(
    study: str, series: str, instance: str, frame_list: str, request: Request, archive: ArchiveDep
) -> Response:
    headers: dict[str, str] = {}
    try:
        rows, headers = find_rows(archive, study, series, instance)
        numbers = parse_frame_list(frame_list)
        (source,) = _sources(archive, rows[:1])
        if source.count == 0:
            raise Refusal(404, "Not Found", "the instance has no pixel data")
        beyond = [n for n in numbers if n > source.count]
        if beyond:
            raise Refusal(404, "Not Found", f"frame {beyond[0]}: the instance has {source.count}")
        ranges = parse_accept(request.headers.get("accept"))
        offers = frame_offers(ranges, single=len(numbers) == 1)
        offer = choose([source], offers, stream=False)
        url = instance_url(base_url(archive, request), source.row)
        parts = [_Part(source, n - 1, f"{url}/frames/{n}") for n in numbers]
        return _respond(parts, offer, headers)
    except REFUSALS as exc:
        return answer(exc, headers)


def _pixeldata(
    archive: ArchiveDep, request: Request, study: str, series: str | None, instance: str | None
) -> Response:
    headers: dict[str, str] = {}
    try:
        rows, headers = find_rows(archive, study, series, instance)
        return pixel_data_response(archive, request, rows, headers, instance=bool(instance))
    except REFUSALS as exc:
        return answer(exc, headers)


def pixel_data_response(
    archive: ArchiveDep,
    request: Request,
    rows: list[InstanceRow],
    headers: dict[str, str],
    *,
    instance: bool,
) -> Response:
    """Every frame of `rows` (an instance's video: its stream), negotiated; raises Refusal.

    Also the answer to an encapsulated Pixel Data BulkDataURI (api.wado): compressed
    bulk data is the octet streams without their item delimiters (PS3.18 8.7.3.3.2)."""
    sources = [s for s in _sources(archive, rows) if s.count and (instance or not s.video)]
    if not sources:
        raise Refusal(404, "Not Found", "no pixel data here")
    ranges = parse_accept(request.headers.get("accept"))
    single = len(sources) == 1 and (sources[0].count == 1 or sources[0].video)
    # Several instances' frames end to end in one body would mean nothing.
    offers = [o for o in frame_offers(ranges, single=single) if o.multipart or instance]
    offer = choose(sources, offers, stream=True)
    base = base_url(archive, request)
    parts = [_Part(s, -1, f"{instance_url(base, s.row)}/pixeldata") for s in sources if s.video]
    parts += [
        _Part(s, n, f"{instance_url(base, s.row)}/frames/{n + 1}")
        for s in sources
        if not s.video
        for n in range(s.count)
    ]
    return _respond(parts, offer, headers)


@router.get("/studies/{study}/pixeldata")
def study_pixeldata(study: str, request: Request, archive: ArchiveDep) -> Response:
    return _pixeldata(archive, request, study, None, None)


@router.get("/studies/{study}/series/{series}/pixeldata")
def series_pixeldata(study: str, series: str, request: Request, archive: ArchiveDep) -> Response:
    return _pixeldata(archive, request, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}/pixeldata")
def instance_pixeldata(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep
) -> Response:
    return _pixeldata(archive, request, study, series, instance)
