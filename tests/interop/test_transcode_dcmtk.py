"""dcmtk as the independent judge of what Chronicle transcodes.

1. Every codestream Chronicle produces that dcmtk can decode (JPEG baseline,
   extended, lossless SV1 and process 14 with dcmdjpeg; JPEG-LS lossless and
   near-lossless with dcmdjpls; RLE with dcmdrle) is decoded by dcmtk back to
   the source pixels (exactly when lossless, closely when lossy).
2. movescu moves a study to a dcmtk storescp whose profile takes CT, MR and
   Secondary Capture in JPEG-LS lossless only: every instance arrives in
   JPEG-LS (Chronicle transcoded it) and dcmdjpls decodes it to the pixels stored.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from api import transcode
from api.pixels import to_explicit_le
from tests.chronicle_server import StartChronicle, default_remote_aes
from tests.support import dcmtk, free_port, make_ct, pydicom_file, tool_env

pytestmark = pytest.mark.interop

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
JLS = "1.2.840.10008.1.2.4.80"
CT, MR, SC = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"
#: target -> (dcmtk decoder, lossless)
DECODED_BY_DCMTK = {
    "1.2.840.10008.1.2.4.50": ("dcmdjpeg", False),
    "1.2.840.10008.1.2.4.51": ("dcmdjpeg", False),
    "1.2.840.10008.1.2.4.57": ("dcmdjpeg", True),
    "1.2.840.10008.1.2.4.70": ("dcmdjpeg", True),
    "1.2.840.10008.1.2.4.80": ("dcmdjpls", True),
    "1.2.840.10008.1.2.4.81": ("dcmdjpls", False),
    "1.2.840.10008.1.2.5": ("dcmdrle", True),
}
#: (source file, the targets it can go to)
SOURCES = {
    "emri_small.dcm": list(DECODED_BY_DCMTK)[1:],  # 12 bits stored (not baseline), 10 frames
    "SC_rgb.dcm": list(DECODED_BY_DCMTK),  # 8-bit RGB
    "CT_small.dcm": ["1.2.840.10008.1.2.4.70", JLS, "1.2.840.10008.1.2.5"],  # signed
}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=120)


def _pixels(path: Path) -> Any:
    return dcmread(io.BytesIO(to_explicit_le(path.read_bytes()))).pixel_array


@pytest.mark.parametrize(
    ("name", "target"), [(name, t) for name, targets in SOURCES.items() for t in targets]
)
def test_dcmtk_decodes_what_chronicle_encodes(tmp_path: Path, name: str, target: str) -> None:
    source = pydicom_file(name)
    encoded = tmp_path / "encoded.dcm"
    encoded.write_bytes(transcode.transcode(source.read_bytes(), target, allow_lossy=True))
    decoder, lossless = DECODED_BY_DCMTK[target]
    decoded = tmp_path / "decoded.dcm"

    result = _run([dcmtk(decoder), str(encoded), str(decoded)])

    assert result.returncode == 0, result.stderr
    assert dcmread(decoded).file_meta.TransferSyntaxUID in (EXPLICIT, IMPLICIT)
    got, expected = _pixels(decoded), _pixels(source)
    if lossless:
        assert np.array_equal(got, expected)
    else:
        error = np.abs(got.astype(np.int64) - expected.astype(np.int64))
        assert error.mean() < 0.02 * float(expected.max() - expected.min())


# -- C-MOVE to a storescp that takes only JPEG-LS -----------------------------------------


@dataclass
class Destination:
    title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]


def _jls_only_config(path: Path) -> Path:
    path.write_text(
        f"[[TransferSyntaxes]]\n[JLS]\nTransferSyntax1 = {JLS}\n"
        "[[PresentationContexts]]\n[Contexts]\n"
        f"PresentationContext1 = {CT}\\JLS\nPresentationContext2 = {MR}\\JLS\n"
        f"PresentationContext3 = {SC}\\JLS\n"
        "[[Profiles]]\n[JLSOnly]\nPresentationContexts = Contexts\n",
        encoding="ascii",
    )
    return path


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Destination]:
    root = tmp_path_factory.mktemp("jls-only")
    config, folder, port = _jls_only_config(root / "jls.cfg"), root / "received", free_port()
    folder.mkdir()
    argv = [dcmtk("storescp"), "-aet", "JLSSCP", "-od", str(folder)]
    argv += ["-xf", str(config), "JLSOnly", str(port)]
    process = subprocess.Popen(
        argv, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield Destination("JLSSCP", port, folder, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _store(port: int, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="HARNESS")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def test_movescu_to_a_jpeg_ls_only_storescp(
    start_chronicle_module: StartChronicle, destination: Destination, tmp_path: Path
) -> None:
    remotes = default_remote_aes() + [f"{destination.title}@127.0.0.1:{destination.port}"]
    server = start_chronicle_module(remote_aes=remotes)
    study = generate_uid()
    datasets = [make_ct(study, rows=32, cols=32)]
    for name in ("MR_small_RLE.dcm", "SC_rgb_rle.dcm"):
        compressed = dcmread(pydicom_file(name))
        compressed.SOPInstanceUID = generate_uid()
        compressed.file_meta.MediaStorageSOPInstanceUID = compressed.SOPInstanceUID
        compressed.StudyInstanceUID, compressed.SeriesInstanceUID = study, generate_uid()
        datasets.append(compressed)
    _store(server.dimse_port, datasets)

    argv = [dcmtk("movescu"), "-S", "-aet", "MOVESCU", "-aec", "CHRONICLE", "-aem", "JLSSCP"]
    argv += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    result = _run([*argv, "127.0.0.1", str(server.dimse_port)])

    assert result.returncode == 0, result.stdout + result.stderr
    received = {str(dcmread(p).SOPInstanceUID): p for p in destination.folder.iterdir()}
    assert set(received) == {str(ds.SOPInstanceUID) for ds in datasets}
    for ds in datasets:
        path = received[str(ds.SOPInstanceUID)]
        assert dcmread(path).file_meta.TransferSyntaxUID == JLS
        plain = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        decoded = _run([dcmtk("dcmdjpls"), str(path), str(plain)])
        assert decoded.returncode == 0, decoded.stderr
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        expected = dcmread(io.BytesIO(to_explicit_le(out.getvalue()))).pixel_array
        assert np.array_equal(_pixels(plain), expected)
