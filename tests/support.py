"""Shared test helpers: free ports, synthetic datasets, Part 10 bytes, multipart, dcmtk.

Everything here is xdist-safe: ports are probed before they are handed out and
never handed out twice in one process; files go where the caller says.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

# Below the Linux ephemeral range (32768+), so a port we probed is not taken
# a moment later as some client's source port.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()

# File Meta elements with a 4-byte length in Explicit VR Little Endian.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR"}
_LONG_VRS |= {b"UT", b"UV"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free just now and not handed out before here."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for dcmtk/Orthanc children: without TCP_NODELAY each C-STORE stalls ~40 ms."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONICLE_")}
    env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


def dcmtk(name: str) -> str:
    """Absolute path of a dcmtk tool, never pynetdicom's same-named script in the venv."""
    venv_bin = Path(sys.prefix, "bin").resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        if not folder or Path(folder).resolve() == venv_bin:
            continue
        found = shutil.which(name, path=folder)
        if found:
            return found
    pytest.fail(f"dcmtk's {name} is not installed: `make test` installs Debian's dcmtk as root")


# ---------------------------------------------------------------- datasets


def pydicom_file(name: str) -> Path:
    """A pydicom-data test file by name (pydicom-data is a test dependency)."""
    found = get_testdata_file(name)
    if not isinstance(found, str):
        pytest.fail(f"pydicom test file {name} is not available")
    return Path(found)


def make_ct(
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    rows: int = 512,
    cols: int = 512,
    patient_name: str = "Harness^Synthetic",
    patient_id: str = "HARNESS-1",
    **attrs: Any,
) -> Dataset:
    """A valid CT Image Storage dataset, 16-bit MONOCHROME2, Explicit VR Little Endian.

    Keyword `attrs` set any further element by keyword (e.g. Modality="MR",
    StudyDescription="...", InstanceNumber=3). Pixel values are a cheap
    deterministic ramp so two instances differ only where the caller says.
    """
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = "Referrer^Ray"
    ds.StudyDescription = "Harness CT"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Harness series"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.FrameOfReferenceUID = generate_uid()
    _set_pixels(ds, rows, cols)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _set_pixels(ds: Dataset, rows: int, cols: int) -> None:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ramp = (np.arange(rows * cols, dtype=np.uint32) % 4096).astype("<u2")
    ds.PixelData = ramp.tobytes()


def write_part10(ds: Dataset, path: Path | str) -> Path:
    """Write `ds` as a Part 10 file (preamble, DICM, File Meta) and return its path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def part10_bytes(ds: Dataset) -> bytes:
    """The Part 10 encoding of `ds`, as write_part10 would put on disk."""
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset_offset(part10: bytes) -> int:
    """Where the dataset starts: just past the File Meta group (always Explicit VR LE)."""
    if part10[128:132] != b"DICM":
        raise ValueError("not a Part 10 file: no DICM prefix at byte 128")
    offset = 132
    while offset + 8 <= len(part10):
        group = struct.unpack_from("<H", part10, offset)[0]
        if group != 0x0002:
            return offset
        vr = part10[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            offset += 12 + struct.unpack_from("<I", part10, offset + 8)[0]
        else:
            offset += 8 + struct.unpack_from("<H", part10, offset + 6)[0]
    return offset


def dataset_bytes(part10: bytes) -> bytes:
    """The bytes after the File Meta: what must survive any route unchanged."""
    return part10[dataset_offset(part10) :]


def same_length_uid(uid: str, rng: random.Random | None = None) -> str:
    """A fresh UID of exactly len(uid): the last component redrawn, so no length shifts."""
    rng = rng or random.Random()
    head, _, last = uid.rpartition(".")
    digits = str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in last[1:])
    return f"{head}.{digits}" if head else digits


# ---------------------------------------------------------------- multipart


def multipart_boundary(content_type: str) -> str:
    match = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"no boundary in Content-Type {content_type!r}")
    return match.group(1)


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart/related body as (lower-cased headers, payload)."""
    delimiter = b"--" + multipart_boundary(content_type).encode("ascii")
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in _between_delimiters(body, delimiter):
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a header/body separator")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    return parts


def _between_delimiters(body: bytes, delimiter: bytes) -> Iterator[bytes]:
    start = body.find(delimiter)
    if start < 0:
        raise ValueError("multipart body without its boundary")
    while True:
        start += len(delimiter)
        if body[start : start + 2] == b"--":
            return
        start += 2  # the CRLF after the delimiter line
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise ValueError("multipart body without a closing delimiter")
        yield body[start:end]
        start = end + 2


def multipart_related(
    parts: list[bytes], media_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """A multipart/related body of `parts` and its Content-Type (for STOW-RS)."""
    boundary = f"harness-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode("ascii"))
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    content_type = f'multipart/related; type="{media_type}"; boundary={boundary}'
    return b"".join(chunks), content_type


# ---------------------------------------------------------------- dcmtk files


def dcmtk_copy(source: Path | str, target: Path, sop_instance_uid: str) -> Path:
    """Copy a Part 10 file under a new SOP Instance UID, in dcmtk's own encoding.

    storescu re-encodes what it sends (drops group lengths, pads odd lengths);
    a file dcmodify wrote goes over the wire unchanged, so "byte-identical to
    the file sent" is a fair test of the archive rather than of dcmtk.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    modify = f"(0008,0018)={sop_instance_uid}"
    subprocess.run(
        [dcmtk("dcmodify"), "-q", "-nb", "-g", "-m", modify, str(target)],
        check=True,
        capture_output=True,
        env=tool_env(),
        timeout=60,
    )
    return target


def write_storescu_config(contexts: list[tuple[str, str]], target: Path) -> Path:
    """A storescu association profile "Harness": one context per (SOP class, transfer syntax).

    Proposing each file's own transfer syntax in a context of its own makes
    storescu send every file as it is, never converted (its -x options can
    propose only one compressed syntax per run).
    """
    unique = list(dict.fromkeys(contexts))
    lines = ["[[TransferSyntaxes]]"]
    for number, (_, transfer_syntax) in enumerate(unique, start=1):
        lines += [f"[Syntax{number}]", f"TransferSyntax1 = {transfer_syntax}"]
    lines += ["[[PresentationContexts]]", "[HarnessContexts]"]
    for number, (sop_class, _) in enumerate(unique, start=1):
        lines.append(f"PresentationContext{number} = {sop_class}\\Syntax{number}")
    lines += ["[[Profiles]]", "[Harness]", "PresentationContexts = HarnessContexts"]
    target.write_text("\n".join(lines) + "\n", encoding="ascii")
    return target
