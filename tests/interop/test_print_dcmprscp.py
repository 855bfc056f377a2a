"""`chronicle print` against dcmtk's print SCP (dcmprscp, printer IHEFULL).

dcmprscp keeps each printed film as a Stored Print object (SP_*.dcm: the film
box and, per image box, its position and the Hardcopy Grayscale Image it
made) and each image box's picture as a Hardcopy Grayscale Image (HG_*.dcm).
It stores the pixels it is sent unchanged (same size, same values: found by
trying), so the HG pixels must equal api.rendering.render_for_print of the
stored source, value for value.

Both ways of reaching the archive are covered: the embedded store of a
stopped server, and a running `chronicle serve` through --url. dcmprscp
always reports Printer Status NORMAL, so the not-ready printer is the
recording fake of tests/interop/fake_printer.py.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import BasicGrayscalePrintManagementMeta  # type: ignore[attr-defined]

from api.rendering import render_for_print
from tests.chronicle_server import REPO_ROOT, ChronicleServer, chronicle_command
from tests.interop.fake_printer import FakePrinter
from tests.support import (
    dcmtk,
    free_port,
    make_ct,
    multipart_related,
    part10_bytes,
    tool_env,
    write_part10,
)

pytestmark = pytest.mark.interop

DCMPSTAT_CFG = Path("/etc/dcmtk/dcmpstat.cfg")
PRINTER = "IHEFULL"
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
STARTUP_SECONDS = 15.0


# ---------------------------------------------------------------- dcmprscp


@dataclass
class PrintSCP:
    address: str
    database: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def films(self) -> list[Film]:
        return received_films(self.database)


@dataclass
class Film:
    film_box: Dataset
    #: Image Box Position -> the Hardcopy Grayscale Image dcmprscp made of it.
    images: dict[int, Dataset]


def write_print_config(folder: Path, port: int) -> Path:
    """Debian's dcmpstat.cfg with IHEFULL on `port` and every directory under `folder`."""
    text = DCMPSTAT_CFG.read_text(encoding="latin-1")
    changes = {
        ("DATABASE", "Directory"): folder / "database",
        ("PRINT", "Directory"): folder / "spool",
        ("APPLICATION", "LogDirectory"): folder / "log",
        ("LUT", "Directory"): folder / "lut",
        ("REPORT", "Directory"): folder / "reports",
        (PRINTER, "Port"): port,
    }
    for (section, key), value in changes.items():
        text = _set_key(text, section, key, str(value))
        if isinstance(value, Path):
            value.mkdir(parents=True, exist_ok=True)
    target = folder / "dcmpstat.cfg"
    target.write_text(text, encoding="latin-1")
    return target


def _set_key(text: str, section: str, key: str, value: str) -> str:
    """Replace `key = ...` inside `[section]` (up to the next section header)."""
    pattern = re.compile(
        rf"(^\[{re.escape(section)}\]\s*$.*?^{re.escape(key)}\s*=)[^\n]*",
        flags=re.MULTILINE | re.DOTALL | re.IGNORECASE,
    )
    head = pattern.search(text)
    assert head is not None, f"{section}/{key} not in {DCMPSTAT_CFG}"
    assert "\n[" not in head.group(1), f"{key} not in [{section}] of {DCMPSTAT_CFG}"
    return text[: head.start()] + f"{head.group(1)} {value}" + text[head.end() :]


def _associates(port: int) -> bool:
    ae = AE(ae_title="HARNESS")
    ae.add_requested_context(BasicGrayscalePrintManagementMeta)
    ae.acse_timeout = ae.connection_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=PRINTER)
    if assoc.is_established:
        assoc.release()
        return True
    return False


@pytest.fixture
def print_scp(tmp_path: Path) -> Iterator[PrintSCP]:
    folder = tmp_path / "dcmprscp"
    folder.mkdir()
    port = free_port()
    config = write_print_config(folder, port)
    log_path = folder / "dcmprscp.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [dcmtk("dcmprscp"), "-c", str(config), "-p", PRINTER],
            cwd=folder,
            env=tool_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    scp = PrintSCP(f"{PRINTER}@127.0.0.1:{port}", folder / "database", process, log_path)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _associates(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dcmprscp did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.1)
        yield scp
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def received_films(database: Path) -> list[Film]:
    """Every Stored Print in dcmprscp's database with its Hardcopy Grayscale Images."""
    hardcopies: dict[str, Dataset] = {}
    for path in database.glob("HG_*.dcm"):
        ds = pydicom.dcmread(path)
        hardcopies[str(ds.SOPInstanceUID)] = ds
    films = []
    for path in sorted(database.glob("SP_*.dcm")):
        stored_print = pydicom.dcmread(path)
        images: dict[int, Dataset] = {}
        for box in stored_print.ImageBoxContentSequence:
            (reference,) = box.ReferencedImageSequence
            images[int(box.ImageBoxPosition)] = hardcopies[str(reference.ReferencedSOPInstanceUID)]
        films.append(Film(stored_print.FilmBoxContentSequence[0], images))
    return films


# ---------------------------------------------------------------- archive side


def ct_series(count: int, folder: Path) -> list[Path]:
    """`count` CTs of one series, instance numbers 1.., every other one MONOCHROME1."""
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = make_ct(study, series, rows=96, cols=80, InstanceNumber=number)
        if number % 2 == 0:
            ds.PhotometricInterpretation = "MONOCHROME1"
            ds.WindowCenter, ds.WindowWidth = 1000, 3000
        paths.append(write_part10(ds, folder / f"ct{number}.dcm"))
    return paths


def chronicle(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        chronicle_command() + list(args),
        cwd=REPO_ROOT,
        env=tool_env({"PYTHONUNBUFFERED": "1"}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rendering(path: Path, bits: int) -> NDArray[Any]:
    return render_for_print(pydicom.dcmread(path), bits=bits)


def report_without_pixels(study: str, path: Path) -> Path:
    """A Basic Text SR: an instance with nothing to print."""
    ds = make_ct(study, Modality="SR", SOPClassUID=BASIC_TEXT_SR)
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    for keyword in [e.keyword for e in ds if e.tag.group == 0x0028 or e.keyword == "PixelData"]:
        delattr(ds, keyword)
    return write_part10(ds, path)


@pytest.fixture(scope="module")
def stopped_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A data folder, no server running on it, holding a study of two CTs and a
    report, and a study of just a report (the last path)."""
    folder = tmp_path_factory.mktemp("print-archive")
    sources = ct_series(2, folder / "sources")
    study = str(pydicom.dcmread(sources[0]).StudyInstanceUID)
    reports = [
        report_without_pixels(study, folder / "sources" / "sr.dcm"),
        report_without_pixels(generate_uid(), folder / "sources" / "sr-alone.dcm"),
    ]
    done = chronicle("import", "--data-dir", str(folder / "data"), *map(str, sources + reports))
    assert done.returncode == 0, done.stderr
    assert "stored: 4" in done.stdout
    return folder / "data", [*sources, reports[1]]


def assert_hardcopy(image: Dataset, source: Path, bits: int) -> None:
    expected = rendering(source, bits)
    assert image.PhotometricInterpretation == "MONOCHROME2"
    assert (image.Rows, image.Columns) == expected.shape
    assert (image.BitsStored, image.BitsAllocated) == ((8, 8) if bits == 8 else (12, 16))
    assert np.array_equal(image.pixel_array, expected)


# ---------------------------------------------------------------- tests


def test_print_from_the_embedded_store(
    stopped_archive: tuple[Path, list[Path]], print_scp: PrintSCP
) -> None:
    data_dir, paths = stopped_archive
    sources = paths[:2]
    study = str(pydicom.dcmread(sources[0]).StudyInstanceUID)
    done = chronicle(
        "print", study, "--data-dir", str(data_dir), "--printer", print_scp.address,
        "--bits", "12", "--film-size", "14INX17IN", "--magnification", "CUBIC",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "printed 2 image(s) on 2 film(s)" in done.stdout
    assert "skipped 1 instance(s) without pixel data" in done.stdout

    films = print_scp.films()
    assert len(films) == 2
    for film in films:
        assert film.film_box.ImageDisplayFormat == "STANDARD\\1,1"
        assert (film.film_box.FilmSizeID, film.film_box.FilmOrientation) == (
            "14INX17IN",
            "PORTRAIT",
        )
        assert film.film_box.MagnificationType == "CUBIC"
        assert list(film.images) == [1]
    # STANDARD\1,1: one film per image; which film dcmprscp wrote first is its business.
    printed = sorted(films, key=lambda film: film.images[1].pixel_array.tobytes())
    expected = sorted(sources, key=lambda path: rendering(path, 12).tobytes())
    for film, source in zip(printed, expected, strict=True):
        assert_hardcopy(film.images[1], source, 12)


def test_print_through_a_running_server(
    start_chronicle: Any, print_scp: PrintSCP, tmp_path: Path
) -> None:
    server: ChronicleServer = start_chronicle()
    sources = ct_series(3, tmp_path / "sources")
    body, content_type = multipart_related([part10_bytes(pydicom.dcmread(p)) for p in sources])
    stored = httpx.post(
        f"{server.dicomweb_url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text
    series = str(pydicom.dcmread(sources[0]).SeriesInstanceUID)

    done = chronicle(
        "print", series, "--url", server.base_url, "--printer", print_scp.address,
        "--layout", "STANDARD\\2,2", "--copies", "2", "--medium-type", "PAPER",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "printed 3 image(s) on 1 film(s)" in done.stdout
    (film,) = print_scp.films()
    assert film.film_box.ImageDisplayFormat == "STANDARD\\2,2"
    assert sorted(film.images) == [1, 2, 3]  # the fourth box stays empty
    for position, source in enumerate(sources, start=1):
        assert_hardcopy(film.images[position], source, 8)

    held = chronicle(
        "print", series, "--data-dir", str(server.data_dir), "--printer", print_scp.address
    )
    assert held.returncode == 1
    assert "held by another process" in held.stderr and "--url" in held.stderr
    assert len(print_scp.films()) == 1


def test_a_printer_not_ready_is_logged_and_released(
    stopped_archive: tuple[Path, list[Path]],
) -> None:
    data_dir, paths = stopped_archive
    fake = FakePrinter(printer_status="FAILURE", printer_status_info="SUPPLY EMPTY").start()
    try:
        done = chronicle(
            "print", str(pydicom.dcmread(paths[0]).SOPInstanceUID),
            "--data-dir", str(data_dir), "--printer", fake.address,
        )  # fmt: skip
        assert fake.released.wait(5) and not fake.aborted.is_set()
    finally:
        fake.stop()
    assert done.returncode == 1
    assert "status FAILURE (SUPPLY EMPTY)" in done.stderr
    assert re.search(r"ERROR (\d+ )?chronicle\.print: .*FAILURE.*SUPPLY EMPTY", done.stderr)
    assert fake.kinds() == ["N-GET Printer"]


def test_unknown_uid_is_refused_before_any_printing(
    stopped_archive: tuple[Path, list[Path]],
) -> None:
    data_dir, _ = stopped_archive
    fake = FakePrinter().start()
    try:
        unknown = generate_uid()
        done = chronicle("print", unknown, "--data-dir", str(data_dir), "--printer", fake.address)
    finally:
        fake.stop()
    assert done.returncode == 1
    assert f"no study, series or instance {unknown}" in done.stderr
    assert fake.requests == []


def test_nothing_to_print_is_refused_before_any_printing(
    stopped_archive: tuple[Path, list[Path]],
) -> None:
    data_dir, paths = stopped_archive
    study = str(pydicom.dcmread(paths[-1]).StudyInstanceUID)
    fake = FakePrinter().start()
    try:
        done = chronicle("print", study, "--data-dir", str(data_dir), "--printer", fake.address)
    finally:
        fake.stop()
    assert done.returncode == 1
    assert "nothing to print: no image among 1 instance(s)" in done.stderr
    assert fake.requests == []
