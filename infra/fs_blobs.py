"""The embedded BlobStore: a directory of immutable files.

A blob is written to a temp file beside its final path, fsynced, then linked
into place with os.link, which fails when the name exists: put-if-absent is
atomic without any lock, across threads and processes. The directory is
fsynced afterwards so the new name survives a crash. Readers therefore only
ever see complete blobs. Temp files start with '.', which no key segment may,
so a crash leaves nothing that `keys()` would report.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

from infra.errors import Conflict, Invalid, NotFound, Unavailable

CHUNK = 1024 * 1024
_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]*")
_TEMP_PREFIX = ".tmp-"
# Filesystems without hard links: fall back to rename after an exists check.
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


def check_key(key: str) -> str:
    """A blob key: relative, segments of [A-Za-z0-9._-] not starting with '.'."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise Invalid(f"blob key {key!r} must be a non-empty string of at most 1024 characters")
    if not _KEY_CHARS.fullmatch(key):
        raise Invalid(f"blob key {key!r} may only contain A-Z a-z 0-9 . _ / -")
    for segment in key.split("/"):
        if not segment or segment.startswith("."):
            # Empty segments mean a leading/trailing/double '/'; '.' covers
            # '.', '..' and hidden names (our temp files).
            raise Invalid(f"blob key {key!r} has an empty, '.' or '..' or hidden segment")
    return key


class FileBlobStore:
    """`infra.ports.BlobStore` over a directory tree rooted at `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # The write path works on plain strings: pathlib's objects cost ~5 % of
        # the server's CPU per stored instance.
        self._root = os.fspath(self.root)
        # Folders known to exist (and fsynced into their parents): blob folders are
        # never removed, so a folder seen once saves its stat on every later put.
        self._folders: set[str] = set()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(exc, str(self.root))

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _name(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    # -- write ------------------------------------------------------------------

    def put_if_absent(self, key: str, source: BinaryIO | bytes) -> bool:
        final = self._name(key)
        temp = f"{_folder(final)}/{_TEMP_PREFIX}{uuid.uuid4().hex}"

        def write_and_link() -> bool:
            _write_synced(temp, source)
            return _link_if_absent(temp, final)

        try:
            return self._place(key, final, write_and_link)
        except _SourceFailed as failed:
            raise failed.error from None
        finally:
            with contextlib.suppress(OSError):
                # A leftover temp file is harmless: keys() skips it.
                os.unlink(temp)

    def put_file_if_absent(self, key: str, path: Path) -> bool:
        """Hard-link the caller's finished file into place: no second copy of
        the bytes (a received C-STORE data set that already starts with
        Chronicle's File Meta). Copies when the file is on another filesystem or
        hard links are not supported."""
        final, received = self._name(key), os.fspath(path)
        if not os.path.isfile(received):
            raise Invalid(f"no file {path} to keep as blob {key}")

        def link() -> bool:
            _sync_file(received)
            try:
                os.link(received, final)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno in _NO_LINK:
                    raise _NoLink from exc
                raise

        try:
            return self._place(key, final, link)
        except _NoLink:
            with open(received, "rb") as source:
                return self.put_if_absent(key, source)

    def _place(self, key: str, final: str, store: Callable[[], bool]) -> bool:
        """`store()` the blob at `final` unless it is there; then make its name
        durable. True when this call stored it."""
        unsynced: list[str] = []
        folder = _folder(final)
        try:
            if folder in self._folders and os.path.isfile(final):
                stored = False
            else:
                if os.path.isdir(final):
                    raise Conflict(f"blob key {key} names a folder of other blobs")
                unsynced = self._make_dirs(folder)
                stored = store()
            # Also when the key existed: a concurrent writer may have linked it
            # without having fsynced the folder yet, and our caller will
            # acknowledge on the strength of this answer.
            _fsync_dir(folder)
            self._sync_entries(unsynced)
            return stored
        except NotADirectoryError as exc:
            raise Conflict(f"blob key {key} lies under another blob") from exc
        except OSError as exc:
            _fail(exc, key)

    def _make_dirs(self, directory: str) -> list[str]:
        """Make the missing folders of `directory`; return every folder on the way
        whose entry in its parent is not yet known durable: made now, made by a
        concurrent writer that may not have fsynced its parent yet (a folder
        that merely exists proves nothing), or by an earlier process. The caller
        fsyncs their parents (`_sync_entries`) before it acknowledges, after the
        blob's own fsyncs."""
        pending: list[str] = []
        while directory != self._root and directory not in self._folders:
            pending.append(directory)
            directory = _folder(directory)
        for new in reversed(pending):
            with contextlib.suppress(FileExistsError):
                os.mkdir(new)
        return pending

    def _sync_entries(self, folders: list[str]) -> None:
        for folder in folders:
            _fsync_dir(_folder(folder))
        self._folders.update(folders)

    # -- read -------------------------------------------------------------------

    def get(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"blob {key} not found") from exc
        except OSError as exc:
            _fail(exc, key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise Invalid(f"byte range {offset}+{length} of blob {key} is negative")
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"blob {key} not found") from exc
        except OSError as exc:
            _fail(exc, key)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise NotFound(f"blob {key} not found")
            size = info.st_size
            if offset + length > size:
                raise Invalid(f"byte range {offset}+{length} is past the end of {key} ({size})")
            return _pread_exact(fd, offset, length)
        except OSError as exc:
            _fail(exc, key)
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            info = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"blob {key} not found") from exc
        except OSError as exc:
            _fail(exc, key)
        if not stat.S_ISREG(info.st_mode):
            raise NotFound(f"blob {key} not found")
        return info.st_size

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with `prefix`, in sorted order (temp files skipped)."""
        if not _KEY_CHARS.fullmatch(prefix) or prefix.startswith("/") or ".." in prefix.split("/"):
            raise Invalid(f"blob key prefix {prefix!r} is not a valid key prefix")
        # Walk only the deepest directory the prefix names in full.
        base = prefix.rpartition("/")[0]
        top = self.root / base if base else self.root
        for directory, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            relative = Path(directory).relative_to(self.root).as_posix()
            for name in sorted(files):
                if name.startswith("."):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    yield key

    def close(self) -> None:
        """Nothing is held open between calls."""


def _folder(name: str) -> str:
    return name.rpartition("/")[0]


def _write_synced(temp: str, source: BinaryIO | bytes) -> None:
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            _write_all(fd, memoryview(source))
        else:
            while chunk := _read_source(source):
                _write_all(fd, memoryview(chunk))
        os.fsync(fd)
    finally:
        os.close(fd)


class _NoLink(Exception):
    """Hard links cannot reach the blob's folder (another filesystem, or none)."""


class _SourceFailed(Exception):
    """The caller's stream failed: its error is the caller's, not the store's."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _read_source(source: BinaryIO) -> bytes:
    try:
        return source.read(CHUNK)
    except OSError as exc:
        raise _SourceFailed(exc) from exc


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _link_if_absent(temp: str, path: str) -> bool:
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
    if os.path.exists(path):
        return False
    os.rename(temp, path)
    return True


def _pread_exact(fd: int, offset: int, length: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise OSError(errno.EIO, "blob shrank while being read")
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def _sync_file(path: str) -> None:
    """fsync a file written by someone else; blobs are readable by all, like ours."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o644)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fail(exc: OSError, what: str) -> NoReturn:
    """Every other OSError (ENOSPC, EIO, EDQUOT, EROFS, EACCES…) is Unavailable."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    raise Unavailable(f"blob store: {what}: {reason}") from exc
