"""api.render_output: bodies for one instance, and the refusals a router turns into problems."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID

from api.negotiation import Refusal, parse_accept
from api.render_output import frames_body, render_images, single_body
from api.render_params import parse_render_query
from tests.support import split_multipart

DEFAULTS = parse_render_query({})
URL = "http://archive/dicomweb/studies/1/series/2/instances/3"


def sample(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    return dcmread(path)


def refusal(call: object, *args: object) -> Refusal:
    with pytest.raises(Refusal) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def test_single_body_picks_the_media_type_by_category() -> None:
    body, media = single_body(sample("CT_small.dcm"), parse_accept("image/*"), DEFAULTS)
    assert media == "image/jpeg" and body[:2] == b"\xff\xd8"
    text, media = single_body(sample("test-SR.dcm"), parse_accept(None), DEFAULTS)
    assert media == "text/html; charset=utf-8" and text.startswith(b"<!DOCTYPE html>")
    assert refusal(single_body, sample("rtplan.dcm"), parse_accept(None), DEFAULTS).status == 406


def test_multi_frame_instance_gif_animates_and_jpeg_shows_the_first_frame() -> None:
    ds = sample("emri_small.dcm")
    gif, media = single_body(ds, parse_accept("image/gif"), DEFAULTS)
    assert media == "image/gif" and imagecodecs.gif_decode(gif).shape[0] == 10
    still, _ = single_body(ds, parse_accept("image/png"), DEFAULTS)
    first = render_images(ds, [0], "image/png", DEFAULTS)
    assert still == first


def test_frames_body_answers_and_refusals() -> None:
    ds = sample("emri_small.dcm")
    body, media = frames_body(ds, [0, 2], parse_accept("*/*"), DEFAULTS, URL)
    parts = split_multipart(body, media)
    assert [h["content-location"] for h, _ in parts] == [
        f"{URL}/frames/1/rendered",
        f"{URL}/frames/3/rendered",
    ]
    assert refusal(frames_body, ds, [0, 10], parse_accept(None), DEFAULTS, URL).status == 400
    several = refusal(frames_body, ds, [0, 1], parse_accept("image/png"), DEFAULTS, URL)
    assert several.status == 406 and "image/gif" in several.detail
    report = sample("test-SR.dcm")
    assert refusal(frames_body, report, [0], parse_accept(None), DEFAULTS, URL).status == 400


def test_undecodable_pixels_are_406() -> None:
    ds = sample("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.92")  # JPEG 2000 Part 2: no decoder
    found = refusal(render_images, ds, [0], "image/jpeg", DEFAULTS)
    assert found.status == 406 and "cannot render" in found.detail


def test_too_many_frames_to_animate_is_refused_before_decoding() -> None:
    ds = Dataset()
    ds.Rows = ds.Columns = 4096
    ds.NumberOfFrames, ds.SamplesPerPixel = 20, 1
    ds.PixelData = np.zeros(1, "u1").tobytes()  # never read
    found = refusal(render_images, ds, list(range(20)), "image/gif", DEFAULTS)
    assert found.status == 400 and "too many" in found.detail
