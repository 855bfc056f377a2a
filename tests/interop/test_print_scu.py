"""api.print_scu against a recording print SCP: the DIMSE conversation, request by request.

dcmtk's dcmprscp (test_print_dcmprscp.py) proves a real printer accepts what
Chronicle sends; this pins the conversation itself, and the cases dcmprscp
cannot produce: a printer that is not ready, refusals and warnings, and an
N-EVENT-REPORT arriving while the SCU waits for a response.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from api.print_scu import (
    FilmLayout,
    FilmSession,
    PrinterNotReady,
    PrintJob,
    print_images,
)
from infra.errors import Invalid, Unavailable
from infra.settings import RemoteAE, Settings
from tests.interop.fake_printer import FakePrinter
from tests.support import free_port

pytestmark = pytest.mark.interop

FILM_OF_TWO = FilmLayout(image_display_format="STANDARD\\2,1")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, acse_timeout=10, dimse_timeout=10, network_timeout=10)


@pytest.fixture
def printer() -> Iterator[FakePrinter]:
    fake = FakePrinter().start()
    yield fake
    fake.stop()


def job(fake: FakePrinter, layout: FilmLayout = FILM_OF_TWO, **session: Any) -> PrintJob:
    return PrintJob(RemoteAE.parse(fake.address), FilmSession(**session), layout)


def images(count: int, dtype: type = np.uint8) -> list[NDArray[Any]]:
    return [np.full((3, 4), 10 * (n + 1), dtype=dtype) for n in range(count)]


def test_five_images_on_films_of_two(printer: FakePrinter, settings: Settings) -> None:
    sent = images(5)
    report = print_images(job(printer), iter(sent), settings)

    assert (report.films, report.images, report.printer_status) == (3, 5, "NORMAL")
    film = ["N-CREATE FilmBox", "N-SET ImageBox", "N-SET ImageBox"]
    film_end = ["N-ACTION FilmBox", "N-DELETE FilmBox"]
    assert printer.kinds() == (
        ["N-GET Printer", "N-CREATE FilmSession"]
        + (film + film_end) * 2
        + film[:2]
        + film_end
        + ["N-DELETE FilmSession"]
    )
    assert printer.released.wait(5) and not printer.aborted.is_set()

    session = printer.requests[1]
    assert session.attrs is not None
    assert (session.attrs.NumberOfCopies, session.attrs.PrintPriority) == (1, "MED")
    assert "MediumType" not in session.attrs and "FilmDestination" not in session.attrs
    assert printer.requests[-1].sop_instance == session.sop_instance

    boxes = [r for r in printer.requests if r.kind == "N-CREATE" and r is not session]
    for box in boxes:
        assert box.attrs is not None
        assert box.attrs.ImageDisplayFormat == "STANDARD\\2,1"
        assert (box.attrs.FilmOrientation, box.attrs.FilmSizeID) == ("PORTRAIT", "8INX10IN")
        for absent in ("MagnificationType", "SmoothingType", "BorderDensity", "Trim"):
            assert absent not in box.attrs
        assert "ConfigurationInformation" not in box.attrs
        (ref,) = box.attrs.ReferencedFilmSessionSequence
        assert ref.ReferencedSOPInstanceUID == session.sop_instance
    actions = [r.sop_instance for r in printer.requests if r.kind == "N-ACTION"]
    assert actions == [box.sop_instance for box in boxes]

    sets = [r.attrs for r in printer.requests if r.kind == "N-SET"]
    assert [s.ImageBoxPosition for s in sets if s is not None] == [1, 2, 1, 2, 1]
    for attrs, pixels in zip(sets, sent, strict=True):
        assert attrs is not None
        (item,) = attrs.BasicGrayscaleImageSequence
        assert (item.Rows, item.Columns, item.BitsStored) == (3, 4, 8)
        assert item.PixelData == pixels.tobytes()


def test_optional_attributes_and_12_bits(printer: FakePrinter, settings: Settings) -> None:
    layout = FilmLayout(
        image_display_format="STANDARD\\1,1",
        film_orientation="LANDSCAPE",
        film_size_id="14INX17IN",
        magnification_type="CUBIC",
        smoothing_type="MEDIUM",
        border_density="WHITE",
        trim="YES",
        configuration_information="GAMMA 2.2",
    )
    session = {"number_of_copies": 2, "medium_type": "BLUE FILM", "film_destination": "BIN_1"}
    twelve = [np.array([[0, 4095], [2048, 1]], dtype=np.uint16)]
    print_images(job(printer, layout, **session), twelve, settings)

    film_session, film_box = (r.attrs for r in printer.requests if r.kind == "N-CREATE")
    assert film_session is not None and film_box is not None
    assert (film_session.NumberOfCopies, film_session.MediumType) == (2, "BLUE FILM")
    assert film_session.FilmDestination == "BIN_1"
    assert (film_box.FilmOrientation, film_box.FilmSizeID) == ("LANDSCAPE", "14INX17IN")
    assert (film_box.MagnificationType, film_box.SmoothingType) == ("CUBIC", "MEDIUM")
    assert (film_box.BorderDensity, film_box.Trim) == ("WHITE", "YES")
    assert film_box.ConfigurationInformation == "GAMMA 2.2"
    (image_box,) = (r.attrs for r in printer.requests if r.kind == "N-SET")
    assert image_box is not None
    (item,) = image_box.BasicGrayscaleImageSequence
    assert (item.BitsAllocated, item.BitsStored, item.HighBit) == (16, 12, 11)
    assert item.PixelData == twelve[0].astype("<u2").tobytes()


def test_printer_not_normal_releases_without_printing(settings: Settings) -> None:
    fake = FakePrinter(printer_status="FAILURE", printer_status_info="SUPPLY EMPTY").start()
    consumed: list[int] = []

    def lazily() -> Iterator[NDArray[Any]]:
        consumed.append(1)
        yield from images(1)

    try:
        with pytest.raises(PrinterNotReady, match="FAILURE.*SUPPLY EMPTY") as caught:
            print_images(job(fake), lazily(), settings)
        assert (caught.value.status, caught.value.info) == ("FAILURE", "SUPPLY EMPTY")
        assert fake.kinds() == ["N-GET Printer"]
        assert fake.released.wait(5) and not fake.aborted.is_set()
        assert not consumed
    finally:
        fake.stop()


def test_warning_statuses_are_reported_and_printing_goes_on(settings: Settings) -> None:
    fake = FakePrinter(answers={"N-SET": 0xB609}).start()
    try:
        report = print_images(job(fake), images(2), settings)
    finally:
        fake.stop()
    assert (report.films, report.images) == (1, 2)
    assert len(report.warnings) == 2 and all("0xB609" in w for w in report.warnings)
    assert "cropped" in report.warnings[0]


def test_a_refusal_stops_the_job_and_cleans_up(settings: Settings) -> None:
    fake = FakePrinter(answers={"N-SET": 0x0106}).start()
    try:
        with pytest.raises(Invalid, match="0x0106 Invalid Attribute Value") as caught:
            print_images(job(fake), images(2), settings)
        assert caught.value.status == 0x0106
        assert fake.kinds() == [
            "N-GET Printer",
            "N-CREATE FilmSession",
            "N-CREATE FilmBox",
            "N-SET ImageBox",
            "N-DELETE FilmBox",
            "N-DELETE FilmSession",
        ]
        assert fake.released.wait(5)
    finally:
        fake.stop()


def test_event_report_while_waiting_is_answered_and_ignored(settings: Settings) -> None:
    fake = FakePrinter(report_during_action=True).start()
    try:
        report = print_images(job(fake), images(1), settings)
        assert report.films == 1
        assert fake.event_report_status == 0x0000
        assert fake.kinds()[-2:] == ["N-DELETE FilmBox", "N-DELETE FilmSession"]
        assert fake.released.wait(5) and not fake.aborted.is_set()
    finally:
        fake.stop()


def test_one_job_at_a_time(settings: Settings) -> None:
    fake = FakePrinter(action_seconds=0.2).start()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            print_images(job(fake), images(2), settings)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        fake.stop()
    assert not errors
    # Three whole conversations one after the other, never interleaved.
    one_job = [
        "N-GET Printer",
        "N-CREATE FilmSession",
        "N-CREATE FilmBox",
        "N-SET ImageBox",
        "N-SET ImageBox",
        "N-ACTION FilmBox",
        "N-DELETE FilmBox",
        "N-DELETE FilmSession",
    ]
    assert fake.kinds() == one_job * 3


def test_unreachable_printer(settings: Settings) -> None:
    nobody = RemoteAE("NOBODY", "127.0.0.1", free_port())
    with pytest.raises(Unavailable, match="could not be reached"):
        print_images(PrintJob(nobody), images(1), settings)
