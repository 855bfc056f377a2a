"""The shared test helpers in tests/support.py do what the other suites rely on."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pydicom
from hypothesis import given
from hypothesis import strategies as st

from tests.support import (
    dataset_offset,
    dcmtk,
    dcmtk_copy,
    free_port,
    make_ct,
    multipart_related,
    part10_bytes,
    pydicom_file,
    same_length_uid,
    split_multipart,
    write_part10,
    write_storescu_config,
)

UID_COMPONENT = st.integers(min_value=0, max_value=10**12).map(str)
UIDS = st.lists(UID_COMPONENT, min_size=2, max_size=8).map(".".join).filter(lambda u: len(u) <= 64)


def _meta_end_from_group_length(part10: bytes) -> int:
    meta = pydicom.dcmread(BytesIO(part10), stop_before_pixels=True).file_meta
    return 132 + 12 + int(meta.FileMetaInformationGroupLength)


def test_make_ct_writes_a_readable_part10_file(tmp_path: Path) -> None:
    ds = make_ct(rows=8, cols=4, patient_name="Doe^Jane", StudyDescription="Head")

    path = write_part10(ds, tmp_path / "sub" / "ct.dcm")

    back = pydicom.dcmread(path)
    assert back.pixel_array.shape == (8, 4)
    assert str(back.PatientName) == "Doe^Jane"
    assert back.StudyDescription == "Head"
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert path.read_bytes() == part10_bytes(ds)


def test_dataset_offset_agrees_with_file_meta_group_length() -> None:
    for data in (
        part10_bytes(make_ct(rows=4, cols=4)),
        pydicom_file("CT_small.dcm").read_bytes(),
        pydicom_file("MR_small_bigendian.dcm").read_bytes(),
        pydicom_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes(),
    ):
        assert dataset_offset(data) == _meta_end_from_group_length(data)


@given(UIDS)
def test_same_length_uid_keeps_length_and_form(uid: str) -> None:
    fresh = same_length_uid(uid)

    assert len(fresh) == len(uid)
    assert re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", fresh)
    assert fresh.rpartition(".")[0] == uid.rpartition(".")[0]


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_multipart_round_trip(parts: list[bytes]) -> None:
    body, content_type = multipart_related(parts)

    assert [payload for _, payload in split_multipart(body, content_type)] == parts
    assert all(
        h["content-type"] == "application/dicom" for h, _ in split_multipart(body, content_type)
    )


def test_split_multipart_accepts_a_quoted_boundary() -> None:
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\nAB\r\n--b1--\r\n"

    assert split_multipart(body, 'multipart/related; boundary="b1"') == [
        ({"content-type": "application/dicom"}, b"AB")
    ]


def test_free_port_hands_out_distinct_bindable_ports() -> None:
    ports = [free_port() for _ in range(20)]

    assert len(set(ports)) == len(ports)
    for port in ports[:3]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_dcmtk_resolves_debian_tools_not_pynetdicom_scripts() -> None:
    path = dcmtk("storescu")

    assert not path.startswith(str(Path(sys.prefix, "bin")))
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    assert "dcmtk" in version.stdout


def test_dcmtk_copy_renames_the_instance_in_meta_and_dataset(tmp_path: Path) -> None:
    target = dcmtk_copy(pydicom_file("MR_small.dcm"), tmp_path / "mr.dcm", "1.2.3.4.5")

    ds = pydicom.dcmread(target, stop_before_pixels=True)
    assert ds.SOPInstanceUID == "1.2.3.4.5"
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"


def test_storescu_config_has_one_context_per_distinct_pair(tmp_path: Path) -> None:
    pairs = [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")] * 2
    pairs.append(("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.4.50"))

    text = write_storescu_config(pairs, tmp_path / "s.cfg").read_text()

    assert len(re.findall(r"^PresentationContext\d+ = ", text, flags=re.MULTILINE)) == 2
    assert "PresentationContext2 = 1.2.840.10008.5.1.4.1.1.2\\Syntax2" in text
    assert "TransferSyntax1 = 1.2.840.10008.1.2.4.50" in text
