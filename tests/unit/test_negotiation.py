"""The shared Accept parser and Range reader (api.negotiation), and the routers'
negotiate() functions built on them.

The parser is property-tested by round trip: random media ranges, with
parameters whose values need quoting and escaping and with random q-values,
are serialised the way a client might (any case, any spacing) and must parse
back to the same ranges, refusals (q=0) left out, ordered by q with ties in
the client's order.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api import qido, stow
from api.negotiation import (
    MediaRange,
    Refusal,
    byte_range,
    first_offer,
    parse_accept,
    related_type,
)

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
#: Header field values are visible ASCII and spaces (RFC 9110 5.5).
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F))

tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
lower_tokens = tokens.map(str.lower).filter(lambda name: name != "q")
spaces = st.sampled_from(["", " ", "  ", "\t"])


@dataclass(frozen=True)
class Member:
    """One Accept member as generated: the expected parse plus how to write it."""

    media_type: str  # as written (any case)
    params: dict[str, str]  # lower-case names
    millis: int | None  # q in thousandths; None writes no q (meaning 1)

    @property
    def q(self) -> float:
        return 1.0 if self.millis is None else self.millis / 1000

    def expected(self) -> MediaRange:
        return MediaRange(self.media_type.lower(), self.params, self.q)


@st.composite
def media_types(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["full", "subtype wildcard", "any"]))
    if kind == "any":
        return "*/*"
    main = draw(tokens.filter(lambda t: t != "*"))
    return f"{main}/*" if kind == "subtype wildcard" else f"{main}/{draw(tokens)}"


members = st.builds(
    Member,
    media_types(),
    st.dictionaries(lower_tokens, st.text(alphabet=VALUE_CHARS, max_size=16), max_size=4),
    st.none() | st.integers(min_value=0, max_value=1000),
)


def is_token(value: str) -> bool:
    return bool(value) and all(c in TOKEN_CHARS for c in value)


def quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@st.composite
def written(draw: st.DrawFn, member: Member) -> str:
    """The member as a client might send it: random case, spacing and quoting."""
    fields = [draw(spaces) + member.media_type + draw(spaces)]
    for name, value in member.params.items():
        quote = not is_token(value) or draw(st.booleans())
        name_case = draw(st.sampled_from([name, name.upper()]))
        fields.append(f"{draw(spaces)}{name_case}={quoted(value) if quote else value}")
    if member.millis is not None:
        q_name = draw(st.sampled_from(["q", "Q"]))
        fields.append(f"{draw(spaces)}{q_name}={member.millis // 1000}.{member.millis % 1000:03d}")
    return ";".join(fields)


@st.composite
def headers(draw: st.DrawFn) -> tuple[list[Member], str]:
    chosen = draw(st.lists(members, min_size=1, max_size=6))
    texts = [draw(written(member)) for member in chosen]
    return chosen, ",".join(f"{text}{draw(spaces)}" for text in texts)


@given(headers())
def test_accept_round_trip(generated: tuple[list[Member], str]) -> None:
    chosen, header = generated
    wanted = [member.expected() for member in chosen if member.q > 0]
    # Stable: equal q keeps the order the client wrote.
    wanted.sort(key=lambda media: -media.q)
    assert parse_accept(header) == wanted


@given(st.text(alphabet=VALUE_CHARS, max_size=80))
def test_any_header_parses_to_ranges_in_q_order(header: str) -> None:
    ranges = parse_accept(header)
    assert all(0 < media.q <= 1 and media.media_type for media in ranges)
    assert [media.q for media in ranges] == sorted((m.q for m in ranges), reverse=True)
    assert all(media.media_type == media.media_type.strip().lower() for media in ranges)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_absent_or_blank_accept_means_anything(header: str | None) -> None:
    assert parse_accept(header) == [MediaRange("*/*", {}, 1.0)]


def test_q_values_are_clamped_and_bad_ones_refuse() -> None:
    ranges = parse_accept("a/b;q=7, c/d;q=-1, e/f;q=x, g/h;q, i/j;q=0.000, k/l;q=0.5")
    assert [(media.media_type, media.q) for media in ranges] == [("a/b", 1.0), ("k/l", 0.5)]


def test_quoted_separators_stay_inside_the_value() -> None:
    [media] = parse_accept(r'multipart/related; type="a\"b;c,d"; x=1')
    assert media.params == {"type": 'a"b;c,d', "x": "1"}


def test_related_type_is_lower_case_with_a_default() -> None:
    [media] = parse_accept('multipart/related; type="Application/DICOM+XML"')
    assert related_type(media) == "application/dicom+xml"
    assert related_type(MediaRange("multipart/related", {}, 1.0), "application/dicom") == (
        "application/dicom"
    )


def test_first_offer_takes_the_most_preferred_acceptable_range() -> None:
    ranges = parse_accept("text/html, image/png;q=0.9, image/*;q=0.5")

    def images(media: MediaRange) -> str | None:
        return media.media_type if media.media_type.startswith("image/") else None

    assert first_offer(ranges, images) == "image/png"
    assert first_offer(ranges, lambda media: None) is None
    # False is an answer, not a refusal.
    assert first_offer(ranges, lambda media: False) is False


# -- Range ---------------------------------------------------------------------


@given(
    size=st.integers(min_value=0, max_value=10_000),
    first=st.none() | st.integers(min_value=0, max_value=12_000),
    last=st.none() | st.integers(min_value=0, max_value=12_000),
)
def test_byte_range_selects_what_rfc_9110_says(
    size: int, first: int | None, last: int | None
) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    if first is None and last is None:
        assert byte_range(header, size) is None
        return
    if first is None:
        assert last is not None
        start, end = max(0, size - last), size  # the last `last` bytes
    else:
        start, end = first, size if last is None else min(size, last + 1)
    if start >= end:
        with pytest.raises(Refusal) as refused:
            byte_range(header, size)
        assert refused.value.status == 416
        assert refused.value.headers == {"Content-Range": f"bytes */{size}"}
    else:
        assert byte_range(header, size) == (start, end)


@pytest.mark.parametrize(
    "header", [None, "", "items=0-1", "bytes=0-1,3-4", "bytes=a-b", "bytes=-", "bytes 0-1"]
)
def test_byte_range_ignores_what_it_cannot_serve_as_one_range(header: str | None) -> None:
    assert byte_range(header, 10) is None


def test_byte_range_tolerates_spaces() -> None:
    assert byte_range(" bytes = 2 - 4 ", 10) == (2, 5)


# -- the routers' choices ------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "json"),
        ("", "json"),
        ("application/*", "json"),
        ("multipart/related", "xml"),
        ('multipart/*; type="application/dicom+xml"', "xml"),
        ('multipart/related; type="application/dicom"', None),
        ("application/dicom+json;q=0.4, multipart/related;type=application/dicom+xml", "xml"),
        ("multipart/related;q=0.5, application/json;q=0.5", "xml"),
        ("text/html, image/png", None),
    ],
)
def test_qido_negotiate(accept: str | None, expected: str | None) -> None:
    assert qido.negotiate(accept) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/xml", stow.DICOM_XML),
        ("multipart/related", None),
        ('multipart/related; type="APPLICATION/DICOM+XML"', stow.MULTIPART_XML),
        ("application/dicom+json;q=0.3, application/dicom+xml;q=0.3", stow.DICOM_JSON),
    ],
)
def test_stow_negotiate(accept: str, expected: str | None) -> None:
    assert stow.negotiate(accept) == expected
