"""A small Basic Grayscale Print SCP on pynetdicom that records what it is asked.

For what dcmtk's dcmprscp cannot be made to do: report a Printer Status other
than NORMAL (it always answers NORMAL), answer a chosen status to a chosen
request, or send an N-EVENT-REPORT while the SCU waits for a response.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicFilmBox,
    BasicFilmSession,
    BasicGrayscaleImageBox,
    BasicGrayscalePrintManagementMeta,
    Printer,
    PrinterInstance,
)

from tests.support import free_port


@dataclass
class Request:
    """One DIMSE request as received: its kind, SOP class and instance, its dataset."""

    kind: str
    sop_class: str
    sop_instance: str
    attrs: Dataset | None = None


@dataclass
class FakePrinter:
    printer_status: str = "NORMAL"
    printer_status_info: str = "NORMAL"
    #: "N-ACTION" etc. -> the status to answer instead of Success.
    answers: dict[str, int] = field(default_factory=dict)
    #: Send an N-EVENT-REPORT (printer status) before answering N-ACTION.
    report_during_action: bool = False
    ae_title: str = "FAKEPRINTER"
    requests: list[Request] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    aborted: threading.Event = field(default_factory=threading.Event)
    event_report_status: int | None = None
    #: Seconds N-ACTION takes, so overlapping jobs would show.
    action_seconds: float = 0.0
    port: int = 0
    _server: Any = None

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def kinds(self) -> list[str]:
        return [f"{r.kind} {_short(r.sop_class)}" for r in self.requests]

    def start(self) -> FakePrinter:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(BasicGrayscalePrintManagementMeta)
        handlers: list[EventHandlerType] = [
            (evt.EVT_N_GET, self._n_get),
            (evt.EVT_N_CREATE, self._n_create),
            (evt.EVT_N_SET, self._n_set),
            (evt.EVT_N_ACTION, self._n_action),
            (evt.EVT_N_DELETE, self._n_delete),
            (evt.EVT_RELEASED, lambda event: self.released.set()),
            (evt.EVT_ABORTED, lambda event: self.aborted.set()),
        ]
        self.port = free_port()
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _record(self, kind: str, event: Any, attrs: Dataset | None = None) -> int:
        request = event.request
        sop_class = str(
            getattr(request, "AffectedSOPClassUID", None) or request.RequestedSOPClassUID
        )
        sop_instance = str(
            getattr(request, "AffectedSOPInstanceUID", None) or request.RequestedSOPInstanceUID
        )
        self.requests.append(Request(kind, sop_class, sop_instance, attrs))
        return self.answers.get(kind, 0x0000)

    def _n_get(self, event: Any) -> tuple[int, Dataset | None]:
        status = self._record("N-GET", event)
        answer = Dataset()
        answer.PrinterStatus = self.printer_status
        answer.PrinterStatusInfo = self.printer_status_info
        return status, answer

    def _n_create(self, event: Any) -> tuple[int, Dataset | None]:
        attrs = event.attribute_list
        status = self._record("N-CREATE", event, attrs)
        answer = Dataset()
        answer.update(attrs)
        if str(event.request.AffectedSOPClassUID) == BasicFilmBox:
            answer.ReferencedImageBoxSequence = [
                _reference(BasicGrayscaleImageBox, generate_uid())
                for _ in range(_boxes(str(attrs.ImageDisplayFormat)))
            ]
        return status, answer

    def _n_set(self, event: Any) -> tuple[int, Dataset | None]:
        attrs = event.modification_list
        return self._record("N-SET", event, attrs), attrs

    def _n_action(self, event: Any) -> tuple[int, Dataset | None]:
        status = self._record("N-ACTION", event)
        time.sleep(self.action_seconds)
        if self.report_during_action:
            info = Dataset()
            info.PrinterStatusInfo = "FILM TRANSP NRDY"
            answer = event.assoc.send_n_event_report(
                info, 2, Printer, PrinterInstance, meta_uid=BasicGrayscalePrintManagementMeta
            )
            self.event_report_status = int(answer[0].Status) if "Status" in answer[0] else None
        return status, None

    def _n_delete(self, event: Any) -> int:
        return self._record("N-DELETE", event)


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _boxes(display_format: str) -> int:
    """Image boxes of a STANDARD\\C,R (C x R) or ROW/COL\\a,b,... (a + b + ...) format."""
    kind, _, counts = display_format.partition("\\")
    numbers = [int(n) for n in re.findall(r"\d+", counts)]
    if kind == "STANDARD":
        return numbers[0] * numbers[1]
    return sum(numbers)


def _short(sop_class: str) -> str:
    return {
        Printer: "Printer",
        BasicFilmSession: "FilmSession",
        BasicFilmBox: "FilmBox",
        BasicGrayscaleImageBox: "ImageBox",
    }.get(sop_class, sop_class)
