"""The streaming multipart/related parser: round trips, edge cases, limits, cleanup."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.errors import Invalid
from ingest.multipart import (
    BodyTooLarge,
    MultipartSpool,
    Part,
    _Parser,
    check_boundary,
    parse_content_type,
)

CRLF = b"\r\n"
Headers = dict[str, str]


async def _chunks(body: bytes, cuts: Sequence[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(body):
            yield body[start:cut]
            start = cut
    yield body[start:]


def _parse(
    spool_dir: Path,
    body: bytes,
    boundary: str,
    cuts: Sequence[int] = (),
    **limits: int,
) -> list[tuple[Headers, bytes, int]]:
    """Parse the body; return each part's headers, bytes and reported size."""

    async def run() -> list[tuple[Headers, bytes, int]]:
        spool_args = {"max_body_bytes": 1 << 40, **limits}
        async with MultipartSpool(spool_dir, boundary, **spool_args) as spool:
            return [
                (part.headers, part.path.read_bytes(), part.size)
                async for part in spool.parts(_chunks(body, cuts))
            ]

    return asyncio.run(run())


def _serialize(
    boundary: str,
    parts: Sequence[tuple[Headers, bytes]],
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    padding: bytes = b"",
) -> bytes:
    dash = b"--" + boundary.encode()
    out = [preamble + CRLF] if preamble else []
    for index, (headers, content) in enumerate(parts):
        head = b"".join(f"{k}: {v}".encode() + CRLF for k, v in headers.items())
        out.append((CRLF if index else b"") + dash + padding + CRLF + head + CRLF + content)
    out.append(CRLF + dash + b"--" + epilogue)
    return b"".join(out)


# -- strategies -----------------------------------------------------------

_boundaries = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?",
    min_size=1,
    max_size=70,
)
_header_names = st.sampled_from(
    ["Content-Type", "content-location", "CONTENT-ID", "Content-Description", "X-Extra"]
)
_header_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=40
)


@st.composite
def _bodies(draw: st.DrawFn) -> tuple[str, list[tuple[Headers, bytes]], bytes, list[int]]:
    boundary = draw(_boundaries)
    dash = b"--" + boundary.encode()
    delimiter = CRLF + dash
    # Fragments that look like delimiters but are not, plus line breaks and noise.
    fragments = st.sampled_from(
        [CRLF, b"\r", b"\n", b"--", b"-", dash[:-1], CRLF + dash[:-1], dash, CRLF + b"--"]
    )
    piece = st.one_of(fragments, st.binary(max_size=12))
    parts: list[tuple[Headers, bytes]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        content = b"".join(draw(st.lists(piece, max_size=12)))
        if delimiter in CRLF + content:
            content = b""
        names = draw(st.lists(_header_names, max_size=3, unique_by=str.lower))
        parts.append(({name: draw(_header_values) for name in names}, content))
    preamble = b"".join(draw(st.lists(piece, max_size=4)))
    if delimiter in CRLF + preamble + CRLF:
        preamble = b"preamble"
    epilogue = draw(st.binary(max_size=20))
    padding = draw(st.sampled_from([b"", b" ", b"\t \t"]))
    body = _serialize(boundary, parts, preamble=preamble, epilogue=epilogue, padding=padding)
    cuts = draw(st.lists(st.integers(min_value=1, max_value=max(1, len(body) - 1)), max_size=8))
    return boundary, parts, body, cuts


def _expected(parts: Sequence[tuple[Headers, bytes]]) -> list[tuple[Headers, bytes, int]]:
    return [
        ({k.lower(): v.strip() for k, v in headers.items()}, content, len(content))
        for headers, content in parts
    ]


# -- round trips ----------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies())
def test_parse_of_serialize_is_identity_for_any_chunking(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[str, list[tuple[Headers, bytes]], bytes, list[int]],
) -> None:
    boundary, parts, body, cuts = case
    spool_dir = tmp_path_factory.mktemp("spool")
    assert _parse(spool_dir, body, boundary, cuts) == _expected(parts)
    assert list(spool_dir.iterdir()) == []  # every spooled file is gone afterwards


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 4000), max_size=6))
def test_base64_transfer_encoding_is_decoded(
    tmp_path_factory: pytest.TempPathFactory, content: bytes, cuts: list[int]
) -> None:
    encoded = base64.encodebytes(content).replace(b"\n", CRLF)
    body = _serialize("b64", [({"Content-Transfer-Encoding": "base64"}, encoded)])
    [(_, data, size)] = _parse(tmp_path_factory.mktemp("spool"), body, "b64", cuts)
    assert (data, size) == (content, len(content))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_quoted_printable_transfer_encoding_is_decoded(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    encoded = binascii.b2a_qp(content, istext=False).replace(b"\n", CRLF)
    body = _serialize("qp", [({"Content-Transfer-Encoding": "Quoted-Printable"}, encoded)])
    [(_, data, size)] = _parse(tmp_path_factory.mktemp("spool"), body, "qp")
    assert (data, size) == (content, len(content))


def test_quoted_printable_escape_cut_by_the_line_limit(tmp_path: Path) -> None:
    # One 3 MB line of "=41" escapes: readline's limit cuts through escapes.
    content = b"A" * (3 * 1024 * 1024 // 3)
    encoded = b"=41" * len(content)
    body = _serialize("qp", [({"Content-Transfer-Encoding": "quoted-printable"}, encoded)])
    [(_, data, _)] = _parse(tmp_path, body, "qp")
    assert data == content


# -- the grammar, example by example --------------------------------------


def test_dicomweb_style_body_with_preamble_epilogue_and_part_headers(tmp_path: Path) -> None:
    body = (
        b"This is a preamble.\r\n"
        b"--XYZ \t\r\n"
        b"Content-Type: application/dicom\r\n"
        b"Content-Location: http://host/a.dcm\r\n"
        b"X-Folded: first\r\n  second\r\n"
        b"\r\n"
        b"DICM\x00\x01\r\n--XY\r\n"
        b"--XYZ\r\n"
        b"\r\n"
        b"no headers\r\n"
        b"--XYZ--\r\nthe epilogue --XYZ\r\n--XYZ--"
    )
    parts = _parse(tmp_path, body, "XYZ", cuts=range(1, len(body)))
    assert parts == [
        (
            {
                "content-type": "application/dicom",
                "content-location": "http://host/a.dcm",
                "x-folded": "first second",
            },
            b"DICM\x00\x01\r\n--XY",
            12,
        ),
        ({}, b"no headers", 10),
    ]


def test_a_line_that_only_starts_with_the_boundary_is_content(tmp_path: Path) -> None:
    content = b"a\r\n--XYZW is not a delimiter\r\n--XYZ-not-the-close"
    body = _serialize("XYZ", [({}, content)])
    assert _parse(tmp_path, body, "XYZ")[0][1] == content


def test_empty_multipart_has_no_parts(tmp_path: Path) -> None:
    assert _parse(tmp_path, b"--b--\r\n", "b") == []


def test_wrong_boundary_is_invalid_and_says_so(tmp_path: Path) -> None:
    body = _serialize("right", [({}, b"x")])
    with pytest.raises(Invalid, match="boundary parameter .* does not match"):
        _parse(tmp_path, body, "wrong")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "body",
    [b"--b\r\n\r\ncontent", b"--b\r\nContent-Type: x\r\n", b"--b\r\n\r\nx\r\n--b\r\n", b"--b"],
)
def test_missing_close_delimiter_is_invalid(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(Invalid, match="ended before its close delimiter") as caught:
        _parse(tmp_path, body, "b")
    assert not isinstance(caught.value, BodyTooLarge)
    assert list(tmp_path.iterdir()) == []


def test_malformed_part_header_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="not 'Name: value'"):
        _parse(tmp_path, b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "b")


def test_endless_header_block_is_invalid(tmp_path: Path) -> None:
    body = b"--b\r\n" + b"X-Long: " + b"a" * 70_000
    with pytest.raises(Invalid, match="header block"):
        _parse(tmp_path, body, "b", cuts=range(1000, len(body), 1000))


def test_unknown_transfer_encoding_is_invalid(tmp_path: Path) -> None:
    body = _serialize("b", [({"Content-Transfer-Encoding": "x-gzip"}, b"x")])
    with pytest.raises(Invalid, match="x-gzip"):
        _parse(tmp_path, body, "b")


def test_bad_base64_is_invalid(tmp_path: Path) -> None:
    body = _serialize("b", [({"Content-Transfer-Encoding": "base64"}, b"QUJDR")])
    with pytest.raises(Invalid, match="base64"):
        _parse(tmp_path, body, "b")


@pytest.mark.parametrize("boundary", ["", "a" * 257, "a\r\nb", "é"])
def test_unusable_boundaries_are_invalid(boundary: str) -> None:
    with pytest.raises(Invalid):
        check_boundary(boundary)


# -- limits and resources -------------------------------------------------


def test_total_body_limit(tmp_path: Path) -> None:
    body = _serialize("b", [({}, b"x" * 1000)])
    assert len(_parse(tmp_path, body, "b", max_body_bytes=len(body))) == 1
    with pytest.raises(BodyTooLarge, match="request body") as caught:
        _parse(tmp_path, body, "b", cuts=[100, 500], max_body_bytes=len(body) - 1)
    assert isinstance(caught.value, Invalid) and caught.value.status == 0xA700
    assert list(tmp_path.iterdir()) == []


def test_per_part_limit(tmp_path: Path) -> None:
    body = _serialize("b", [({}, b"x" * 10), ({}, b"y" * 11)])
    with pytest.raises(BodyTooLarge, match="part 2"):
        _parse(tmp_path, body, "b", max_part_bytes=10)
    assert [size for _, _, size in _parse(tmp_path, body, "b", max_part_bytes=11)] == [10, 11]


def test_parts_are_spooled_not_buffered(tmp_path: Path) -> None:
    """An 8 MB part fed in 64 KB chunks never has more than a chunk in memory."""
    boundary = b"bound"
    parser = _Parser(boundary, tmp_path, None)
    body = _serialize("bound", [({}, b"\r\n-" * (8 * 1024 * 1024 // 3))])
    largest, parts = 0, []
    for start in range(0, len(body), 65536):
        parts += parser.feed(body[start : start + 65536])
        largest = max(largest, len(parser._buf))
    parser.finish()
    assert largest < 65536 + len(boundary) + 4
    [part] = parts
    assert isinstance(part, Part) and part.size == 8 * 1024 * 1024 // 3 * 3


def test_consumer_failure_still_removes_spooled_files(tmp_path: Path) -> None:
    body = _serialize("b", [({}, b"one"), ({}, b"two")])

    async def run() -> None:
        with MultipartSpool(tmp_path, "b", max_body_bytes=1000) as spool:
            async for part in spool.parts(_chunks(body, [])):
                assert part.path.exists()
                raise RuntimeError("consumer gave up")

    with pytest.raises(RuntimeError):
        asyncio.run(run())
    assert list(tmp_path.iterdir()) == []


# -- Content-Type ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'multipart/related; type="application/dicom"; boundary=abc',
            ("multipart/related", {"type": "application/dicom", "boundary": "abc"}),
        ),
        (
            'Multipart/Related;Type=application/dicom;Boundary="a;b=c";transfer-syntax=1.2.3',
            (
                "multipart/related",
                {"type": "application/dicom", "boundary": "a;b=c", "transfer-syntax": "1.2.3"},
            ),
        ),
        (
            'application/dicom ; x="a \\"q\\" b" ; q=0.5',
            ("application/dicom", {"x": 'a "q" b', "q": "0.5"}),
        ),
        ("application/dicom+json", ("application/dicom+json", {})),
        ("text/plain; ; junk; charset=utf-8", ("text/plain", {"charset": "utf-8"})),
        ("", ("", {})),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected


@given(_boundaries)
def test_quoted_and_unquoted_boundaries_agree(boundary: str) -> None:
    quoted = boundary.replace("\\", "\\\\").replace('"', '\\"')
    [_, unquoted_params] = parse_content_type(f"multipart/related; boundary={boundary}")
    [_, quoted_params] = parse_content_type(f'multipart/related; boundary="{quoted}"')
    assert quoted_params["boundary"] == boundary
    if ";" not in boundary:
        assert unquoted_params["boundary"] == boundary
