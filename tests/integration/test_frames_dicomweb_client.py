"""dicomweb-client (what Python viewers and pipelines use) against a real `chronicle serve`:
retrieve_instance_frames in several media types and retrieve_instance in a named syntax."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from pynetdicom import AE

from api.pixels import to_explicit_le
from tests.chronicle_server import StartChronicle
from tests.support import pydicom_file

JLS, J2K = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"


@dataclass
class Stored:
    client: DICOMwebClient
    jls: Dataset  # 10 frames, JPEG-LS lossless
    native: Dataset  # 10 frames, Explicit VR LE

    def uids(self, ds: Dataset) -> tuple[str, str, str]:
        return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@pytest.fixture(scope="module")
def stored(start_chronicle_module: StartChronicle) -> Iterator[Stored]:
    server = start_chronicle_module()
    study = generate_uid()
    datasets = []
    for name in ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"):
        ds = dcmread(pydicom_file(name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        datasets.append(ds)
    ae = AE(ae_title="HARNESS")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    yield Stored(DICOMwebClient(url=server.dicomweb_url, timeout=60), *datasets)


def _pixels(ds: Dataset) -> Any:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return dcmread(io.BytesIO(to_explicit_le(out.getvalue()))).pixel_array


def test_uncompressed_frames(stored: Stored) -> None:
    expected = _pixels(stored.jls)
    frames = stored.client.retrieve_instance_frames(
        *stored.uids(stored.jls), frame_numbers=[2, 9], media_types=("application/octet-stream",)
    )
    got = [np.frombuffer(f, dtype="<u2").reshape(expected.shape[1:]) for f in frames]
    assert np.array_equal(got[0], expected[1]) and np.array_equal(got[1], expected[8])


def test_frames_as_stored(stored: Stored) -> None:
    frames = stored.client.retrieve_instance_frames(
        *stored.uids(stored.jls), frame_numbers=[1, 10], media_types=(("image/jls", JLS),)
    )
    originals = list(generate_frames(stored.jls.PixelData, number_of_frames=10))
    trimmed = [f[:-1] if f.endswith(b"\xff\xd9\x00") else f for f in originals]
    assert frames == [trimmed[0], trimmed[9]]


def test_frames_transcoded_on_request(stored: Stored) -> None:
    frames = stored.client.retrieve_instance_frames(
        *stored.uids(stored.native), frame_numbers=[3], media_types=(("image/jp2", J2K),)
    )
    assert len(frames) == 1 and frames[0][:4] == b"\xff\x4f\xff\x51"


def test_instance_in_a_named_syntax(stored: Stored) -> None:
    ds = stored.client.retrieve_instance(
        *stored.uids(stored.native), media_types=(("application/dicom", JLS),)
    )
    assert ds.file_meta.TransferSyntaxUID == JLS
    assert np.array_equal(ds.pixel_array, _pixels(stored.native))
