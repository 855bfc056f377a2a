"""FileBlobStore beyond the port contract: keys, temp files, failures, fallbacks."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.errors import Conflict, Invalid, NotFound, Unavailable
from infra.fs_blobs import FileBlobStore, check_key

SEGMENT = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
    min_size=1,
    max_size=12,
).filter(lambda s: not s.startswith("."))


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*"))


@given(st.lists(SEGMENT, min_size=1, max_size=5))
def test_keys_of_safe_segments_are_accepted(segments: list[str]) -> None:
    key = "/".join(segments)
    assert check_key(key) == key


@given(st.text(max_size=20))
def test_every_accepted_key_stays_inside_the_root(key: str) -> None:
    try:
        check_key(key)
    except Invalid:
        return
    root = Path("/srv/blobs")
    resolved = (root / key).resolve()
    assert resolved.is_relative_to(root) and resolved != root


def test_temp_files_are_not_keys(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put_if_absent("a/b", b"blob")
    (tmp_path / "a" / ".tmp-crashed-writer").write_bytes(b"half")
    assert list(store.keys()) == ["a/b"]


def test_a_failed_fsync_is_unavailable_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileBlobStore(tmp_path)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(Unavailable, match="No space left"):
        store.put_if_absent("sha256/ab/abcd", b"bytes")
    monkeypatch.undo()
    assert not store.exists("sha256/ab/abcd")
    assert leftovers(tmp_path) == []


def test_a_write_error_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileBlobStore(tmp_path)

    def broken(fd: int, data: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(Unavailable):
        store.put_if_absent("k", b"bytes")
    monkeypatch.undo()
    assert leftovers(tmp_path) == [] and not store.exists("k")


def test_a_failing_source_stream_stores_nothing(tmp_path: Path) -> None:
    class Dropped(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise ConnectionResetError("client went away")

    store = FileBlobStore(tmp_path)
    with pytest.raises(ConnectionResetError):
        store.put_if_absent("k", Dropped())  # type: ignore[arg-type]
    assert not store.exists("k") and leftovers(tmp_path) == []


def test_without_hard_links_it_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = FileBlobStore(tmp_path)
    assert store.put_if_absent("x/y", b"first") is True
    assert store.put_if_absent("x/y", b"second") is False
    assert store.get_range("x/y", 0, 5) == b"first"
    assert leftovers(tmp_path) == []


def test_keys_that_collide_with_folders_conflict(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put_if_absent("a", b"a blob")
    store.put_if_absent("b/c", b"another")
    with pytest.raises(Conflict):
        store.put_if_absent("a/under", b"x")
    with pytest.raises(Conflict):
        store.put_if_absent("b", b"x")


def test_a_folder_is_not_a_blob(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put_if_absent("sha256/ab/abcd", b"x")
    assert not store.exists("sha256")
    with pytest.raises(NotFound):
        store.get("sha256")
    with pytest.raises(NotFound):
        store.size("sha256/ab")
    with pytest.raises(NotFound):
        store.get_range("sha256", 0, 0)


def test_blobs_land_under_the_root_as_named(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "new" / "root")
    store.put_if_absent("sha256/ab/abcd", b"content")
    assert (tmp_path / "new" / "root" / "sha256" / "ab" / "abcd").read_bytes() == b"content"


@pytest.mark.parametrize("prefix", ["../", "a/../..", "sp ace", "/abs"])
def test_bad_prefixes_are_invalid(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(Invalid):
        list(FileBlobStore(tmp_path).keys(prefix))


def test_a_folder_made_by_another_writer_is_synced_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that exists may be another writer's, made but not yet fsynced in
    its parent: the blob's acknowledgement must not rest on that writer."""
    import infra.fs_blobs as fs_blobs

    store = FileBlobStore(tmp_path)
    (tmp_path / "instances" / "ab" / "cd").mkdir(parents=True)  # the other writer's mkdirs
    synced: list[Path] = []
    real = fs_blobs._fsync_dir

    def recording(directory: str) -> None:
        synced.append(Path(directory))
        real(directory)

    monkeypatch.setattr(fs_blobs, "_fsync_dir", recording)
    assert store.put_if_absent("instances/ab/cd/blob.dcm", b"data")
    leaf = tmp_path / "instances" / "ab" / "cd"
    assert set(synced) == {leaf, leaf.parent, leaf.parent.parent, tmp_path}
    synced.clear()
    store.put_if_absent("instances/ab/cd/other.dcm", b"more")
    assert synced == [leaf]  # known durable now: only the entry of the new blob


def test_a_finished_file_is_linked_into_place_not_copied(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    received = tmp_path / "incoming.dcm"
    received.write_bytes(b"received bytes")
    received.chmod(0o600)  # as a NamedTemporaryFile makes it
    assert store.put_file_if_absent("i/ab/abcd.dcm", received) is True
    kept = tmp_path / "blobs" / "i" / "ab" / "abcd.dcm"
    assert kept.stat().st_ino == received.stat().st_ino
    assert kept.stat().st_mode & 0o777 == 0o644


def test_a_file_whose_fsync_fails_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    received = tmp_path / "incoming.dcm"
    received.write_bytes(b"received bytes")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(Unavailable, match="Input/output"):
        store.put_file_if_absent("k", received)
    monkeypatch.undo()
    assert not store.exists("k")


def test_a_file_on_another_filesystem_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    store = FileBlobStore(tmp_path / "blobs")
    received = tmp_path / "incoming.dcm"
    received.write_bytes(b"received bytes")
    assert store.put_file_if_absent("x/y", received) is True
    assert store.get_range("x/y", 0, 14) == b"received bytes"
    assert received.read_bytes() == b"received bytes"  # the caller's file is untouched
    assert leftovers(tmp_path / "blobs") == []
