"""Streaming multipart/related parser (RFC 2046 section 5.1, RFC 2387) for STOW-RS bodies.

Bodies may be gigabytes, so nothing here holds a whole body or a whole part in
memory: each part's bytes go to a temporary file in a private directory as they
arrive, and the directory goes away when the spool is closed. Malformed bodies
raise `Invalid`; bodies or parts over their limit raise `BodyTooLarge`.
"""

from __future__ import annotations

import asyncio
import binascii
import re
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from infra.errors import Invalid

CRLF = b"\r\n"
#: A part's header block larger than this is not a header block.
MAX_HEADER_BYTES = 64 * 1024
#: Transport padding (RFC 2046 LWSP after a delimiter) longer than this is not padding.
MAX_PADDING_BYTES = 1024
_COPY_BYTES = 1024 * 1024
_MAX_BOUNDARY = 256
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*(?:;|$)')
_QUOTED_PAIR = re.compile(r"\\(.)")
_IDENTITY_ENCODINGS = frozenset({"", "binary", "8bit", "7bit"})


#: Wraps a part's spool file given the part's headers (ingest.part10_spool):
#: whatever it returns is written the part's bytes in order, then closed.
PartWriter = Callable[[dict[str, str], BinaryIO], BinaryIO]


class BodyTooLarge(Invalid):
    """The request body or one of its parts is over its size limit (HTTP 413)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=0xA700)


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its headers (lower-case names), its spooled bytes, their size."""

    headers: dict[str, str]
    path: Path
    size: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type (or Accept member) into a lower-case media type and its
    parameters (lower-case names, unquoted values).

    Parameters that do not parse are skipped: a peer's odd extra parameter must
    not hide the ones that matter (type, boundary, transfer-syntax).
    """
    media_type, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None:
            skip = rest.find(";", pos)
            if skip < 0:
                break
            pos = skip + 1
            continue
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            raw = _QUOTED_PAIR.sub(r"\1", raw[1:-1])
        params.setdefault(name, raw)
        pos = match.end()
    return media_type.strip().lower(), params


def check_boundary(boundary: str) -> bytes:
    """The boundary as bytes, or Invalid when it cannot delimit anything."""
    if not boundary:
        raise Invalid("the multipart Content-Type has no boundary parameter")
    if len(boundary) > _MAX_BOUNDARY or not boundary.isascii():
        raise Invalid(f"multipart boundary is not 1 to {_MAX_BOUNDARY} ASCII characters")
    if "\r" in boundary or "\n" in boundary:
        raise Invalid("multipart boundary contains a line break")
    return boundary.encode("ascii")


class _State(Enum):
    PREAMBLE = 1
    HEADERS = 2
    BODY = 3
    EPILOGUE = 4


class _After(Enum):
    NEED_MORE = 1
    NOT_DELIMITER = 2
    NEXT_PART = 3
    CLOSE = 4


class _Parser:
    """Synchronous state machine: feed bytes, get the parts completed by them."""

    def __init__(
        self,
        boundary: bytes,
        directory: Path,
        max_part_bytes: int | None,
        part_writer: PartWriter | None = None,
    ) -> None:
        self._boundary = boundary.decode("ascii")
        self._delimiter = CRLF + b"--" + boundary
        # A leading CRLF lets a delimiter at the very start of the body (no
        # preamble) match the same pattern as every later one.
        self._buf = bytearray(CRLF)
        self._state = _State.PREAMBLE
        self._dir = directory
        self._max_part = max_part_bytes
        self._part_writer = part_writer
        self._count = 0
        self._headers: dict[str, str] = {}
        self._file: BinaryIO | None = None
        self._path = directory
        self._size = 0

    def feed(self, data: bytes | bytearray) -> list[Part]:
        if self._state is _State.EPILOGUE:
            return []  # the epilogue is ignored (RFC 2046)
        self._buf += data
        done: list[Part] = []
        while self._step(done):
            pass
        return done

    def finish(self) -> None:
        if self._state is _State.EPILOGUE:
            return
        if self._state is _State.PREAMBLE and self._delimiter not in self._buf:
            raise Invalid(
                f'the body has no delimiter "--{self._boundary}": the boundary parameter '
                "of the Content-Type does not match the body"
            )
        raise Invalid(f'the multipart body ended before its close delimiter "--{self._boundary}--"')

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _step(self, done: list[Part]) -> bool:
        if self._state is _State.PREAMBLE:
            return self._preamble()
        if self._state is _State.HEADERS:
            return self._header_block()
        if self._state is _State.BODY:
            return self._body(done)
        self._buf.clear()
        return False

    def _preamble(self) -> bool:
        at = self._buf.find(self._delimiter)
        if at < 0:
            del self._buf[: max(0, len(self._buf) - len(self._delimiter) + 1)]
            return False
        after, end = self._after_delimiter(at + len(self._delimiter))
        if after is _After.NEED_MORE:
            del self._buf[:at]
            return False
        if after is _After.NOT_DELIMITER:
            del self._buf[: at + len(self._delimiter)]
            return True
        del self._buf[:end]
        self._state = _State.HEADERS if after is _After.NEXT_PART else _State.EPILOGUE
        return True

    def _header_block(self) -> bool:
        if self._buf.startswith(CRLF):
            block, end = b"", len(CRLF)
        else:
            at = self._buf.find(CRLF + CRLF)
            if at < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    raise Invalid(f"a part's header block is over {MAX_HEADER_BYTES} bytes")
                return False
            block, end = bytes(self._buf[:at]), at + 2 * len(CRLF)
        if end > MAX_HEADER_BYTES:
            raise Invalid(f"a part's header block is over {MAX_HEADER_BYTES} bytes")
        del self._buf[:end]
        self._headers = _parse_headers(block)
        self._open_part()
        self._state = _State.BODY
        return True

    def _body(self, done: list[Part]) -> bool:
        at = self._buf.find(self._delimiter)
        if at < 0:
            # Keep what could be the start of a delimiter split across chunks.
            self._write(max(0, len(self._buf) - len(self._delimiter) + 1))
            return False
        after, end = self._after_delimiter(at + len(self._delimiter))
        if after is _After.NEED_MORE:
            self._write(at)
            return False
        if after is _After.NOT_DELIMITER:
            # A delimiter cannot start inside this match (no CR in a boundary).
            self._write(at + len(self._delimiter))
            return True
        self._write(at)
        del self._buf[: end - at]
        done.append(self._close_part())
        self._state = _State.HEADERS if after is _After.NEXT_PART else _State.EPILOGUE
        return True

    def _after_delimiter(self, pos: int) -> tuple[_After, int]:
        """What follows a delimiter match: "--" closes; LWSP* CRLF opens a part."""
        buf = self._buf
        if len(buf) - pos < 2:
            return _After.NEED_MORE, pos
        if buf[pos : pos + 2] == b"--":
            return _After.CLOSE, pos + 2
        end = pos
        while end < len(buf) and buf[end] in b" \t" and end - pos <= MAX_PADDING_BYTES:
            end += 1
        if end - pos > MAX_PADDING_BYTES:
            return _After.NOT_DELIMITER, pos
        if buf[end : end + 2] == CRLF:
            return _After.NEXT_PART, end + 2
        if end == len(buf) or (end + 1 == len(buf) and buf[end] == CRLF[0]):
            return _After.NEED_MORE, pos
        return _After.NOT_DELIMITER, pos

    def _open_part(self) -> None:
        self._count += 1
        self._path = self._dir / f"part-{self._count:05d}"
        self._file = self._path.open("wb")
        if self._part_writer is not None:
            self._file = self._part_writer(self._headers, self._file)
        self._size = 0

    def _write(self, upto: int) -> None:
        if upto <= 0:
            return
        assert self._file is not None
        self._size += upto
        if self._max_part is not None and self._size > self._max_part:
            raise BodyTooLarge(f"part {self._count} is over the limit of {self._max_part} bytes")
        self._file.write(memoryview(self._buf)[:upto])
        del self._buf[:upto]

    def _close_part(self) -> Part:
        self.close()
        encoding = self._headers.get("content-transfer-encoding", "").strip().lower()
        size = self._size
        if encoding not in _IDENTITY_ENCODINGS:
            size = _decode_in_place(self._path, encoding)
        return Part(headers=self._headers, path=self._path, size=size)


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    lines: list[str] = []
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()  # folded continuation (RFC 5322 2.2.3)
        elif line:
            lines.append(line)
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise Invalid(f"a part header line is not 'Name: value': {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


def _decode_in_place(path: Path, encoding: str) -> int:
    """Undo a base64 or quoted-printable Content-Transfer-Encoding; return the new size."""
    if encoding not in ("base64", "quoted-printable"):
        raise Invalid(f"unsupported Content-Transfer-Encoding {encoding!r}")
    decoded = path.with_name(path.name + ".decoded")
    size = 0
    with path.open("rb") as src, decoded.open("wb") as dst:
        chunks = _base64_chunks(src) if encoding == "base64" else _qp_chunks(src)
        for chunk in chunks:
            dst.write(chunk)
            size += len(chunk)
    decoded.replace(path)
    return size


def _base64_chunks(src: BinaryIO) -> Iterator[bytes]:
    carry = b""
    while block := src.read(_COPY_BYTES):
        data = carry + bytes(block).translate(None, b" \t\r\n")
        cut = len(data) - len(data) % 4
        carry = data[cut:]
        yield _a2b_base64(data[:cut])
    if carry:
        yield _a2b_base64(carry)


def _a2b_base64(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error as exc:
        raise Invalid(f"a base64 part does not decode: {exc}") from exc


def _qp_chunks(src: BinaryIO) -> Iterator[bytes]:
    carry = b""
    while line := src.readline(_COPY_BYTES):
        data = carry + line
        carry = b""
        if not data.endswith(b"\n"):
            # A line cut by the read limit: hold back a possibly split "=XX" escape.
            cut = data.rfind(b"=", max(0, len(data) - 2))
            if cut >= 0:
                data, carry = data[:cut], data[cut:]
        yield binascii.a2b_qp(data)
    if carry:
        yield binascii.a2b_qp(carry)


class MultipartSpool:
    """Spools the parts of one multipart body into a private temporary directory.

    Use as a (sync or async) context manager: every spooled file is deleted on
    exit, whether the consumer finished or failed half way.
    """

    def __init__(
        self,
        spool_dir: Path,
        boundary: str,
        *,
        max_body_bytes: int,
        max_part_bytes: int | None = None,
        part_writer: PartWriter | None = None,
    ) -> None:
        self._boundary = check_boundary(boundary)
        self._max_body = max_body_bytes
        self._max_part = max_part_bytes
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix="multipart-", dir=spool_dir))
        self._parser = _Parser(self._boundary, self.directory, max_part_bytes, part_writer)

    async def parts(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[Part]:
        """Yield each part as soon as its closing delimiter has been read."""
        received = 0
        async for chunk in chunks:
            received += len(chunk)
            if received > self._max_body:
                raise BodyTooLarge(f"the request body is over the limit of {self._max_body} bytes")
            # Fed on the event loop: a chunk (tens of KB from the socket) costs a
            # delimiter search and a page-cache write, far less than a hand-over
            # to a thread and back (which cost ~15 % of STOW-RS's CPU).
            for part in self._parser.feed(chunk):
                yield part
        self._parser.finish()

    def close(self) -> None:
        self._parser.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> MultipartSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> MultipartSpool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)
