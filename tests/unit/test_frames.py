"""Frames of stored instances (api.frame_access, api.transcode.frame_bytes) and the
frames media-type negotiation (api.frames), without a server.

Instances are pydicom-data files put through ingest's own parser, so the frame
ranges and BulkDataURIs are the ones a real archive records. A BlobStore
wrapper counts the bytes read: a stored-syntax frame with ranges reads that
frame and nothing else.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pack_bits

from api import frames, pixels, transcode
from api.catalog import InstanceRow
from api.frame_access import StoredFrames
from api.negotiation import Refusal, parse_accept
from api.pixel_spec import decode_frame
from infra.fs_blobs import FileBlobStore
from ingest.parse import parse_part10
from tests.support import pydicom_file

EXPLICIT = pixels.EXPLICIT_VR_LITTLE_ENDIAN
JLS, J2K, HTJ2K, RLE = (
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.5",
)
SV1, BASELINE = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50"
OCTET = "application/octet-stream"


@dataclass
class CountingBlobs:
    """A BlobStore that counts what is read (whole-object reads and ranged bytes)."""

    inner: FileBlobStore
    whole: list[str] = field(default_factory=list)
    ranged: int = 0

    def get(self, key: str) -> BinaryIO:
        self.whole.append(key)
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranged += length
        return self.inner.get_range(key, offset, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def reset(self) -> None:
        self.whole, self.ranged = [], 0


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> CountingBlobs:
    return CountingBlobs(FileBlobStore(tmp_path_factory.mktemp("frames")))


def stored_row(blobs: CountingBlobs, name: str) -> InstanceRow:
    """The instance row ingest would project for a pydicom-data file."""
    path = pydicom_file(name)
    parsed = parse_part10(path)
    blob = parsed.file_meta + path.read_bytes()[parsed.dataset_offset :]
    key = "sha256/" + hashlib.sha256(blob).hexdigest()
    blobs.inner.put_if_absent(key, blob)
    return InstanceRow(
        parsed.study_instance_uid,
        parsed.series_instance_uid,
        parsed.sop_instance_uid,
        parsed.sop_class_uid,
        parsed.transfer_syntax_uid,
        key,
        len(blob),
        len(parsed.file_meta),
        parsed.dataset_sha256,
        parsed.frames,
        orjson.dumps(parsed.metadata).decode(),
        "",
        None,
        None,
    )


def _reference(name: str) -> tuple[Any, Any]:
    """(the original dataset, pydicom's frames decoded as stored: no colour conversion)."""
    ds = dcmread(pydicom_file(name))
    native = dcmread(io.BytesIO(pixels.to_explicit_le(pydicom_file(name).read_bytes())))
    count = int(ds.get("NumberOfFrames", 1) or 1)
    decoded = native.pixel_array if count > 1 else native.pixel_array[None]
    return ds, decoded


# (file, how its frames are read)
CASES = [
    ("emri_small.dcm", "ranges"),  # native, 10 frames
    ("MR_small_implicit.dcm", "ranges"),
    ("emri_small_RLE.dcm", "ranges"),
    ("emri_small_jpeg_2k_lossless.dcm", "ranges"),
    ("emri_small_jpeg_ls_lossless.dcm", "ranges"),
    ("examples_ybr_color.dcm", "ranges"),  # JPEG baseline, 30 frames
    ("SC_rgb_rle_2frame.dcm", "ranges"),
    ("JPEG-lossy.dcm", "ranges"),  # 12-bit JPEG extended
    ("emri_small_big_endian.dcm", "swapped ranges"),
    ("SC_rgb_expb_2frame.dcm", "whole object"),  # 8-bit big endian
    ("liver.dcm", "whole object"),  # 1-bit, 3 frames
    ("image_dfl.dcm", "whole object"),  # deflated
]


@pytest.mark.parametrize(("name", "access"), CASES)
def test_stored_frames_equal_pydicom_and_ranges_read_only_the_frame(
    blobs: CountingBlobs, name: str, access: str
) -> None:
    row = stored_row(blobs, name)
    original, decoded = _reference(name)
    source = StoredFrames(blobs, row)
    assert source.access == access
    assert source.count == len(decoded)
    ts = row.transfer_syntax_uid
    for index in range(source.count):
        blobs.reset()
        stored = source.stored(index)
        if access != "whole object":
            assert blobs.whole == []  # never the whole blob
            assert blobs.ranged - len(stored) in (0, 1)  # 1: the pad after a JPEG EOI
        if ts in pixels.NATIVE_TRANSFER_SYNTAXES:
            expected = _native_frame(original, decoded, index)
            assert stored == expected
            assert source.stored_syntax == EXPLICIT
        else:
            pydicom_frames = list(
                generate_frames(original.PixelData, number_of_frames=len(decoded))
            )
            frame = pydicom_frames[index]
            assert stored == (frame[:-1] if frame.endswith(b"\xff\xd9\x00") else frame)
        assert np.array_equal(source.decoded(index).array, decoded[index])


def _native_frame(original: Any, decoded: Any, index: int) -> bytes:
    if original.BitsAllocated == 1:
        return bytes(pack_bits(decoded[index]))
    if original.file_meta.TransferSyntaxUID == pixels.EXPLICIT_VR_BIG_ENDIAN:
        kind = "i" if original.PixelRepresentation else "u"
        return bytes(decoded[index].astype(f"<{kind}{original.BitsAllocated // 8}").tobytes())
    size = len(original.PixelData) // len(decoded)
    return bytes(original.PixelData[index * size : (index + 1) * size])


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("emri_small.dcm", JLS),
        ("emri_small_jpeg_2k_lossless.dcm", EXPLICIT),
        ("emri_small_jpeg_ls_lossless.dcm", HTJ2K),
        ("emri_small_RLE.dcm", SV1),
        ("SC_rgb_rle_2frame.dcm", J2K),
        ("emri_small_big_endian.dcm", RLE),
    ],
)
def test_frame_bytes_in_another_syntax_decode_to_the_same_pixels(
    blobs: CountingBlobs, name: str, target: str
) -> None:
    row = stored_row(blobs, name)
    _, decoded = _reference(name)
    for number in (1, len(decoded)):
        blobs.reset()
        delivered, data = transcode.frame_bytes(blobs, row, number, target)
        assert delivered == target and blobs.whole == []
        spec = StoredFrames(blobs, row).spec
        assert spec is not None
        back = decode_frame(data, target, transcode.decoded_spec(row.transfer_syntax_uid, spec))
        expected = decoded[number - 1]
        assert np.array_equal(back.array, expected)


def test_frame_bytes_as_stored_and_refusals(blobs: CountingBlobs) -> None:
    row = stored_row(blobs, "emri_small_jpeg_ls_lossless.dcm")
    delivered, data = transcode.frame_bytes(blobs, row, 3, None)
    assert delivered == JLS and data.startswith(b"\xff\xd8\xff\xf7")
    with pytest.raises(IndexError):
        transcode.frame_bytes(blobs, row, 11, None)
    with pytest.raises(pixels.TranscodeUnsupported, match="lossy"):
        transcode.frame_bytes(blobs, row, 1, BASELINE, allow_lossy=False)
    with pytest.raises(pixels.TranscodeUnsupported, match="8 to 8"):
        transcode.frame_bytes(blobs, row, 1, BASELINE)  # 12 bits stored


# -- negotiation -------------------------------------------------------------------


def _offers(accept: str, stored: str, single: bool = False) -> list[tuple[str, str, bool]]:
    found = frames.frame_offers(parse_accept(accept), single=single)
    return [(o.media_type, o.target(stored), o.multipart) for o in found]


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        # PS3.18 Table 8.7.3-5 defaults when transfer-syntax is absent
        ('multipart/related; type="application/octet-stream"', JLS, (OCTET, EXPLICIT)),
        ('multipart/related; type="image/jpeg"', EXPLICIT, ("image/jpeg", SV1)),
        ('multipart/related; type="image/jls"', EXPLICIT, ("image/jls", JLS)),
        ('multipart/related; type="image/jp2"', EXPLICIT, ("image/jp2", J2K)),
        ('multipart/related; type="image/jphc"', EXPLICIT, ("image/jphc", HTJ2K)),
        ('multipart/related; type="image/jxl"', EXPLICIT, ("image/jxl", "1.2.840.10008.1.2.4.110")),
        ('multipart/related; type="image/dicom-rle"', EXPLICIT, ("image/dicom-rle", RLE)),
        # older spellings are understood and echoed
        ('multipart/related; type="image/x-jls"', EXPLICIT, ("image/x-jls", JLS)),
        ('multipart/related; type="image/x-dicom-rle"', EXPLICIT, ("image/x-dicom-rle", RLE)),
        # transfer-syntax=*: as stored
        (f'multipart/related; type="{OCTET}"; transfer-syntax=*', J2K, (OCTET, J2K)),
        ('multipart/related; type="image/jp2"; transfer-syntax=*', J2K, ("image/jp2", J2K)),
        ('multipart/related; type="image/jls"; transfer-syntax=*', J2K, ("image/jls", JLS)),
        # stored lossy JPEG: image/jpeg without a syntax answers as stored (PS3.18 8.7.3)
        ('multipart/related; type="image/jpeg"', BASELINE, ("image/jpeg", BASELINE)),
        # explicit syntaxes
        (f'multipart/related; type="image/jpeg"; transfer-syntax={BASELINE}', EXPLICIT,
         ("image/jpeg", BASELINE)),
        ("*/*", J2K, (OCTET, EXPLICIT)),
    ],
)  # fmt: skip
def test_media_types_and_their_default_syntaxes(
    accept: str, stored: str, expected: tuple[str, str]
) -> None:
    assert _offers(accept, stored)[0] == (*expected, True)


def test_offers_that_cannot_apply_are_left_out() -> None:
    # a syntax that is not the media type's
    assert _offers(f'multipart/related; type="image/jls"; transfer-syntax={J2K}', J2K) == []
    # a bare media type is one part: one frame only
    assert _offers("image/jls", J2K, single=False) == []
    assert _offers("image/jls", J2K, single=True) == [("image/jls", JLS, False)]
    # ...except uncompressed frames end to end in one body
    assert _offers(OCTET, J2K, single=False) == [(OCTET, EXPLICIT, False)]
    assert _offers(f"{OCTET}; transfer-syntax={J2K}", J2K, single=False) == []
    assert _offers("text/html", J2K) == []
    ranked = _offers('multipart/related; type="image/jp2"; q=0.5, multipart/related', JLS)
    assert ranked == [("application/octet-stream", EXPLICIT, True), ("image/jp2", J2K, True)]


def test_frame_lists() -> None:
    assert frames.parse_frame_list("1,3,5") == [1, 3, 5]
    assert frames.parse_frame_list("2") == [2]
    for bad in ("0", "a", "1,,2", "", "-1", "1;2"):
        with pytest.raises(Refusal) as refused:
            frames.parse_frame_list(bad)
        assert refused.value.status == 400


def test_choose_names_the_reason(blobs: CountingBlobs) -> None:
    source = StoredFrames(blobs, stored_row(blobs, "emri_small.dcm"))  # 12 bits stored
    jpeg = frames.frame_offers(
        parse_accept(f'multipart/related; type="image/jpeg"; transfer-syntax={BASELINE}'),
        single=False,
    )
    with pytest.raises(Refusal) as refused:
        frames.choose([source], jpeg, stream=False)
    assert refused.value.status == 406 and "8 to 8 bits" in refused.value.detail
    with pytest.raises(Refusal) as refused:
        frames.choose([source], [], stream=False)
    assert refused.value.status == 406
