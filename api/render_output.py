"""Rendered representations of one instance: encoded bodies and multipart parts.

Errors are `Refusal`s the router answers as problems: 400 when a parameter
does not fit this image (a frame beyond those stored, a viewport too large),
406 when nothing acceptable can be produced (pixels Chronicle cannot decode,
a media type the instance's category lacks).
"""

from __future__ import annotations

import uuid

from pydicom.dataset import Dataset

from api.negotiation import MediaRange, Refusal
from api.pixels import TranscodeUnsupported
from api.render import display_frame_ms, encode_images, number_of_frames, render_frame
from api.render_docs import TEXT_HTML, encapsulated_document, sr_html, sr_text
from api.render_media import (
    IMAGE_OFFERS,
    Kind,
    choose_frames,
    choose_single,
    kind_of_dataset,
)
from api.render_params import RenderQuery

#: Rendered frames held at once for one animated GIF (each decoded at full size).
MAX_ANIMATION_BYTES = 1 << 28


def not_acceptable(detail: str) -> Refusal:
    return Refusal(406, "Not Acceptable", detail)


def render_instance(ds: Dataset, kind: Kind, media: str, query: RenderQuery) -> bytes:
    """One instance in `media` (one of kind.offers). Raises Refusal."""
    if kind.category == "document":
        return encapsulated_document(ds)
    if kind.category == "sr":
        return (sr_html(ds) if media == TEXT_HTML else sr_text(ds)).encode("utf-8")
    frames = list(range(number_of_frames(ds))) if media == "image/gif" else [0]
    return render_images(ds, frames, media, query)


def render_images(ds: Dataset, frames: list[int], media: str, query: RenderQuery) -> bytes:
    """Frames (0-based) of an image instance encoded as one `media` image (GIF animates)."""
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if len(frames) * rows * columns * samples > MAX_ANIMATION_BYTES:
        raise Refusal(
            400, "Bad Request", f"{len(frames)} frames are too many to animate: ask for fewer"
        )
    try:
        params = query.for_image(rows, columns)
        images = [render_frame(ds, frame, params) for frame in frames]
        duration = display_frame_ms(ds)
        return encode_images(images, media, quality=params.quality, frame_duration_ms=duration)
    except ValueError as exc:
        raise Refusal(400, "Bad Request", str(exc)) from exc
    except TranscodeUnsupported as exc:
        raise not_acceptable(f"cannot render this instance: {exc.reason}") from exc


def content_type(media: str) -> str:
    return f"{media}; charset=utf-8" if media.startswith("text/") else media


def single_body(ds: Dataset, ranges: list[MediaRange], query: RenderQuery) -> tuple[bytes, str]:
    kind = kind_of_dataset(ds)
    if not kind.offers:
        raise not_acceptable(f"a {kind.category} instance has no rendered representation")
    media = choose_single(ranges, kind.offers)
    if media is None:
        raise not_acceptable(f"this instance renders as {', '.join(kind.offers)}")
    return render_instance(ds, kind, media, query), content_type(media)


def frames_body(
    ds: Dataset, frames: list[int], ranges: list[MediaRange], query: RenderQuery, url: str
) -> tuple[bytes, str]:
    if kind_of_dataset(ds).category != "image":
        raise Refusal(400, "Bad Request", "the instance has no frames to render")
    total = number_of_frames(ds)
    beyond = [f + 1 for f in frames if f >= total]
    if beyond:
        raise Refusal(400, "Bad Request", f"frames {beyond} are beyond the {total} stored")
    if len(frames) == 1:
        media = choose_single(ranges, IMAGE_OFFERS)
        if media is None:
            raise not_acceptable(f"a frame renders as {', '.join(IMAGE_OFFERS)}")
        return render_images(ds, frames, media, query), media
    choice = choose_frames(ranges)
    if choice is None:
        raise not_acceptable(
            'several frames render as image/gif or multipart/related; type="image/jpeg"'
        )
    multipart, media = choice
    if not multipart:
        return render_images(ds, frames, media, query), media
    boundary = uuid.uuid4().hex
    parts = [
        part(
            boundary, media, f"{url}/frames/{f + 1}/rendered", render_images(ds, [f], media, query)
        )
        for f in frames
    ]
    return b"".join(parts) + closing(boundary), multipart_type(media, boundary)


def part(boundary: str, media: str, location: str, body: bytes) -> bytes:
    head = (
        f"--{boundary}\r\nContent-Type: {content_type(media)}\r\n"
        f"Content-Location: {location}\r\n\r\n"
    )
    return head.encode() + body + b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def multipart_type(media: str, boundary: str) -> str:
    return f'multipart/related; type="{media}"; boundary={boundary}'
