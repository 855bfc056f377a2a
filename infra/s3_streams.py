"""Byte plumbing for the S3 blob store: exact-size reads from a caller's source, cut into
parts without holding the object, and response bodies whose failures leave as Unavailable.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError
from urllib3.exceptions import HTTPError

from infra.errors import Unavailable

CHUNK = 1024 * 1024
#: What reading a response body can raise, whatever layer it comes from.
STREAM_ERRORS = (BotoCoreError, HTTPError, OSError)


class SourceFailed(Exception):
    """The caller's stream failed: its error is the caller's, not the store's."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class SourceReader:
    """Exact-size reads from bytes or a stream whose reads may come back short."""

    def __init__(self, source: BinaryIO | bytes) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            self._stream: BinaryIO = io.BytesIO(source)
        else:
            self._stream = source
        self._readinto = getattr(self._stream, "readinto", None)

    def read_up_to(self, size: int) -> bytes:
        """Up to `size` bytes (fewer only at the end), never allocating `size` up front."""
        pieces: list[bytes] = []
        wanted = size
        try:
            while wanted > 0 and (piece := self._stream.read(min(wanted, CHUNK))):
                pieces.append(piece)
                wanted -= len(piece)
        except OSError as exc:
            raise SourceFailed(exc) from exc
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def fill(self, size: int, start: bytes | memoryview = b"") -> bytearray:
        """`start` then up to size - len(start) further bytes, in one buffer (fewer at the end).

        For parts of an object known to be large: the buffer is allocated once.
        """
        buffer = bytearray(size)
        buffer[: len(start)] = start
        filled = len(start)
        view = memoryview(buffer)
        try:
            while filled < size:
                got = self._read_into(view[filled:])
                if not got:
                    break
                filled += got
        except OSError as exc:
            raise SourceFailed(exc) from exc
        finally:
            view.release()
        del buffer[filled:]
        return buffer

    def _read_into(self, target: memoryview) -> int:
        if self._readinto is not None:
            return int(self._readinto(target) or 0)
        piece = self._stream.read(len(target))
        target[: len(piece)] = piece
        return len(piece)


def cut_parts(head: bytes, reader: SourceReader, size: int) -> Iterator[bytes | bytearray]:
    """`head` then the rest of `reader` in parts of exactly `size` bytes (the last may be short)."""
    view = memoryview(head)
    while len(view) >= size:
        yield bytearray(view[:size])
        view = view[size:]
    part = reader.fill(size, view)
    while part:
        yield part
        if len(part) < size:
            return
        part = reader.fill(size)


class ObjectReader(io.RawIOBase):
    """A whole blob as a seekable stream, the way a file from the folder store is one.

    Reading forward streams one GET; a seek drops it and the next read opens a
    ranged GET at the new position (pydicom and the hash check seek; wrap this
    in a BufferedReader so small seeks stay inside its buffer). Reaching the
    end reads once more, which is when botocore checks the body against the
    store's SHA-256. Network failures and short bodies leave as Unavailable.
    """

    def __init__(self, first: Any, size: int, open_at: Callable[[int], Any], key: str) -> None:
        self._body: Any = first
        self._size = size
        self._open_at = open_at
        self._key = key
        self._position = 0
        #: As a file's: BufferedReader.name reads it, and pydicom reads that.
        self.name = key

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}
        if whence not in bases:
            raise ValueError(f"invalid whence {whence}")
        target = bases[whence] + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self._position:
            self._drop()
            self._position = target
        return target

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        wanted = min(len(buffer), self._size - self._position)
        if wanted <= 0:
            return 0
        data = self._read(wanted)
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        # The rest in one call, not RawIOBase's 8 KiB steps.
        wanted = self._size - self._position
        return self._read(wanted) if wanted > 0 else b""

    def _read(self, wanted: int) -> bytes:
        if self._body is None:
            self._body = self._open_at(self._position)
        try:
            data: bytes = self._body.read(wanted)
            if not data:
                raise Unavailable(
                    f"blob store: {self._key} ended at byte {self._position} of {self._size}"
                )
            self._position += len(data)
            if self._position == self._size:
                self._body.read(1)  # the empty read at the end triggers the checksum check
                self._drop()
        except STREAM_ERRORS as exc:
            raise Unavailable(f"blob store: reading {self._key} failed: {exc}") from exc
        return data

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()

    def close(self) -> None:
        self._drop()
        super().close()


def read_all(body: Any, key: str) -> bytes:
    try:
        with contextlib.closing(body):
            data: bytes = body.read()
    except STREAM_ERRORS as exc:
        raise Unavailable(f"blob store: reading {key} failed: {exc}") from exc
    return data
