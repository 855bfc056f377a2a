"""api.codecs on synthetic frames: every lossless codec, any bit depth it accepts, exact.

Frames are random (the worst case for predictors and transforms) with
random Bits Stored, signedness, size and colour; each is encoded by
Chronicle's codec and decoded back by the decoder a client would use
(pydicom's, via api.pixel_spec, or imagecodecs' for JPEG XL).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import codecs
from api.pixel_spec import PixelSpec, decode_frame

LOSSLESS = [uid for uid, codec in codecs.CODECS.items() if not codec.lossy]


@st.composite
def frames(draw: st.DrawFn, codec: codecs.Codec) -> tuple[PixelSpec, np.ndarray]:
    colour = draw(st.booleans())
    low, high = codec.bits
    bits = draw(st.integers(max(low, 2), min(high, 16)))
    signed = not colour and codec.signed and draw(st.booleans())
    allocated = 8 if bits <= 8 else 16
    rows, columns = draw(st.integers(3, 24)), draw(st.integers(3, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    lowest, highest = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    )
    shape = (rows, columns, 3) if colour else (rows, columns)
    dtype = f"{'i' if signed else 'u'}{allocated // 8}"
    pixels = np.random.default_rng(seed).integers(lowest, highest + 1, shape).astype(dtype)
    spec = PixelSpec(
        rows=rows,
        columns=columns,
        samples=3 if colour else 1,
        bits_allocated=allocated,
        bits_stored=bits,
        signed=signed,
        photometric="RGB" if colour else "MONOCHROME2",
    )
    return spec, pixels


@pytest.mark.parametrize("uid", LOSSLESS)
def test_lossless_codecs_round_trip_exactly(uid: str) -> None:
    codec = codecs.CODECS[uid]

    @settings(max_examples=25, deadline=None)
    @given(frames(codec))
    def round_trip(case: tuple[PixelSpec, np.ndarray]) -> None:
        spec, pixels = case
        assert codec.refusal(spec) == ""
        encoded = codecs.encode_frames(codec, [pixels], spec, codecs.DEFAULT_QUALITY)
        coded_spec = dataclasses.replace(spec, photometric=encoded.photometric)
        decoded = decode_frame(encoded.frames[0], uid, coded_spec)
        assert decoded.array.shape == pixels.shape
        assert np.array_equal(decoded.array, pixels)

    round_trip()


def test_refusals_by_pixel_description() -> None:
    mono16 = PixelSpec(8, 8, 1, 16, 16, False, "MONOCHROME2")
    assert "8 to 8" in codecs.CODECS["1.2.840.10008.1.2.4.50"].refusal(mono16)
    assert codecs.CODECS["1.2.840.10008.1.2.4.51"].refusal(mono16)  # 16 bits stored > 12
    signed = PixelSpec(8, 8, 1, 16, 12, True, "MONOCHROME2")
    assert "signed" in codecs.CODECS["1.2.840.10008.1.2.4.51"].refusal(signed)
    assert "signed" in codecs.CODECS["1.2.840.10008.1.2.4.110"].refusal(signed)
    one_bit = PixelSpec(8, 8, 1, 1, 1, False, "MONOCHROME2")
    assert all(codec.refusal(one_bit) for codec in codecs.CODECS.values())
    floats = PixelSpec(8, 8, 1, 32, 32, False, "MONOCHROME2", float_pixels=True)
    assert all("float" in codec.refusal(floats) for codec in codecs.CODECS.values())
    ybr16 = PixelSpec(8, 8, 3, 16, 16, False, "YBR_FULL")
    assert "YBR_FULL" in codecs.CODECS["1.2.840.10008.1.2.4.80"].refusal(ybr16)
    four = PixelSpec(8, 8, 4, 8, 8, False, "ARGB")
    assert "samples" in codecs.CODECS["1.2.840.10008.1.2.4.90"].refusal(four)


@pytest.mark.parametrize("uid", LOSSLESS)
def test_signed_pixels_in_two_bits_come_back_negative(uid: str) -> None:
    """Found by the property test: JPEG-LS returned 2-bit signed samples unsigned."""
    codec = codecs.CODECS[uid]
    spec = PixelSpec(3, 3, 1, 8, 2, True, "MONOCHROME2")
    if codec.refusal(spec):
        return  # this codec refuses such pixels; the refusal is tested elsewhere
    pixels = np.array([[1, 0, 0], [-1, -1, -2], [-2, -2, -2]], dtype=np.int8)
    encoded = codecs.encode_frames(codec, [pixels], spec, codecs.DEFAULT_QUALITY)
    coded_spec = dataclasses.replace(spec, photometric=encoded.photometric)
    assert np.array_equal(decode_frame(encoded.frames[0], uid, coded_spec).array, pixels)
