"""Basic Grayscale Print Management Meta SOP Class as SCU (PS3.4 Annex H).

One print job is one association to the printer proposing the meta SOP class
(1.2.840.10008.5.1.1.9; the Printer, Basic Film Session, Basic Film Box and
Basic Grayscale Image Box SOP classes all travel on its context):

1. N-GET Printer (well-known instance 1.2.840.10008.5.1.1.17) for Printer
   Status and Printer Status Info. Anything but NORMAL is logged and the
   association released without printing (`PrinterNotReady`).
2. N-CREATE Basic Film Session (Number of Copies, Print Priority, Medium Type,
   Film Destination; each only when set).
3. Per film: N-CREATE Basic Film Box (Image Display Format, Referenced Film
   Session Sequence and the optional attributes that are set); N-SET each
   image box of the response's Referenced Image Box Sequence, in order, with
   the next image; N-ACTION print on the film box; N-DELETE the film box.
   Films are created until the images run out, so a layout of N boxes takes
   ceil(images / N) films; unused boxes of the last film stay empty.
4. N-DELETE the film session, A-RELEASE.

The SCU supplies the film session and film box SOP Instance UIDs itself
(PS3.7 10.1.5: the SCP then uses them), because pynetdicom does not hand the
N-CREATE response's Affected SOP Instance UID back to the caller.
N-EVENT-REPORTs from the printer are answered Success and otherwise ignored.
One print job runs at a time in a process (`_ONE_JOB`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.status import PRINT_JOB_MANAGEMENT_SERVICE_CLASS_STATUS, code_to_category

from infra.errors import Invalid, Unavailable
from infra.settings import RemoteAE, Settings

log = logging.getLogger("chronicle.print")

PRINT_META = UID("1.2.840.10008.5.1.1.9")  # Basic Grayscale Print Management Meta
PRINTER = UID("1.2.840.10008.5.1.1.16")
PRINTER_INSTANCE = UID("1.2.840.10008.5.1.1.17")
FILM_SESSION = UID("1.2.840.10008.5.1.1.1")
FILM_BOX = UID("1.2.840.10008.5.1.1.2")
GRAYSCALE_IMAGE_BOX = UID("1.2.840.10008.5.1.1.4")
PRINT_ACTION = 1  # N-ACTION Action Type ID "Print" (PS3.4 H.4.2.2.4)

_PRINTER_STATUS = Tag(0x2110, 0x0010)
_PRINTER_STATUS_INFO = Tag(0x2110, 0x0020)
_PIXEL_DATA = 0x7FE00010
_ONE_JOB = threading.Lock()


@dataclass(frozen=True)
class FilmSession:
    """Basic Film Session N-CREATE attributes; None means "printer default"."""

    number_of_copies: int | None = 1
    print_priority: str | None = "MED"
    medium_type: str | None = None
    film_destination: str | None = None


@dataclass(frozen=True)
class FilmLayout:
    """Basic Film Box N-CREATE attributes; None means "not sent"."""

    image_display_format: str = "STANDARD\\1,1"
    film_orientation: str | None = "PORTRAIT"
    film_size_id: str | None = "8INX10IN"
    magnification_type: str | None = None
    smoothing_type: str | None = None
    border_density: str | None = None
    trim: str | None = None
    configuration_information: str | None = None


@dataclass(frozen=True)
class PrintJob:
    printer: RemoteAE
    session: FilmSession = FilmSession()
    layout: FilmLayout = FilmLayout()


@dataclass
class PrintReport:
    films: int = 0
    images: int = 0
    printer_status: str = ""
    printer_status_info: str = ""
    #: Warning statuses the printer answered, as text.
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"printed {self.images} image(s) on {self.films} film(s)"]
        return "\n".join(lines + [f"printer warning: {text}" for text in self.warnings])


class PrinterNotReady(Unavailable):
    """The printer's status is not NORMAL: nothing was printed."""

    def __init__(self, printer: RemoteAE, status: str, info: str) -> None:
        detail = f" ({info})" if info else ""
        super().__init__(f"printer {printer} is not ready: status {status}{detail}")
        self.status, self.info = status, info


def print_images(
    job: PrintJob, images: Iterable[npt.NDArray[Any]], settings: Settings
) -> PrintReport:
    """Print `images` (from `api.rendering.render_for_print`: uint8 = 8 bits, uint16 = 12).

    Images are consumed lazily, one film's worth at a time. Raises
    PrinterNotReady, Unavailable (no association, no answer) or Invalid (the
    printer refused a request; `.status` is its DIMSE status).
    """
    report = PrintReport()
    with _ONE_JOB, _association(job.printer, settings) as assoc:
        report.printer_status, report.printer_status_info = _printer_status(assoc, job.printer)
        session_uid = _create_film_session(assoc, job.session, report)
        try:
            _print_films(assoc, job.layout, session_uid, iter(images), report)
        finally:
            _delete(assoc, FILM_SESSION, session_uid, report)
    return report


@contextmanager
def _association(printer: RemoteAE, settings: Settings) -> Iterator[Association]:
    ae = AE(ae_title=settings.ae_title)
    ae.add_requested_context(PRINT_META, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.maximum_pdu_size = settings.max_pdu_size
    handlers: list[EventHandlerType] = [(evt.EVT_N_EVENT_REPORT, _ignore_event_report)]
    assoc = ae.associate(printer.host, printer.port, ae_title=printer.title, evt_handlers=handlers)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "could not be reached"
        raise Unavailable(f"printer {printer} {why}")
    try:
        if not assoc.accepted_contexts:
            raise Unavailable(f"printer {printer} refused Basic Grayscale Print Management")
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _ignore_event_report(event: evt.Event) -> tuple[int, None]:
    # Printer status changes (PS3.4 H.4.6.1.1) change nothing for a job under
    # way; pynetdicom runs this at once, even while a response is awaited.
    event_type = getattr(event.request, "EventTypeID", None)
    log.info("ignoring printer N-EVENT-REPORT, event type %s", event_type)
    return 0x0000, None


def _printer_status(assoc: Association, printer: RemoteAE) -> tuple[str, str]:
    status, attrs = assoc.send_n_get(
        [_PRINTER_STATUS, _PRINTER_STATUS_INFO], PRINTER, PRINTER_INSTANCE, meta_uid=PRINT_META
    )
    code = _status_code(status, "Printer N-GET")
    if attrs is None or code_to_category(code) not in ("Success", "Warning"):
        # The printer status is not known; the film session will tell.
        log.warning("printer %s: N-GET Printer failed (%s)", printer, _describe(code, status))
        return "", ""
    state = str(attrs.get("PrinterStatus", "") or "").strip().upper()
    info = str(attrs.get("PrinterStatusInfo", "") or "").strip()
    if state and state != "NORMAL":
        log.error("printer %s status %s (%s): releasing without printing", printer, state, info)
        raise PrinterNotReady(printer, state, info)
    log.info("printer %s status %s (%s)", printer, state or "unknown", info)
    return state, info


def _create_film_session(assoc: Association, session: FilmSession, report: PrintReport) -> UID:
    attrs = _optional(
        NumberOfCopies=session.number_of_copies,
        PrintPriority=session.print_priority,
        MediumType=session.medium_type,
        FilmDestination=session.film_destination,
    )
    uid = generate_uid()
    status, _ = assoc.send_n_create(attrs, FILM_SESSION, uid, meta_uid=PRINT_META)
    _check(status, "Basic Film Session N-CREATE", report)
    return uid


def _print_films(
    assoc: Association,
    layout: FilmLayout,
    session_uid: UID,
    images: Iterator[npt.NDArray[Any]],
    report: PrintReport,
) -> None:
    upcoming = next(images, None)
    while upcoming is not None:
        film_uid, boxes = _create_film_box(assoc, layout, session_uid, report)
        try:
            for position, box in enumerate(boxes, start=1):
                if upcoming is None:
                    break
                _set_image_box(assoc, box, position, upcoming, report)
                report.images += 1
                upcoming = next(images, None)
            status, _ = assoc.send_n_action(
                None, PRINT_ACTION, FILM_BOX, film_uid, meta_uid=PRINT_META
            )
            _check(status, "Basic Film Box N-ACTION print", report)
            report.films += 1
        finally:
            _delete(assoc, FILM_BOX, film_uid, report)


def _create_film_box(
    assoc: Association, layout: FilmLayout, session_uid: UID, report: PrintReport
) -> tuple[UID, list[Dataset]]:
    attrs = _optional(
        ImageDisplayFormat=layout.image_display_format,
        FilmOrientation=layout.film_orientation,
        FilmSizeID=layout.film_size_id,
        MagnificationType=layout.magnification_type,
        SmoothingType=layout.smoothing_type,
        BorderDensity=layout.border_density,
        Trim=layout.trim,
        ConfigurationInformation=layout.configuration_information,
    )
    session_ref = Dataset()
    session_ref.ReferencedSOPClassUID = FILM_SESSION
    session_ref.ReferencedSOPInstanceUID = session_uid
    attrs.ReferencedFilmSessionSequence = [session_ref]
    uid = generate_uid()
    status, answer = assoc.send_n_create(attrs, FILM_BOX, uid, meta_uid=PRINT_META)
    _check(status, "Basic Film Box N-CREATE", report)
    boxes = list((answer or Dataset()).get("ReferencedImageBoxSequence") or [])
    if not boxes:
        _delete(assoc, FILM_BOX, uid, report)
        raise Invalid(f"the printer created no image boxes for {layout.image_display_format!r}")
    return uid, boxes


def _set_image_box(
    assoc: Association,
    box: Dataset,
    position: int,
    pixels: npt.NDArray[Any],
    report: PrintReport,
) -> None:
    attrs = Dataset()
    attrs.ImageBoxPosition = position
    attrs.BasicGrayscaleImageSequence = [image_box_pixels(pixels)]
    class_uid = box.get("ReferencedSOPClassUID") or GRAYSCALE_IMAGE_BOX
    status, _ = assoc.send_n_set(
        attrs, class_uid, box.ReferencedSOPInstanceUID, meta_uid=PRINT_META
    )
    _check(status, f"Basic Grayscale Image Box {position} N-SET", report)


def image_box_pixels(pixels: npt.NDArray[Any]) -> Dataset:
    """The Basic Grayscale Image Sequence item for rendered pixels (PS3.4 H.4.3.1).

    uint8 -> 8 bits stored in 8 allocated; uint16 (0..4095) -> 12 in 16.
    """
    if pixels.ndim != 2:
        raise ValueError(f"a print image is one 2-D frame, not shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        allocated, stored, vr = 8, 8, "OB"
    elif pixels.dtype == np.uint16 and int(pixels.max(initial=0)) < 4096:
        allocated, stored, vr = 16, 12, "OW"
    else:
        raise ValueError(f"print pixels must be uint8 or 12-bit uint16, not {pixels.dtype}")
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.Rows, item.Columns = (int(n) for n in pixels.shape)
    item.BitsAllocated, item.BitsStored, item.HighBit = allocated, stored, stored - 1
    item.PixelRepresentation = 0
    item.add_new(_PIXEL_DATA, vr, pixels.astype(pixels.dtype.newbyteorder("<")).tobytes())
    return item


def _delete(assoc: Association, class_uid: UID, uid: UID, report: PrintReport) -> None:
    if not assoc.is_established:
        return  # aborted: the printer drops what the association created
    status = assoc.send_n_delete(class_uid, uid, meta_uid=PRINT_META)
    try:
        _check(status, f"{class_uid.name} N-DELETE", report)
    except (Invalid, Unavailable) as exc:
        # Cleanup must not hide why the job stopped, nor fail a printed job.
        report.warnings.append(str(exc))
        log.warning("%s", exc)


def _optional(**values: Any) -> Dataset:
    attrs = Dataset()
    for keyword, value in values.items():
        if value is not None and value != "":
            setattr(attrs, keyword, value)
    return attrs


def _status_code(status: Dataset, what: str) -> int:
    if "Status" not in status:
        raise Unavailable(f"{what}: no answer from the printer (timeout or abort)")
    return int(status.Status)


def _check(status: Dataset, what: str, report: PrintReport) -> None:
    code = _status_code(status, what)
    category = code_to_category(code)
    if category == "Success":
        return
    text = f"{what}: {_describe(code, status)}"
    if category == "Warning":
        log.warning("%s", text)
        report.warnings.append(text)
        return
    raise Invalid(text, status=code)


def _describe(code: int, status: Dataset) -> str:
    meaning = PRINT_JOB_MANAGEMENT_SERVICE_CLASS_STATUS.get(code, ("", "unknown status"))[1]
    comment = str(status.get("ErrorComment", "") or "")
    return f"0x{code:04X} {meaning}" + (f" ({comment})" if comment else "")
