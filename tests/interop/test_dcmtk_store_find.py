"""dcmtk as a modality would use it: storescu in every transfer syntax, findscu, echoscu.

One server per module; storescu sends pydicom-data's real files once, in their
own transfer syntaxes (compressed ones proposed as-is, never converted), then
findscu and WADO-RS must find and return exactly what was sent.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.chronicle_server import ChronicleServer
from tests.support import (
    dataset_bytes,
    dcmtk,
    dcmtk_copy,
    make_ct,
    pydicom_file,
    split_multipart,
    tool_env,
    write_part10,
    write_storescu_config,
)

pytestmark = pytest.mark.interop

#: pydicom-data files covering the syntaxes a modality sends, multi-frame included.
SOURCE_FILES = (
    "CT_small.dcm",  # Explicit VR Little Endian
    "MR_small.dcm",  # Explicit VR Little Endian
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline (Process 1)
    "JPEG-lossy.dcm",  # JPEG Extended (Process 2 & 4)
    "JPEG-LL.dcm",  # JPEG Lossless SV1 (Process 14)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_rle.dcm",  # RLE Lossless
    "emri_small.dcm",  # Enhanced MR, 10 frames, Explicit VR Little Endian
    "color3d_jpeg_baseline.dcm",  # US multi-frame, 120 frames, JPEG Baseline
)
DICOM_ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class SentFile:
    name: str
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    patient_name: str


@dataclass(frozen=True)
class StoreRun:
    files: list[SentFile]
    result: subprocess.CompletedProcess[str]


def _sent_file(name: str, folder: Path) -> SentFile:
    # Several pydicom-data files share one SOP Instance UID: give each its own.
    path = dcmtk_copy(pydicom_file(name), folder / name, generate_uid())
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return SentFile(
        name=name,
        path=path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        patient_name=str(ds.get("PatientName", "")),
    )


def _storescu(
    server: ChronicleServer, files: list[Path], config: Path, calling_ae: str
) -> subprocess.CompletedProcess[str]:
    argv = [dcmtk("storescu"), "-v", "-xf", str(config), "Harness"]
    argv += ["-aet", calling_ae, "-aec", server.ae_title, "-to", "10", "-ta", "30", "-td", "60"]
    argv += ["127.0.0.1", str(server.dimse_port)] + [str(p) for p in files]
    return subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=300)


@pytest.fixture(scope="module")
def stored(
    chronicle_server_module: ChronicleServer, tmp_path_factory: pytest.TempPathFactory
) -> StoreRun:
    folder = tmp_path_factory.mktemp("dcmtk-sent")
    files = [_sent_file(name, folder) for name in SOURCE_FILES]
    config = write_storescu_config(
        [(f.sop_class_uid, f.transfer_syntax_uid) for f in files], folder / "storescu.cfg"
    )
    result = _storescu(chronicle_server_module, [f.path for f in files], config, "STORESCU")
    return StoreRun(files, result)


def _log(result: subprocess.CompletedProcess[str]) -> str:
    out, err = result.stdout, result.stderr
    return f"exit {result.returncode}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"


def test_storescu_stores_every_file_in_its_own_transfer_syntax(stored: StoreRun) -> None:
    log = stored.result.stdout + stored.result.stderr

    assert stored.result.returncode == 0, _log(stored.result)
    assert log.count("Received Store Response (Success)") == len(stored.files), _log(stored.result)
    for line in log.splitlines():
        if "Converting transfer syntax:" in line:
            before, after = line.split(":", 2)[-1].split("->")
            assert before.strip() == after.strip(), f"storescu had to convert: {line}"


def _findscu(server: ChronicleServer, out: Path, *keys: str) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    argv = [dcmtk("findscu"), "-S", "-aet", "FINDSCU", "-aec", server.ae_title]
    argv += ["-to", "10", "-X", "-od", str(out)]
    for key in ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID", *keys):
        argv += ["-k", key]
    argv += ["127.0.0.1", str(server.dimse_port)]
    result = subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=120)
    assert result.returncode == 0, _log(result)
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def test_findscu_study_root_matches_patient_name_wildcard(
    stored: StoreRun, chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    expected = {
        f.study_instance_uid for f in stored.files if f.patient_name.startswith("CompressedSamples")
    }

    answers = _findscu(chronicle_server_module, tmp_path, "PatientName=CompressedSamples*")

    assert {str(ds.StudyInstanceUID) for ds in answers} == expected
    assert len(answers) == len(expected), "one C-FIND response per matching study"
    assert all(str(ds.PatientName).startswith("CompressedSamples") for ds in answers)


def test_findscu_universal_match_returns_every_study(
    stored: StoreRun, chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    answers = _findscu(chronicle_server_module, tmp_path, "PatientName")

    assert {str(ds.StudyInstanceUID) for ds in answers} == {
        f.study_instance_uid for f in stored.files
    }


def _wado_instance(server: ChronicleServer, sent: SentFile) -> httpx.Response:
    url = (
        f"{server.dicomweb_url}/studies/{sent.study_instance_uid}"
        f"/series/{sent.series_instance_uid}/instances/{sent.sop_instance_uid}"
    )
    return httpx.get(url, headers={"Accept": DICOM_ANY_SYNTAX}, timeout=60)


def test_wado_rs_returns_each_instance_byte_identical(
    stored: StoreRun, chronicle_server_module: ChronicleServer
) -> None:
    for sent in stored.files:
        response = _wado_instance(chronicle_server_module, sent)
        assert response.status_code == 200, f"{sent.name}: {response.status_code} {response.text}"

        parts = split_multipart(response.content, response.headers["content-type"])
        assert len(parts) == 1, sent.name
        headers, payload = parts[0]
        assert headers["content-type"].startswith("application/dicom"), sent.name
        returned = pydicom.dcmread(BytesIO(payload), stop_before_pixels=True)
        assert returned.file_meta.TransferSyntaxUID == sent.transfer_syntax_uid, sent.name
        assert returned.file_meta.MediaStorageSOPInstanceUID == sent.sop_instance_uid, sent.name
        assert dataset_bytes(payload) == dataset_bytes(sent.path.read_bytes()), (
            f"{sent.name}: dataset bytes differ from the file storescu sent"
        )


def test_echoscu_succeeds(chronicle_server_module: ChronicleServer) -> None:
    argv = [dcmtk("echoscu"), "-v", "-aet", "ECHOSCU", "-aec", chronicle_server_module.ae_title]
    argv += ["-to", "10", "127.0.0.1", str(chronicle_server_module.dimse_port)]
    result = subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=60)

    assert result.returncode == 0, _log(result)
    assert "Received Echo Response (Success)" in result.stdout + result.stderr, _log(result)


def test_unknown_calling_ae_is_rejected_and_nothing_is_stored(
    chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    ds = make_ct(rows=16, cols=16, patient_name="Intruder^Ian")
    path = write_part10(ds, tmp_path / "intruder.dcm")
    contexts = [(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))]
    config = write_storescu_config(contexts, tmp_path / "storescu.cfg")

    result = _storescu(chronicle_server_module, [path], config, "INTRUDER")

    assert result.returncode != 0, _log(result)
    assert "rejected" in (result.stdout + result.stderr).lower(), _log(result)
    sent = SentFile(
        "intruder.dcm",
        path,
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
        str(ds.PatientName),
    )
    assert _wado_instance(chronicle_server_module, sent).status_code == 404
