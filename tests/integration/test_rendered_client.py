"""dicomweb-client's rendered retrieves against a real `chronicle serve`.

retrieve_instance_rendered, retrieve_instance_frames_rendered and
retrieve_series_rendered as a viewer or AI pipeline calls them, with the
pixels checked against the PS3.3 window arithmetic.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import imagecodecs
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from tests.chronicle_server import StartChronicle
from tests.support import free_port, make_ct, pydicom_file, split_multipart

# stored = HU + 1024 (make_ct's Rescale Intercept is -1024, its window 40/400)
HU = [-200, -100, 0, 39, 40, 41, 239, 240, 3071]
CT_40_400 = [0, 38, 102, 127, 128, 128, 255, 255, 255]


@dataclass(frozen=True)
class Stored:
    client: DICOMwebClient
    ct: Dataset
    multiframe: Dataset


@pytest.fixture(scope="module")
def stored(start_chronicle_module: StartChronicle) -> Stored:
    # A public URL: dicomweb-client drops the port from Host on plain GETs.
    port = free_port()
    server = start_chronicle_module([f"--public-url=http://127.0.0.1:{port}"], http_port=port)
    client = DICOMwebClient(url=server.dicomweb_url, timeout=60)
    ct = make_ct(rows=16, cols=16)
    stored_values = np.full((16, 16), 1024, dtype="<u2")
    stored_values[0, : len(HU)] = np.array(HU) + 1024
    ct.PixelData = stored_values.tobytes()
    multiframe = dcmread(pydicom_file("emri_small.dcm"))
    multiframe.SOPInstanceUID = generate_uid()
    multiframe.file_meta.MediaStorageSOPInstanceUID = multiframe.SOPInstanceUID
    client.store_instances([ct, multiframe])
    return Stored(client, ct, multiframe)


def uids(ds: Dataset) -> tuple[str, str, str]:
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_retrieve_instance_rendered_png_and_jpeg(stored: Stored) -> None:
    png = stored.client.retrieve_instance_rendered(*uids(stored.ct), media_types=("image/png",))
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    assert pixels[0, : len(HU)].tolist() == CT_40_400
    jpeg = stored.client.retrieve_instance_rendered(
        *uids(stored.ct), media_types=("image/jpeg",), params={"quality": 95}
    )
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    windowed = stored.client.retrieve_instance_rendered(
        *uids(stored.ct), media_types=("image/png",), params={"window": "0,2,linear-exact"}
    )
    # (x - 0)/2 + 0.5: -1 HU and below black, +1 HU and above white, 0 HU grey.
    assert np.asarray(Image.open(io.BytesIO(windowed)))[0, :3].tolist() == [0, 0, 128]


def test_retrieve_instance_frames_rendered(stored: Stored) -> None:
    gif = stored.client.retrieve_instance_frames_rendered(
        *uids(stored.multiframe), frame_numbers=[1, 5, 10], media_types=("image/gif",)
    )
    frames = imagecodecs.gif_decode(gif)
    assert frames.shape[:3] == (3, 64, 64)
    single = stored.client.retrieve_instance_frames_rendered(
        *uids(stored.multiframe), frame_numbers=[5], media_types=("image/png",)
    )
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(single))), frames[1][..., 0])


def test_retrieve_series_rendered_is_multipart(stored: Stored) -> None:
    study, series, _ = uids(stored.ct)
    body = stored.client.retrieve_series_rendered(study, series)
    boundary = body[2 : body.index(b"\r\n")].decode()
    content_type = f'multipart/related; type="image/jpeg"; boundary={boundary}'
    [(headers, jpeg)] = split_multipart(body, content_type)
    assert headers["content-type"] == "image/jpeg"
    assert headers["content-location"].endswith(f"{stored.ct.SOPInstanceUID}/rendered")
    assert Image.open(io.BytesIO(jpeg)).size == (16, 16)
