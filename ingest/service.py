"""Ingest: validate -> blob -> event -> outcome (DESIGN.md, The flow).

One service for every route (DIMSE, STOW, IMPORT). It acknowledges nothing:
callers answer success only after a method here returned, which is only after
the blob and then the event are durable.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import orjson
from pydicom.uid import UID

from infra.errors import ChronicleError, Invalid, Unavailable
from infra.ports import BlobStore, EventLog
from infra.settings import Settings
from ingest.parse import ParsedInstance, parse_dataset, parse_part10
from schemas import codec
from schemas.events import BlobRef, Envelope, InstanceStored, Source

log = logging.getLogger("chronicle.ingest")

#: Events stay well under Kafka's 1 MB default message size; larger
#: metadata (Enhanced multi-frame functional groups...) goes to a sidecar blob.
MAX_INLINE_METADATA = 512 * 1024
#: A frame table larger than this (encoded) goes to a sidecar blob too: with the
#: metadata's 512 KiB the event stays under a Kafka record's 1 MB.
MAX_INLINE_FRAMES = 256 * 1024


def instance_blob_key(dataset_sha256: str) -> str:
    """Content-addressed key: the dataset hash decides where the bytes live."""
    return f"instances/{dataset_sha256[:2]}/{dataset_sha256[2:4]}/{dataset_sha256}.dcm"


def sidecar_blob_key(sha256: str) -> str:
    return f"sidecars/{sha256[:2]}/{sha256[2:4]}/{sha256}.json"


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    event: InstanceStored
    position: tuple[int, int]
    #: The same identity (SOP Instance UID + dataset sha256) was already kept:
    #: no second blob was written; the event still records this receipt.
    duplicate: bool
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Prepared:
    """An instance whose blob is durable and whose event awaits its append."""

    event: InstanceStored
    envelope: Envelope
    duplicate: bool
    warnings: list[str]

    def outcome(self, position: tuple[int, int]) -> StoreOutcome:
        return StoreOutcome(self.event, position, duplicate=self.duplicate, warnings=self.warnings)


class _Part10Reader(io.RawIOBase):
    """Chronicle's File Meta followed by the source's dataset bytes, streamed."""

    def __init__(self, file_meta: bytes, source: BinaryIO, dataset_offset: int) -> None:
        self._head = memoryview(file_meta)
        self._source = source
        source.seek(dataset_offset)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._source.readinto(buffer)  # type: ignore[attr-defined,no-any-return]


def _starts_with(path: Path, file_meta: bytes, dataset_offset: int) -> bool:
    if dataset_offset != len(file_meta):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, dataset_offset, 0) == file_meta
    finally:
        os.close(fd)


def _is_storage_sop_class(uid: str) -> bool:
    # Storage SOP classes are the only ones a C-STORE / STOW may carry; a
    # private (non-standard) class is accepted as is: we keep what we're sent.
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    if not uid.startswith("1.2.840.10008."):
        return True
    return issubclass(uid_to_service_class(UID(uid)), StorageServiceClass)


class IngestService:
    def __init__(
        self,
        log_: EventLog,
        blobs: BlobStore,
        *,
        site: str = "local",
        node: str = "",
        min_free_bytes: int = 0,
        space_path: Path | None = None,
        default_charset: str = "ISO_IR 100",
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self._log = log_
        self._blobs = blobs
        self._site = site
        self._node = node
        self._min_free = min_free_bytes
        self._space_path = space_path
        self._charset = default_charset
        self._free_bytes = free_bytes or self._disk_free

    @classmethod
    def from_settings(cls, settings: Settings, log_: EventLog, blobs: BlobStore) -> IngestService:
        """The service every ingest process (owner, worker, import) builds."""
        return cls(
            log_,
            blobs,
            site=settings.site,
            node=settings.node,
            min_free_bytes=settings.min_free_bytes,
            space_path=settings.data_dir,
            default_charset=settings.default_character_set,
        )

    # -- the routes ---------------------------------------------------------

    def store_part10_file(
        self, path: Path, *, source: Source, expected_study_uid: str | None = None
    ) -> StoreOutcome:
        self.check_space()
        parsed = parse_part10(path, default_charset=self._charset)
        return self._keep(parsed, path, source, expected_study_uid)

    def store_dataset_file(
        self,
        path: Path,
        *,
        transfer_syntax_uid: str,
        source: Source,
        offset: int = 0,
        expected_sop_instance_uid: str | None = None,
        dataset_sha256: str | None = None,
        received: bool = False,
    ) -> StoreOutcome:
        """A bare data set (a C-STORE's), in `transfer_syntax_uid`, from `offset`.
        With `expected_sop_instance_uid` (the command's Affected SOP Instance UID), a
        data set naming another instance is refused (0xA900) before anything is kept.

        `received`: the file is Chronicle's own copy, removed by the caller after
        this returns, so the blob store may keep the file itself when it already
        starts with the blob's File Meta (see `_write_blob`). `dataset_sha256`:
        the hash of the bytes from `offset`, computed while they arrived."""
        self.check_space()
        parsed = parse_dataset(
            path,
            transfer_syntax_uid,
            offset=offset,
            default_charset=self._charset,
            dataset_sha256=dataset_sha256,
        )
        expected = expected_sop_instance_uid
        if expected is not None and parsed.sop_instance_uid != expected:
            raise Invalid(
                f"dataset SOP Instance UID {parsed.sop_instance_uid} differs from the command's",
                status=0xA900,
            )
        return self._keep(parsed, path, source, None, received=received)

    def store_bytes(self, data: bytes, *, source: Source) -> StoreOutcome:
        with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
            tmp.write(data)
            tmp.flush()
            return self.store_part10_file(Path(tmp.name), source=source)

    # -- the steps ----------------------------------------------------------

    def check_space(self) -> None:
        """Refuse before receiving more when the disk is below the floor."""
        if self._min_free <= 0:
            return
        free = self._free_bytes()
        if free < self._min_free:
            raise Unavailable(
                f"only {free} bytes free on the data disk, below the floor of {self._min_free}"
            )

    def _disk_free(self) -> int:
        path = self._space_path or Path(".")
        return shutil.disk_usage(path).free if path.exists() else 1 << 62

    def store_part10_files(
        self,
        paths: Sequence[Path],
        *,
        source: Source,
        expected_study_uid: str | None = None,
        parallel: int = 4,
        received: bool = False,
    ) -> list[StoreOutcome | Exception]:
        """Several Part-10 files (one STOW-RS request), each in its place in the answer.

        Each file is validated and its blob made durable on its own, several at a
        time (their fsync waits overlap); then the events of every file that got
        that far are appended in one batch, in the given order: one log commit for
        the request, and log order = part order. A file that fails gets its error;
        when the append fails, every file that waited for it gets that error.
        `received` as for `store_dataset_file`.
        """
        self.check_space()

        def prepare(path: Path) -> _Prepared | Exception:
            try:
                parsed = parse_part10(path, default_charset=self._charset)
                return self._prepare(parsed, path, source, expected_study_uid, received=received)
            except Exception as exc:  # the caller reports each file's own error
                return exc

        workers = max(1, min(parallel, len(paths)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
            prepared = list(pool.map(prepare, paths))
        results: list[StoreOutcome | Exception] = list(prepared)  # type: ignore[arg-type]
        ready = [(i, item) for i, item in enumerate(prepared) if isinstance(item, _Prepared)]
        if not ready:
            return results
        try:
            positions = self._append([item.envelope for _, item in ready])
        except ChronicleError as exc:
            for i, _ in ready:
                results[i] = exc
            return results
        for (i, item), position in zip(ready, positions, strict=True):
            results[i] = item.outcome(position)
        return results

    def _keep(
        self,
        parsed: ParsedInstance,
        path: Path,
        source: Source,
        expected_study: str | None,
        *,
        received: bool = False,
    ) -> StoreOutcome:
        prepared = self._prepare(parsed, path, source, expected_study, received=received)
        [position] = self._append([prepared.envelope])
        return prepared.outcome(position)

    def _prepare(
        self,
        parsed: ParsedInstance,
        path: Path,
        source: Source,
        expected_study: str | None,
        *,
        received: bool = False,
    ) -> _Prepared:
        """Validate, make the blob durable, build the event (not yet appended)."""
        if expected_study is not None and parsed.study_instance_uid != expected_study:
            raise Invalid(
                f"instance {parsed.sop_instance_uid} belongs to study "
                f"{parsed.study_instance_uid}, not {expected_study}",
                status=0xA900,
            )
        if not _is_storage_sop_class(parsed.sop_class_uid):
            raise Invalid(
                f"SOP class {parsed.sop_class_uid} is not a storage SOP class", status=0x0122
            )
        blob, written = self._write_blob(parsed, path, received)
        event = self._event(parsed, blob, source)
        envelope = Envelope.of(
            event, key=event.study_instance_uid, site=self._site, node=self._node
        )
        warnings = list(parsed.warnings)
        if not written:
            warnings.append("duplicate: identical instance already kept")
        return _Prepared(event, envelope, not written, warnings)

    def _append(self, envelopes: list[Envelope]) -> list[tuple[int, int]]:
        try:
            positions = self._log.append([(e.key, codec.encode(e)) for e in envelopes])
        except ChronicleError:
            raise
        except Exception as exc:  # a driver error that escaped its adapter
            raise Unavailable(f"event log append failed: {exc}") from exc
        for envelope, position in zip(envelopes, positions, strict=True):
            log.debug("stored %s at %s", envelope.key, position)
        return positions

    def _write_blob(
        self, parsed: ParsedInstance, path: Path, received: bool
    ) -> tuple[BlobRef, bool]:
        """The blob is File Meta + the dataset bytes. A received file that is
        already exactly that (a C-STORE data set the receiver wrote after the
        File Meta built from its command) is handed over whole: no copy."""
        key = instance_blob_key(parsed.dataset_sha256)
        if received and _starts_with(path, parsed.file_meta, parsed.dataset_offset):
            written = self._blobs.put_file_if_absent(key, path)
        else:
            with path.open("rb") as fh:
                written = self._blobs.put_if_absent(
                    key,
                    _Part10Reader(parsed.file_meta, fh, parsed.dataset_offset),  # type: ignore[arg-type]
                )
        size = len(parsed.file_meta) + parsed.dataset_length
        return BlobRef(key, parsed.dataset_sha256, size, len(parsed.file_meta)), written

    def _event(self, parsed: ParsedInstance, blob: BlobRef, source: Source) -> InstanceStored:
        event = InstanceStored(
            sop_class_uid=parsed.sop_class_uid,
            sop_instance_uid=parsed.sop_instance_uid,
            series_instance_uid=parsed.series_instance_uid,
            study_instance_uid=parsed.study_instance_uid,
            patient_id=parsed.patient_id,
            issuer_of_patient_id=parsed.issuer_of_patient_id,
            transfer_syntax_uid=parsed.transfer_syntax_uid,
            blob=blob,
            source=source,
            metadata=parsed.metadata,
            frames=parsed.frames,
            frames_note=parsed.frames_note,
        )
        if parsed.frames is not None:
            table = orjson.dumps(parsed.frames)
            if len(table) > MAX_INLINE_FRAMES:
                event = replace(event, frames=None, frames_sidecar=self._sidecar(table))
        encoded = orjson.dumps(parsed.metadata)
        if len(encoded) <= MAX_INLINE_METADATA:
            return event
        return replace(event, metadata={}, sidecar=self._sidecar(encoded))

    def _sidecar(self, document: bytes) -> BlobRef:
        sha = hashlib.sha256(document).hexdigest()
        key = sidecar_blob_key(sha)
        self._blobs.put_if_absent(key, document)
        return BlobRef(key, sha, len(document), 0)
