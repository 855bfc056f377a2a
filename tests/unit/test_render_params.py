"""api.render_params: PS3.18 8.3.5.1 query parameters, good and bad."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.render_params import (
    MAX_VIEWPORT,
    SourceRegion,
    parse_frame_list,
    parse_render_query,
)


def test_nothing_given_means_defaults() -> None:
    query = parse_render_query({})
    assert query.params.window is None and query.params.viewport is None
    assert query.params.quality == 90 and query.params.annotation == frozenset()
    assert query.source is None
    thumbnail = parse_render_query({}, default_viewport=(128, 128))
    assert thumbnail.params.viewport == (128, 128)


def test_window_with_and_without_function() -> None:
    query = parse_render_query({"window": ["40,400,linear-exact"]})
    assert query.params.window == (40.0, 400.0, "LINEAR_EXACT")
    assert parse_render_query({"window": ["-600.5,1500"]}).params.window == (
        -600.5,
        1500.0,
        "LINEAR",
    )
    assert parse_render_query({"window": ["1,2,Sigmoid"]}).params.window == (1.0, 2.0, "SIGMOID")


def test_viewport_is_width_then_height_and_becomes_rows_columns() -> None:
    query = parse_render_query({"viewport": ["300,200"]})
    assert query.params.viewport == (200, 300)  # (rows, columns) = (vh, vw)
    assert query.for_image(512, 512).region is None


def test_viewport_source_region_normalized_against_the_image() -> None:
    query = parse_render_query({"viewport": ["64,64,100,50,200,100"]})
    assert query.source == SourceRegion(100, 50, 200, 100)
    assert query.for_image(400, 400).region == (0.25, 0.125, 0.75, 0.375)
    # Empty fields take the defaults: the rest of the image from (sx, sy).
    rest = parse_render_query({"viewport": ["64,64,100,,,"]}).for_image(200, 400)
    assert rest.region == (0.25, 0.0, 1.0, 1.0)
    # All defaults: the whole image, so no region at all.
    assert parse_render_query({"viewport": ["64,64,,,,"]}).for_image(10, 10).region is None


def test_negative_source_width_and_height_flip() -> None:
    query = parse_render_query({"viewport": ["64,64,300,200,-100,-200"]})
    # x from 300 back to 200, y from 200 back to 0: reversed bounds mean flipped.
    assert query.for_image(400, 400).region == (0.75, 0.5, 0.5, 0.0)
    # Running right to left may start at the far edge: the whole image mirrored.
    mirrored = parse_render_query({"viewport": ["64,64,400,0,-400,"]}).for_image(200, 400)
    assert mirrored.region == (1.0, 0.0, 0.0, 1.0)


def test_quality_and_annotation() -> None:
    query = parse_render_query(
        {"quality": ["55"], "annotation": ["patient", "technique,patient"], "iccprofile": ["no"]}
    )
    assert query.params.quality == 55
    assert query.params.annotation == frozenset({"patient", "technique"})


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"window": ["40"]}, "center,width"),
        ({"window": ["40,0"]}, "width must be > 0"),
        ({"window": ["40,-5,linear"]}, "width must be > 0"),
        ({"window": ["abc,400"]}, "not a number"),
        ({"window": ["40,nan"]}, "finite"),
        ({"window": ["40,400,cubic"]}, "cubic"),
        ({"window": ["1,2", "3,4"]}, "once"),
        ({"viewport": ["64"]}, "vw,vh"),
        ({"viewport": ["0,64"]}, "vw must be"),
        ({"viewport": [f"64,{MAX_VIEWPORT + 1}"]}, "vh must be"),
        ({"viewport": ["64,x"]}, "not an integer"),
        ({"viewport": ["64,64,1,2,3"]}, "vw,vh"),
        ({"viewport": ["64,64,-1,0,10,10"]}, ">= 0"),
        ({"viewport": ["64,64,0,0,0,10"]}, "must not be 0"),
        ({"quality": ["0"]}, "1..100"),
        ({"quality": ["101"]}, "1..100"),
        ({"quality": ["high"]}, "not an integer"),
        ({"annotation": ["patient,everything"]}, "everything"),
        ({"annotation": [","]}, "patient and/or technique"),
        ({"iccprofile": ["display-p3"]}, "iccprofile"),
    ],
)
def test_bad_values_are_refused_with_a_reason(query: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_render_query(query)


def test_source_region_outside_the_image_is_refused() -> None:
    query = parse_render_query({"viewport": ["64,64,500,0,10,10"]})
    with pytest.raises(ValueError, match="outside the image"):
        query.for_image(100, 100)


def test_unknown_parameters_are_ignored() -> None:
    assert parse_render_query({"charset": ["utf-8"], "foo": ["bar"]}).params.quality == 90


@given(st.integers(-5, 150))
def test_quality_accepted_exactly_in_range(quality: int) -> None:
    if 1 <= quality <= 100:
        assert parse_render_query({"quality": [str(quality)]}).params.quality == quality
    else:
        with pytest.raises(ValueError):
            parse_render_query({"quality": [str(quality)]})


@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=20))
def test_frame_lists_become_zero_based_in_order(numbers: list[int]) -> None:
    assert parse_frame_list(",".join(map(str, numbers))) == [n - 1 for n in numbers]


@pytest.mark.parametrize("text", ["0", "1,0", "-1", "a", "1,,2", "1.5", ""])
def test_bad_frame_lists(text: str) -> None:
    with pytest.raises(ValueError, match="frame number"):
        parse_frame_list(text)
