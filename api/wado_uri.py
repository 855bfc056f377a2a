"""WADO-URI (PS3.18 2013 chapters 6-8): GET /wado?requestType=WADO&studyUID=...

One instance per request, as application/dicom (optionally in another
transfer syntax, optionally de-identified) or rendered as image/jpeg,
image/png or image/gif. Parameters are checked before anything is read:
every malformed or out-of-range value, a missing required parameter or a
combination PS3.18 forbids is a 400 problem naming the parameter; an unknown
object or presentation state is 404; a contentType that cannot be served
(also because the Accept header rules it out) is 406. The endpoint is a
plain `def`: FastAPI runs it in the thread pool.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import APIRouter, Request, Response
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from api import pixels
from api.anonymize import NotDeidentifiable, UidMap, anonymize
from api.catalog import InstanceRow, list_instances, load_metadata
from api.deps import ArchiveDep
from api.negotiation import MediaRange, Refusal, parse_accept
from api.presentation_state import PresentationStateRefused, apply_presentation_state
from api.problems import LAGGING_WARNING, problem
from api.render import RenderParams, encode_images, number_of_frames, render_frame
from api.transcode import is_lossy, transcode
from api.wiring import Archive
from infra.errors import Invalid, NotFound, Unavailable
from schemas.uids import check_uid

router = APIRouter()

DICOM = "application/dicom"
JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
RENDERED = (JPEG, PNG, GIF)
AS_STORED = "*"
MIN_SIDE, MAX_SIDE = 64, 32767  # rows and columns, as the seed conformance statement has it
ANNOTATIONS = frozenset({"patient", "technique"})
# Parameters PS3.18 forbids with application/dicom, and the ones it allows only with it.
_RENDER_PARAMETERS = "annotation rows columns region windowCenter windowWidth frameNumber"
_RENDER_ONLY = (_RENDER_PARAMETERS + " presentationUID presentationSeriesUID").split()
_DICOM_ONLY = ("anonymize", "transferSyntax")
_DECIMAL = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_INTEGER = re.compile(r"^[+]?[0-9]{1,9}$")
# UIDs of de-identified objects are consistent within this server process.
_UID_SALT = secrets.token_bytes(32)
_T = TypeVar("_T")


@dataclass(frozen=True)
class WadoRequest:
    """A checked WADO-URI request."""

    study: str
    series: str
    instance: str
    content_types: tuple[MediaRange, ...]  # contentType, by preference; empty when absent
    given: frozenset[str]
    anonymize: bool = False
    transfer_syntax: str | None = None
    annotation: frozenset[str] = frozenset()
    rows: int | None = None
    columns: int | None = None
    region: tuple[float, float, float, float] | None = None
    window: tuple[float, float] | None = None
    frame_number: int | None = None
    image_quality: int | None = None
    presentation: tuple[str, str] | None = None  # (series, instance)

    @property
    def dicom_only(self) -> list[str]:
        return [name for name in _DICOM_ONLY if name in self.given]

    @property
    def render_only(self) -> list[str]:
        found = [name for name in _RENDER_ONLY if name in self.given]
        # imageQuality goes with application/dicom only to set a lossy transferSyntax's quality.
        if self.image_quality is not None and not is_lossy(self.transfer_syntax or ""):
            found.append("imageQuality")
        return found


def _bad(detail: str) -> Refusal:
    return Refusal(400, "Bad Request", detail)


def parse_request(items: list[tuple[str, str]]) -> WadoRequest:
    """The request's parameters checked (PS3.18 2013 chapter 8), or a 400 Refusal."""
    params: dict[str, str] = {}
    for name, value in items:
        if name in params:
            raise _bad(f"parameter {name} is given more than once")
        params[name] = value
    if params.get("requestType") != "WADO":
        raise _bad("requestType=WADO is required")
    study, series, instance = (
        _uid(params.get(n), n) for n in ("studyUID", "seriesUID", "objectUID")
    )
    window = _window(params.get("windowCenter"), params.get("windowWidth"))
    presentation = _presentation(params.get("presentationSeriesUID"), params.get("presentationUID"))
    if window and presentation:
        raise _bad("windowCenter and windowWidth cannot be combined with presentationUID")
    return WadoRequest(
        study=study,
        series=series,
        instance=instance,
        content_types=_optional(params, "contentType", _content_types) or (),
        given=frozenset(params),
        anonymize=_optional(params, "anonymize", _anonymize) or False,
        transfer_syntax=_optional(params, "transferSyntax", _transfer_syntax),
        annotation=_optional(params, "annotation", _annotation) or frozenset(),
        rows=_optional(params, "rows", lambda t: _integer(t, "rows", MIN_SIDE, MAX_SIDE)),
        columns=_optional(params, "columns", lambda t: _integer(t, "columns", MIN_SIDE, MAX_SIDE)),
        region=_optional(params, "region", _region),
        window=window,
        frame_number=_optional(params, "frameNumber", lambda t: _integer(t, "frameNumber", 1)),
        image_quality=_optional(
            params, "imageQuality", lambda t: _integer(t, "imageQuality", 1, 100)
        ),
        presentation=presentation,
    )


def _optional(params: dict[str, str], name: str, parse: Callable[[str], _T]) -> _T | None:
    text = params.get(name)
    return None if text is None else parse(text)


def _uid(text: str | None, name: str) -> str:
    if text is None:
        raise _bad(f"{name} is required")
    try:
        return check_uid(text, name)
    except Invalid as exc:
        raise _bad(str(exc)) from exc


def _content_types(text: str) -> tuple[MediaRange, ...]:
    ranges = tuple(parse_accept(text)) if text.strip() else ()
    if not ranges:
        raise _bad(f"contentType={text[:60]!r} names no media type")
    return ranges


def _anonymize(text: str) -> bool:
    if text.strip().lower() != "yes":
        raise _bad(f"anonymize={text[:40]!r}: the only value is 'yes'")
    return True


def _transfer_syntax(text: str) -> str:
    if text.strip() == AS_STORED:
        return AS_STORED
    uid = _uid(text, "transferSyntax")
    if not uid.startswith("1.2.840.10008.1.2"):
        raise _bad(f"transferSyntax {uid} is not a DICOM transfer syntax UID")
    return uid


def _annotation(text: str) -> frozenset[str]:
    values = [v.strip().lower() for v in text.split(",")]
    unknown = [v for v in values if v not in ANNOTATIONS]
    if unknown:
        raise _bad(f"annotation {unknown[0][:40]!r} is not 'patient' or 'technique'")
    return frozenset(values)


def _integer(text: str, name: str, low: int, high: int = 2**31 - 1) -> int:
    if not _INTEGER.match(text.strip()):
        raise _bad(f"{name}={text[:40]!r} is not an integer")
    value = int(text)
    if not low <= value <= high:
        raise _bad(f"{name}={value} is outside {low}..{high}")
    return value


def _decimal(text: str, name: str) -> float:
    if not _DECIMAL.match(text.strip()) or not math.isfinite(float(text)):
        raise _bad(f"{name}={text[:40]!r} is not a decimal number")
    return float(text)


def _region(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise _bad("region is four decimals x1,y1,x2,y2 (normalized 0.0-1.0)")
    x1, y1, x2, y2 = (_decimal(part, "region") for part in parts)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        raise _bad(f"region {text} has a value outside 0.0-1.0")
    if not (x1 < x2 and y1 < y2):
        raise _bad(f"region {text} is not a top left corner above and left of a bottom right one")
    return x1, y1, x2, y2


def _window(center: str | None, width: str | None) -> tuple[float, float] | None:
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise _bad("windowCenter and windowWidth are given together or not at all")
    value = _decimal(width, "windowWidth")
    if value <= 0:
        raise _bad(f"windowWidth={width} is not greater than 0")
    return _decimal(center, "windowCenter"), value


def _presentation(series: str | None, instance: str | None) -> tuple[str, str] | None:
    if series is None and instance is None:
        return None
    if series is None or instance is None:
        raise _bad("presentationUID and presentationSeriesUID are given together")
    return _uid(series, "presentationSeriesUID"), _uid(instance, "presentationUID")


# -- which media type -------------------------------------------------------------


def choose_media_type(request: WadoRequest, accept: list[MediaRange], has_pixels: bool) -> str:
    """The first contentType (default: image/jpeg for images) that can be served.

    400 when the parameters rule out every listed type (PS3.18 forbids
    rendering parameters with application/dicom and the other way round),
    406 when the object or the Accept header does.
    """
    ranges = request.content_types or _default_types(request, has_pixels)
    conflicts: list[str] = []
    refusals: list[str] = []
    for media in ranges:
        offer = _offer(media.media_type, request, has_pixels)
        if offer is None:
            refusals.append(f"{media.media_type} is not served for this object")
        elif offer == DICOM and request.render_only:
            conflicts.append(f"{', '.join(request.render_only)} not allowed with {DICOM}")
        elif offer != DICOM and request.dicom_only:
            conflicts.append(f"{', '.join(request.dicom_only)} allowed only with {DICOM}")
        elif not any(_matches(allowed.media_type, offer) for allowed in accept):
            refusals.append(f"the Accept header does not allow {offer}")
        else:
            return offer
    if conflicts and not refusals:
        raise _bad("; ".join(conflicts))
    raise Refusal(406, "Not Acceptable", "; ".join(refusals + conflicts) or "no contentType")


def _default_types(request: WadoRequest, has_pixels: bool) -> list[MediaRange]:
    """image/jpeg for images "if compatible with the Accept field" (7.1.2), else the object."""
    wants_dicom = not has_pixels or (request.dicom_only and not request.render_only)
    return [MediaRange(media, {}, 1.0) for media in ([DICOM] if wants_dicom else [JPEG, DICOM])]


def _offer(media_type: str, request: WadoRequest, has_pixels: bool) -> str | None:
    if media_type in (DICOM, "application/*"):
        return DICOM
    if media_type == "*/*":
        return JPEG if has_pixels and not request.dicom_only else DICOM
    if not has_pixels:
        return None
    if media_type == "image/*":
        return JPEG
    return media_type if media_type in RENDERED else None


def _matches(allowed: str, offer: str) -> bool:
    if allowed in ("*/*", offer):
        return True
    return allowed.endswith("/*") and offer.startswith(allowed[:-1])


# -- the endpoint -----------------------------------------------------------------


@router.get("/wado")
def wado(request: Request, archive: ArchiveDep) -> Response:
    warnings: list[str] = []
    try:
        wado_request = parse_request(list(request.query_params.multi_items()))
        if not archive.read_barrier():
            warnings.append(LAGGING_WARNING)
        row = _instance(archive, wado_request.study, wado_request.series, wado_request.instance)
        has_pixels = "7FE00010" in load_metadata(row, archive.blobs)
        accept = parse_accept(request.headers.get("accept"))
        media = choose_media_type(wado_request, accept, has_pixels)
        if media == DICOM:
            body = _dicom_body(archive, row, wado_request, warnings)
        else:
            body = _rendered_body(archive, row, wado_request, media, warnings)
    except (Refusal, NotFound, Unavailable) as exc:
        return _answer(exc, warnings)
    return Response(body, media_type=media, headers=_warning_header(warnings))


def _instance(
    archive: Archive, study: str, series: str, instance: str, what: str = "instance"
) -> InstanceRow:
    rows = list_instances(archive.index, study, series, instance)
    if not rows:
        raise Refusal(404, "Not Found", f"no {what} {instance} in series {series} of study {study}")
    return rows[0]


def _read(archive: Archive, row: InstanceRow) -> bytes:
    stream = archive.blobs.get(row.blob_key)
    try:
        return stream.read()
    finally:
        stream.close()


def _answer(exc: Exception, warnings: list[str]) -> Response:
    headers = _warning_header(warnings)
    if isinstance(exc, Refusal):
        return problem(exc.status, exc.title, exc.detail, {**exc.headers, **headers})
    if isinstance(exc, NotFound):
        return problem(500, "Internal Server Error", f"stored object missing: {exc}", headers)
    return problem(503, "Service Unavailable", str(exc), {"Retry-After": "5", **headers})


def _warning_header(warnings: list[str]) -> dict[str, str]:
    if not warnings:
        return {}
    return {"Warning": ", ".join(warnings)}


def _note(text: str) -> str:
    return '299 chronicle "' + text.replace('"', "'") + '"'


# -- application/dicom ------------------------------------------------------------


def _dicom_body(
    archive: Archive, row: InstanceRow, request: WadoRequest, warnings: list[str]
) -> bytes:
    """The Part-10 file, de-identified when asked, in the transfer syntax asked.

    PS3.18 8.2.11: Explicit VR Little Endian by default and never Implicit VR
    or Big Endian; a syntax that cannot be produced falls back to Explicit VR
    Little Endian (with a Warning). 406 only when not even that can be made.
    """
    data = _read(archive, row)
    if request.anonymize:
        data = _deidentified(data, uid_salt(archive.settings.anonymize_uid_secret))
    stored = row.transfer_syntax_uid
    target = request.transfer_syntax or pixels.EXPLICIT_VR_LITTLE_ENDIAN
    if target in (pixels.IMPLICIT_VR_LITTLE_ENDIAN, pixels.EXPLICIT_VR_BIG_ENDIAN):
        warnings.append(_note(f"{target} is not used by WADO-URI: Explicit VR Little Endian"))
        target = pixels.EXPLICIT_VR_LITTLE_ENDIAN
    if target in (AS_STORED, stored):
        return data
    try:
        return transcode(data, target, allow_lossy=True, quality=request.image_quality)
    except pixels.TranscodeUnsupported as exc:
        if target == pixels.EXPLICIT_VR_LITTLE_ENDIAN:
            raise _not_acceptable(exc) from exc
        warnings.append(_note(f"{exc.reason}: served as Explicit VR Little Endian"))
    if stored == pixels.EXPLICIT_VR_LITTLE_ENDIAN:
        return data
    try:
        return transcode(data, pixels.EXPLICIT_VR_LITTLE_ENDIAN)
    except pixels.TranscodeUnsupported as exc:
        raise _not_acceptable(exc) from exc


def _not_acceptable(exc: pixels.TranscodeUnsupported) -> Refusal:
    return Refusal(406, "Not Acceptable", f"{exc.reason}; transferSyntax=* returns it as stored")


def uid_salt(secret: str) -> bytes:
    """The salt of replacement UIDs: from the configured secret, else this process's own."""
    if not secret:
        return _UID_SALT
    return hashlib.sha256(b"chronicle anonymize uid " + secret.encode()).digest()


def _deidentified(data: bytes, salt: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    try:
        anonymize(ds, UidMap(salt))
    except NotDeidentifiable as exc:
        raise Refusal(409, "Conflict", f"cannot anonymize this object: {exc}") from exc
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# -- rendered images --------------------------------------------------------------


def _rendered_body(
    archive: Archive, row: InstanceRow, request: WadoRequest, media: str, warnings: list[str]
) -> bytes:
    ds = dcmread(io.BytesIO(_read(archive, row)))
    frames = number_of_frames(ds)
    if request.frame_number is not None and request.frame_number > frames:
        raise _bad(f"frameNumber={request.frame_number}: the instance has {frames} frame(s)")
    if request.frame_number is not None:
        indices = [request.frame_number - 1]
    else:
        indices = list(range(frames)) if media == GIF else [0]
    gsps = _presentation_state(archive, request) if request.presentation else None
    try:
        images = [_render(ds, index, request, gsps, warnings) for index in indices]
        return encode_images(images, media, quality=request.image_quality or 90)
    except pixels.TranscodeUnsupported as exc:
        raise Refusal(406, "Not Acceptable", f"cannot render {media}: {exc.reason}") from exc
    except PresentationStateRefused as exc:
        raise _bad(str(exc)) from exc
    except ValueError as exc:
        raise _bad(str(exc)) from exc


def _presentation_state(archive: Archive, request: WadoRequest) -> Dataset:
    """The presentation state asked for; PS3.18: it is in the same study as the image."""
    assert request.presentation is not None
    series, instance = request.presentation
    row = _instance(archive, request.study, series, instance, "presentation state")
    return dcmread(io.BytesIO(_read(archive, row)))


def _render(
    ds: Dataset, index: int, request: WadoRequest, gsps: Dataset | None, warnings: list[str]
) -> Image.Image:
    window: tuple[float, float, str] | None = None
    if request.window is not None:
        window = (request.window[0], request.window[1], "LINEAR")
    image, magnification = ds, None
    if gsps is not None:
        presented = apply_presentation_state(ds, gsps, index)
        image, window, magnification = presented.image, presented.window, presented.magnification
        note = _note("presentation state not applied: " + ", ".join(presented.not_applied))
        if presented.not_applied and note not in warnings:
            warnings.append(note)
    params = RenderParams(
        window=window,
        viewport=_viewport(request, image, magnification),
        region=request.region,
        quality=request.image_quality or 90,
        annotation=request.annotation,
    )
    return render_frame(image, 0 if gsps is not None else index, params)


def _viewport(
    request: WadoRequest, image: Dataset, magnification: float | None
) -> tuple[int, int] | None:
    """rows / columns as maxima (one alone keeps the aspect ratio); else MAGNIFY's scale."""
    if request.rows is not None or request.columns is not None:
        return request.rows or 0, request.columns or 0
    if magnification is None:
        return None
    x1, y1, x2, y2 = request.region or (0.0, 0.0, 1.0, 1.0)
    rows = int(image.Rows) * (y2 - y1) * magnification
    return max(1, min(MAX_SIDE, round(rows))), 0
