"""`chronicle print`: print stored studies, series or instances on a DICOM printer.

Each UID on the command line may name a study, a series or an instance; every
frame of every image instance it covers becomes one image box, in the
archive's order (series number, instance number), over as many films as the
layout needs. Instances without pixel data (SR, KOS, presentation states) are
skipped and counted.

Where the images come from:
- embedded (default): the archive's own stores, opened directly. chDB admits
  one process per data directory, so this fails with a clear message while a
  server holds it; projections are first brought up to the log end so what
  was stored last is printable.
- `--url http://server:port`: a running server, through its public DICOMweb
  API (QIDO-RS to list instances, WADO-RS with transfer-syntax=* to fetch each
  as stored); pixels are decoded here.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx
import numpy.typing as npt
from pydicom import dcmread

from api.catalog import list_instances
from api.matching import Level, parse_qido, search_page
from api.print_scu import FilmLayout, FilmSession, PrintJob, print_images
from api.rendering import PRINT_BITS, render_for_print
from infra.errors import Invalid, NotFound, Unavailable
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.settings import RemoteAE, Settings
from ingest.multipart import check_boundary, parse_content_type
from projections.runner import Projector
from schemas.uids import check_uid

log = logging.getLogger("chronicle.print")

#: QIDO-RS page size: the server's largest (api.query_model.MAX_LIMIT).
PAGE = 1000
_UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E"}
_TAGS["SOPInstanceUID"] = "00080018"
_LAYOUT = re.compile(r"^(STANDARD\\\d+,\d+|(ROW|COL)\\\d+(,\d+)*|SLIDE|SUPERSLIDE|CUSTOM\\\d+)$")
_ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True, slots=True)
class InstanceRef:
    study: str
    series: str
    sop: str


class ImageSource(Protocol):
    def page(self, key: str, uid: str, offset: int) -> tuple[list[dict[str, Any]], bool]:
        """One page of instance-level matches for key=uid (DICOM JSON), and whether more follow."""
        ...

    def part10(self, ref: InstanceRef) -> bytes: ...

    def close(self) -> None: ...


def add_parser(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = subparsers.add_parser(
        "print", help="print studies, series or instances on a DICOM grayscale printer"
    )
    common(parser)
    parser.add_argument("uids", nargs="+", metavar="UID", help="study, series or instance UIDs")
    parser.add_argument(
        "--printer", required=True, type=_printer, metavar="TITLE@HOST:PORT", help="the print SCP"
    )
    parser.add_argument("--url", help="fetch through the running server at this base URL")
    parser.add_argument("--ae-title", help="our (calling) AE title (default CHRONICLE)")
    film = parser.add_argument_group("film box")
    film.add_argument(
        "--layout",
        type=_layout,
        default="STANDARD\\1,1",
        help="Image Display Format (default STANDARD\\1,1)",
    )
    film.add_argument("--film-size", default="8INX10IN", help="Film Size ID (default 8INX10IN)")
    film.add_argument(
        "--orientation",
        default="PORTRAIT",
        type=str.upper,
        choices=("PORTRAIT", "LANDSCAPE"),
        help="Film Orientation",
    )
    film.add_argument("--magnification", type=str.upper, help="Magnification Type (e.g. CUBIC)")
    film.add_argument("--smoothing", help="Smoothing Type")
    film.add_argument("--border-density", type=str.upper, help="Border Density (BLACK, WHITE)")
    film.add_argument("--trim", type=str.upper, choices=("YES", "NO"), help="Trim")
    film.add_argument("--configuration-info", help="Configuration Information")
    session = parser.add_argument_group("film session")
    session.add_argument("--copies", type=int, default=1, help="Number of Copies (default 1)")
    session.add_argument(
        "--priority",
        default="MED",
        type=str.upper,
        choices=("HIGH", "MED", "LOW"),
        help="Print Priority (default MED)",
    )
    session.add_argument("--medium-type", type=str.upper, help="Medium Type (e.g. PAPER)")
    session.add_argument("--destination", type=str.upper, help="Film Destination (e.g. MAGAZINE)")
    parser.add_argument(
        "--bits",
        type=int,
        default=8,
        choices=PRINT_BITS,
        help="bits per printed pixel (default 8; 12 if the printer takes it)",
    )
    parser.set_defaults(run=run_print)


def _printer(text: str) -> RemoteAE:
    try:
        return RemoteAE.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _layout(text: str) -> str:
    layout = text.strip().upper()
    if not _LAYOUT.match(layout):
        raise argparse.ArgumentTypeError(
            f"layout '{text}' is not an Image Display Format such as STANDARD\\2,2 or ROW\\2,1"
        )
    return layout


def run_print(settings: Settings, args: argparse.Namespace) -> int:
    if args.copies < 1:
        raise Invalid("--copies must be at least 1")
    uids = [check_uid(uid, "UID") for uid in args.uids]
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    source = WebSource(args.url) if args.url else EmbeddedSource.open(settings)
    skipped: list[str] = []
    try:
        frames = _frames(source, resolve(source, uids), args.bits, skipped)
        # The first image is fetched before the printer is bothered at all.
        first = next(frames, None)
        if first is None:
            raise Invalid(f"nothing to print: no image among {len(skipped)} instance(s)")
        report = print_images(_job(args), itertools.chain([first], frames), settings)
    finally:
        source.close()
    print(report.render())
    if skipped:
        print(f"skipped {len(skipped)} instance(s) without pixel data")
    return 0


def _job(args: argparse.Namespace) -> PrintJob:
    session = FilmSession(args.copies, args.priority, args.medium_type, args.destination)
    layout = FilmLayout(
        image_display_format=args.layout,
        film_orientation=args.orientation,
        film_size_id=args.film_size,
        magnification_type=args.magnification,
        smoothing_type=args.smoothing,
        border_density=args.border_density,
        trim=args.trim,
        configuration_information=args.configuration_info,
    )
    return PrintJob(args.printer, session, layout)


def resolve(source: ImageSource, uids: list[str]) -> list[InstanceRef]:
    """Every instance the UIDs name, each once, in argument order then archive order."""
    found: dict[InstanceRef, None] = {}
    for uid in uids:
        refs = next((r for key in _UID_KEYS if (r := _instances(source, key, uid))), None)
        if refs is None:
            raise NotFound(f"no study, series or instance {uid} in the archive")
        found |= dict.fromkeys(refs)
    return list(found)


def _instances(source: ImageSource, key: str, uid: str) -> list[InstanceRef]:
    refs: list[InstanceRef] = []
    more = True
    while more:
        results, more = source.page(key, uid, len(refs))
        refs += [InstanceRef(*(_value(obj, _TAGS[k]) for k in _UID_KEYS)) for obj in results]
        more = more and bool(results)
    return refs


def _value(obj: dict[str, Any], tag: str) -> str:
    values = obj.get(tag, {}).get("Value") or [""]
    return check_uid(values[0], tag)


def _frames(
    source: ImageSource, refs: list[InstanceRef], bits: int, skipped: list[str]
) -> Iterator[npt.NDArray[Any]]:
    """Rendered frames, fetched one instance at a time as films are filled."""
    for ref in refs:
        ds = dcmread(io.BytesIO(source.part10(ref)))
        if "PixelData" not in ds:
            log.info("instance %s has no pixel data: not printed", ref.sop)
            skipped.append(ref.sop)
            continue
        for frame in range(int(ds.get("NumberOfFrames") or 1)):
            yield render_for_print(ds, bits=bits, frame=frame)


class EmbeddedSource:
    """The archive's stores, opened in this process (no server may hold them)."""

    def __init__(self, settings: Settings) -> None:
        _check_archive_exists(settings)
        try:
            self.index = open_projection_store(settings.index_url)
        except Unavailable as exc:
            raise Unavailable(f"{exc} (e.g. --url http://127.0.0.1:8080)") from exc
        self.log = open_event_log(settings.log_url)
        self.blobs = open_blob_store(settings.blob_url)

    @classmethod
    def open(cls, settings: Settings) -> EmbeddedSource:
        source = cls(settings)
        try:
            # Read-your-writes: what was stored since the last projection prints too.
            Projector(source.log, source.index, blobs=source.blobs).run_until(source.log.end())
        except BaseException:
            source.close()
            raise
        return source

    def page(self, key: str, uid: str, offset: int) -> tuple[list[dict[str, Any]], bool]:
        params = [(key, uid), ("limit", str(PAGE)), ("offset", str(offset))]
        found = search_page(self.index, parse_qido(Level.IMAGE, params))
        return found.results, found.more

    def part10(self, ref: InstanceRef) -> bytes:
        rows = list_instances(self.index, ref.study, ref.series, ref.sop)
        if not rows:
            raise NotFound(f"instance {ref.sop} is no longer in the archive")
        stream = self.blobs.get(rows[0].blob_key)
        try:
            return stream.read()
        finally:
            stream.close()

    def close(self) -> None:
        self.index.close()
        self.blobs.close()
        self.log.close()


def _check_archive_exists(settings: Settings) -> None:
    parts = urlsplit(settings.log_url)
    if parts.scheme == "sqlite" and not Path(unquote(parts.path)).exists():
        raise NotFound(f"no archive at {settings.data_dir} (give --data-dir, or --url)")


class WebSource:
    """A running server's DICOMweb API: QIDO-RS to list, WADO-RS to fetch as stored."""

    def __init__(self, base_url: str) -> None:
        self.root = base_url.rstrip("/") + "/dicomweb"
        self.client = httpx.Client(timeout=120)

    def page(self, key: str, uid: str, offset: int) -> tuple[list[dict[str, Any]], bool]:
        params = {key: uid, "limit": str(PAGE), "offset": str(offset)}
        response = self._get(f"{self.root}/instances", params, "application/dicom+json")
        if response.status_code == 204:
            return [], False
        results: list[dict[str, Any]] = response.json()
        return results, len(results) == PAGE

    def part10(self, ref: InstanceRef) -> bytes:
        url = f"{self.root}/studies/{ref.study}/series/{ref.series}/instances/{ref.sop}"
        response = self._get(url, {}, _ANY_SYNTAX)
        return first_part(response.content, response.headers.get("content-type", ""))

    def _get(self, url: str, params: dict[str, str], accept: str) -> httpx.Response:
        try:
            response = self.client.get(url, params=params, headers={"Accept": accept})
        except httpx.HTTPError as exc:
            raise Unavailable(f"GET {url} failed: {exc}") from exc
        if response.status_code == 404:
            raise NotFound(f"GET {url}: 404 {response.text[:200]}")
        if response.status_code >= 400:
            raise Unavailable(f"GET {url}: {response.status_code} {response.text[:200]}")
        return response

    def close(self) -> None:
        self.client.close()


def first_part(body: bytes, content_type: str) -> bytes:
    """The payload of the first part of a multipart/related body (RFC 2046 5.1)."""
    media_type, params = parse_content_type(content_type)
    if media_type != "multipart/related":
        raise Invalid(f"expected a multipart/related answer, got {content_type!r}")
    delimiter = b"--" + check_boundary(params.get("boundary", ""))
    start = body.find(delimiter)
    head_end = body.find(b"\r\n\r\n", start) if start >= 0 else -1
    end = body.find(b"\r\n" + delimiter, head_end) if head_end >= 0 else -1
    if end < 0:
        raise Invalid("the multipart answer has no complete first part")
    return body[head_end + 4 : end]
