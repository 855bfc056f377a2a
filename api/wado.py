"""WADO-RS (PS3.18 10.4): retrieve study, series, instance, metadata and bulk data.

Instances stream from the blob store in 1 MiB chunks, one at a time, and go
out in pieces of ~4 MiB, so a study never sits in memory. Content
negotiation follows the Accept header's media ranges in q order; the first
one every instance can be served in wins, otherwise 406 says why. A
`transfer-syntax` other than the stored one is produced by `api.transcode`
(lossy ones only when named; video only as stored, with transfer-syntax=*).
Bulk data: every BulkDataURI of the metadata is a byte range of the blob
(Range honoured, big endian words swapped), except an encapsulated Pixel
Data, answered as the instance's /pixeldata (`api.frames`). Endpoints are
plain `def`: FastAPI runs them, and Starlette iterates the streaming bodies,
in its thread pool.
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from api import frames, pixels, transcode
from api.catalog import (
    InstanceRow,
    bulk_ranges,
    load_metadata,
    metadata_bytes,
)
from api.deps import ArchiveDep
from api.negotiation import MediaRange, Refusal, byte_range, parse_accept, related_type
from api.pixel_spec import PixelSpec
from api.wado_common import (
    REFUSALS,
    answer,
    base_url,
    find_metadata,
    find_rows,
    instance_url,
)
from infra.errors import NotFound, Unavailable
from infra.ports import BlobStore
from projections.documents import BASE_MARK
from schemas.dicom_json import absolutize_bulk_uris
from schemas.dicom_xml import json_to_xml

log = logging.getLogger("chronicle.wado")
router = APIRouter(prefix="/dicomweb")

CHUNK = 1 << 20
#: A multipart body goes out in pieces of about this size. Starlette runs each
#: step of a sync iterator in a worker thread: with three pieces per instance
#: (header, data, CRLF) a study of 500 CT slices cost 1,500 thread hops.
PIECE = 4 << 20
AS_STORED = "*"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
OCTET = "application/octet-stream"
EXPLICIT = pixels.EXPLICIT_VR_LITTLE_ENDIAN
_ANY = frozenset({"*/*", "multipart/*"})
_JSON_TYPES = frozenset({"*/*", "application/*", "application/json", DICOM_JSON})
_BULK_RANGE = re.compile(r"^([0-9]{1,15})-([0-9]{1,15})$")
_RELATIVE_BULK = b'"BulkDataURI":"bulkdata/'
_BASE_MARK = BASE_MARK.encode()


# -- retrieve instances ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offer:
    multipart: bool
    transfer_syntax: str  # a UID or AS_STORED


def dicom_offers(ranges: list[MediaRange], *, single_part: bool) -> list[Offer]:
    """What the client accepts, as (multipart?, transfer syntax), best first."""
    offers: list[Offer] = []
    for media in ranges:
        ts = media.params.get("transfer-syntax", EXPLICIT)
        if media.media_type in _ANY:
            offers.append(Offer(True, EXPLICIT))
        elif media.media_type == "multipart/related":
            if related_type(media, DICOM) in (DICOM, "application/*", "*/*"):
                offers.append(Offer(True, ts))
        elif media.media_type == DICOM and single_part:
            offers.append(Offer(False, ts))
    return offers


def choose_offer(
    rows: list[InstanceRow], offers: list[Offer], blobs: BlobStore | None = None
) -> Offer:
    """The first offer every instance can be served in, or a 406 naming why not.

    `blobs` lets the Image Pixel attributes (metadata) refine the answer for
    encapsulated targets; without it the syntaxes alone decide."""
    if not offers:
        raise Refusal(406, "Not Acceptable", f'retrieve answers multipart/related; type="{DICOM}"')
    first_reason = ""
    for offer in offers:
        blocker = next(
            ((r, why) for r in rows if (why := _refusal(r, offer.transfer_syntax, blobs))), None
        )
        if blocker is None:
            return offer
        first_reason = first_reason or f"instance {blocker[0].sop_instance_uid}: {blocker[1]}"
    raise Refusal(406, "Not Acceptable", first_reason)


def _refusal(row: InstanceRow, ts: str, blobs: BlobStore | None) -> str:
    """Why `row` cannot go out in `ts` ('' when it can); metadata read only when it matters."""
    if ts in (AS_STORED, row.transfer_syntax_uid):
        return ""
    quick = transcode.refusal(row.transfer_syntax_uid, ts, allow_lossy=True)
    if blobs is None or not transcode.producible(ts) or (not quick and ts == EXPLICIT):
        return quick
    spec = PixelSpec.from_metadata(load_metadata(row, blobs))
    return transcode.refusal(
        row.transfer_syntax_uid, ts, spec, allow_lossy=True, pixel_data=spec is not None
    )


def _part_body(blobs: BlobStore, row: InstanceRow, ts: str) -> tuple[str, Iterator[bytes]]:
    """(transfer syntax delivered, body chunks); opens or transcodes eagerly so errors surface.

    Explicitly named lossy syntaxes were asked for: `allow_lossy` (PS3.18 8.7.3)."""
    if ts in (AS_STORED, row.transfer_syntax_uid):
        return row.transfer_syntax_uid, _stream_chunks(blobs.get(row.blob_key))
    stored = b"".join(_stream_chunks(blobs.get(row.blob_key)))
    try:
        body = transcode.transcode(stored, ts, allow_lossy=True)
    except pixels.TranscodeUnsupported as exc:
        # Checked before streaming; only a corrupt stream gets here. The part
        # header stays truthful: the stored bytes in their own syntax.
        log.warning("serving %s as stored: %s", row.sop_instance_uid, exc.reason)
        return row.transfer_syntax_uid, _bytes_chunks(stored)
    return ts, _bytes_chunks(body)


def _stream_chunks(stream: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := stream.read(CHUNK):
            yield chunk
    finally:
        stream.close()


def _bytes_chunks(body: bytes) -> Iterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(body), CHUNK):
        yield bytes(view[start : start + CHUNK])


def _parts(
    blobs: BlobStore,
    rows: list[InstanceRow],
    ts: str,
    base: str,
    boundary: str,
    first: tuple[str, Iterator[bytes]],
) -> Iterator[bytes]:
    pending: list[bytes] = []
    size = 0
    for index, row in enumerate(rows):
        try:
            delivered, chunks = first if index == 0 else _part_body(blobs, row, ts)
        except (NotFound, Unavailable):
            # Headers are gone; all we can do is cut the body short and say why.
            log.exception("retrieve cut short at instance %s", row.sop_instance_uid)
            raise
        head = (
            f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={delivered}\r\n"
            f"Content-Location: {instance_url(base, row)}\r\n\r\n"
        ).encode()
        for piece in itertools.chain((head,), chunks, (b"\r\n",)):
            pending.append(piece)
            size += len(piece)
            if size >= PIECE:
                yield b"".join(pending)
                pending.clear()
                size = 0
    pending.append(f"--{boundary}--\r\n".encode())
    yield b"".join(pending)


def _retrieve(
    archive: ArchiveDep, request: Request, study: str, series: str | None, instance: str | None
) -> Response:
    headers: dict[str, str] = {}
    try:
        rows, headers = find_rows(archive, study, series, instance)
        offers = dicom_offers(
            parse_accept(request.headers.get("accept")), single_part=bool(instance)
        )
        offer = choose_offer(rows, offers, archive.blobs)
        if not offer.multipart:
            delivered, chunks = _part_body(archive.blobs, rows[0], offer.transfer_syntax)
            media = f"{DICOM}; transfer-syntax={delivered}"
            return StreamingResponse(chunks, media_type=media, headers=headers)
        boundary, ts = uuid.uuid4().hex, offer.transfer_syntax
        # The first part opens before the headers go, so its failure is still a status.
        first = _part_body(archive.blobs, rows[0], ts)
        body = _parts(archive.blobs, rows, ts, base_url(archive, request), boundary, first)
    except REFUSALS as exc:
        return answer(exc, headers)
    media = f'multipart/related; type="{DICOM}"; boundary={boundary}'
    return StreamingResponse(body, media_type=media, headers=headers)


@router.get("/studies/{study}")
def retrieve_study(study: str, request: Request, archive: ArchiveDep) -> Response:
    return _retrieve(archive, request, study, None, None)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(study: str, series: str, request: Request, archive: ArchiveDep) -> Response:
    return _retrieve(archive, request, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
def retrieve_instance(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep
) -> Response:
    return _retrieve(archive, request, study, series, instance)


# -- metadata --------------------------------------------------------------------


def metadata_format(ranges: list[MediaRange]) -> str:
    """DICOM_JSON or DICOM_XML (multipart), per the client's preference."""
    for media in ranges:
        if media.media_type in _JSON_TYPES:
            return DICOM_JSON
        if media.media_type == "multipart/related" and related_type(media) == DICOM_XML:
            return DICOM_XML
    raise Refusal(
        406, "Not Acceptable", f'metadata is {DICOM_JSON} or multipart/related; type="{DICOM_XML}"'
    )


def absolute_metadata(raw: bytes, url: str) -> bytes:
    """Stored DICOM JSON with BulkDataURIs made absolute under the instance URL.

    Stored metadata is compact JSON, where `"BulkDataURI":"bulkdata/` can only
    be a key and its value (a string value would have escaped quotes), so a
    byte replace does; anything else takes the parse-and-rewrite path.
    """
    found = raw.count(b'"BulkDataURI"')
    if found == 0:
        return raw
    if raw.count(_RELATIVE_BULK) == found:
        prefix = orjson.dumps(f"{url}/bulkdata/")[:-1]
        return raw.replace(_RELATIVE_BULK, b'"BulkDataURI":' + prefix)
    return orjson.dumps(absolutize_bulk_uris(orjson.loads(raw), url))


def _metadata(
    archive: ArchiveDep, request: Request, study: str, series: str | None, instance: str | None
) -> Response:
    headers: dict[str, str] = {}
    try:
        ranges = parse_accept(request.headers.get("accept"))
        json = _json_wanted(ranges)
        document, rows, headers = find_metadata(archive, study, series, instance, prepared=json)
        chosen = metadata_format(ranges)  # a 406 only once the instances are found
        base = base_url(archive, request)
        if document is not None:
            return _prepared(document, base, headers)
        documents = [
            absolute_metadata(metadata_bytes(row, archive.blobs), instance_url(base, row))
            for row in rows
        ]
    except REFUSALS as exc:
        return answer(exc, headers)
    if chosen == DICOM_JSON:
        body = b"[" + b",".join(documents) + b"]"
        return Response(body, media_type=DICOM_JSON, headers=headers)
    boundary = uuid.uuid4().hex
    parts = [
        f"--{boundary}\r\nContent-Type: {DICOM_XML}\r\n\r\n".encode()
        + json_to_xml(orjson.loads(document))
        + b"\r\n"
        for document in documents
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    media = f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'
    return Response(body, media_type=media, headers=headers)


def _json_wanted(ranges: list[MediaRange]) -> bool:
    try:
        return metadata_format(ranges) == DICOM_JSON
    except Refusal:
        return False


def _prepared(document: bytes, base: str, headers: dict[str, str]) -> Response:
    """Prepared /metadata with the request's base URL put in."""
    body = document.replace(_BASE_MARK, orjson.dumps(base)[1:-1])
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, request: Request, archive: ArchiveDep) -> Response:
    return _metadata(archive, request, study, None, None)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, request: Request, archive: ArchiveDep) -> Response:
    return _metadata(archive, request, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep
) -> Response:
    return _metadata(archive, request, study, series, instance)


# -- bulk data -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bulk:
    """One bulk value in a blob; `swap` > 0 when stored big endian (served little endian)."""

    blobs: BlobStore
    row: InstanceRow
    offset: int
    swap: int

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of the value, read in CHUNK-sized (word-aligned) pieces."""
        low, high = start, end
        if self.swap:
            low, high = start - start % self.swap, end + (-end) % self.swap
        for at in range(low, high, CHUNK):
            raw = self.blobs.get_range(self.row.blob_key, self.offset + at, min(CHUNK, high - at))
            if self.swap:
                raw = pixels.swap_bytes(raw, self.swap)
            yield raw[max(start - at, 0) : end - at]


def _bulk_offer(ranges: list[MediaRange]) -> bool:
    """True for the multipart form, False for single-part application/octet-stream."""
    for media in ranges:
        if media.media_type in _ANY:
            return True
        if media.media_type == "multipart/related":
            if related_type(media, OCTET) in (OCTET, "application/*", "*/*"):
                return True
        elif media.media_type in (OCTET, "application/*"):
            return False
    raise Refusal(
        406, "Not Acceptable", f'bulk data is {OCTET} or multipart/related; type="{OCTET}"'
    )


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{span}")
def retrieve_bulkdata(
    study: str, series: str, instance: str, span: str, request: Request, archive: ArchiveDep
) -> Response:
    headers: dict[str, str] = {}
    try:
        rows, headers = find_rows(archive, study, series, instance)
        row = rows[0]
        match = _BULK_RANGE.match(span)
        if not match:
            raise Refusal(404, "Not Found", "bulk data is addressed as {offset}-{length}")
        offset, length = int(match[1]), int(match[2])
        meta = orjson.loads(metadata_bytes(row, archive.blobs))
        vr = bulk_ranges(meta, row.frames).get((offset, length))
        if vr is None:
            raise Refusal(404, "Not Found", f"no bulk data {span} in this instance")
        if _encapsulated_pixels(meta, span, row):
            return frames.pixel_data_response(archive, request, rows, headers, instance=True)
        bulk = _Bulk(
            archive.blobs, row, offset, pixels.big_endian_width(row.transfer_syntax_uid, vr)
        )
        multipart = _bulk_offer(parse_accept(request.headers.get("accept")))
        if multipart:
            return _bulk_multipart(archive, request, bulk, length, headers)
        window = byte_range(request.headers.get("range"), length)
    except REFUSALS as exc:
        return answer(exc, headers)
    headers["Accept-Ranges"] = "bytes"
    start, end = window or (0, length)
    headers["Content-Length"] = str(end - start)
    chunks = bulk.chunks(start, end)
    if window is None:
        return StreamingResponse(chunks, media_type=OCTET, headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{length}"
    return StreamingResponse(chunks, status_code=206, media_type=OCTET, headers=headers)


def _encapsulated_pixels(meta: dict[str, Any], span: str, row: InstanceRow) -> bool:
    """The Pixel Data BulkDataURI of compressed pixels: served as /pixeldata is."""
    pixel_uri = (meta.get("7FE00010") or {}).get("BulkDataURI")
    native = row.transfer_syntax_uid in pixels.NATIVE_TRANSFER_SYNTAXES
    return pixel_uri == f"bulkdata/{span}" and not native


def _bulk_multipart(
    archive: ArchiveDep, request: Request, bulk: _Bulk, length: int, headers: dict[str, str]
) -> Response:
    boundary = uuid.uuid4().hex
    url = instance_url(base_url(archive, request), bulk.row)
    location = f"{url}/bulkdata/{bulk.offset}-{length}"
    head = (
        f"--{boundary}\r\nContent-Type: {OCTET}\r\nContent-Location: {location}\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from bulk.chunks(0, length)
        yield f"\r\n--{boundary}--\r\n".encode()

    media = f'multipart/related; type="{OCTET}"; boundary={boundary}'
    return StreamingResponse(body(), media_type=media, headers=headers)
