"""The DIMSE front-end on a real socket: association policy, syntaxes, C-STORE.

Driven by pynetdicom and dcmtk against a stand-in archive (tests/integration/
dimse_harness.py); one test keeps instances with the real ingest service.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.filereader import read_dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import _config, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

from api.dimse.ae import VERIFICATION
from api.dimse.peer import command_set
from api.dimse.server import DimseServer, start_dimse
from infra.errors import Invalid, Unavailable
from infra.settings import Settings
from tests.integration import dimse_harness
from tests.integration.dimse_harness import (
    CALLING,
    ScriptedIngest,
    StandInArchive,
)
from tests.integration.dimse_harness import associate as _associate
from tests.support import dcmtk, free_port, make_ct, tool_env, write_part10

#: The stand-in archive and server fixtures, collected here by name.
archive = dimse_harness.archive
ingest = dimse_harness.ingest
server = dimse_harness.server

JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"


def _store(port: int, ds: Dataset | Path, syntaxes: list[str] | None = None) -> Dataset:
    contexts = [build_context(CTImageStorage, syntaxes or [ExplicitVRLittleEndian])]
    assoc = _associate(port, contexts)
    assert assoc.is_established
    try:
        status: Dataset = assoc.send_c_store(ds)
        return status
    finally:
        assoc.release()


def _small_ct(**attrs: Any) -> Dataset:
    return make_ct(rows=8, cols=8, **attrs)


# ------------------------------------------------------------ association


def test_echo_answers_success(server: DimseServer) -> None:
    assoc = _associate(server.port, [build_context(VERIFICATION)])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_echoscu_succeeds(server: DimseServer) -> None:
    run = subprocess.run(
        [dcmtk("echoscu"), "-aet", CALLING, "-aec", "CHRONICLE", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=30,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [("STRANGER", "CHRONICLE", 0x03), (CALLING, "SOMEONE", 0x07)],
)
def test_unknown_titles_are_rejected_with_the_reason(
    server: DimseServer, calling: str, called: str, reason: int
) -> None:
    assoc = _associate(server.port, [build_context(VERIFICATION)], calling=calling, called=called)
    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, reason)


def test_echoscu_sees_the_calling_title_rejection(server: DimseServer) -> None:
    run = subprocess.run(
        [dcmtk("echoscu"), "-aet", "STRANGER", "-aec", "CHRONICLE", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=30,
    )
    assert run.returncode != 0
    assert "Calling AE Title Not Recognized" in run.stdout + run.stderr


def test_host_bound_title_from_another_host_is_rejected(archive: StandInArchive) -> None:
    settings = archive.settings.model_copy(
        update={"dimse_port": free_port(), "remote_aes": ["BOUND@192.0.2.10:104"]}
    )
    dimse = start_dimse(StandInArchive(settings, ScriptedIngest()))
    try:
        assoc = _associate(dimse.port, [build_context(VERIFICATION)], calling="BOUND")
        assert assoc.is_rejected and assoc.acceptor.primitive.diagnostic == 0x03
    finally:
        dimse.stop()


def test_two_listeners_share_a_port_with_reuse_port(archive: StandInArchive) -> None:
    settings = archive.settings.model_copy(update={"dimse_port": free_port()})
    first = start_dimse(StandInArchive(settings, ScriptedIngest()), reuse_port=True)
    second = start_dimse(StandInArchive(settings, ScriptedIngest()), reuse_port=True)
    try:
        assert first.port == second.port == settings.dimse_port
        for _ in range(4):
            assoc = _associate(settings.dimse_port, [build_context(VERIFICATION)])
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
    finally:
        first.stop()
        second.stop()
    with socket.create_server(("127.0.0.1", settings.dimse_port)):
        pass  # both closed: the port is free again


@pytest.mark.parametrize(
    ("proposed", "accepted"),
    [
        ([JPEG2000Lossless, ExplicitVRLittleEndian], JPEG2000Lossless),
        ([ExplicitVRLittleEndian, JPEG2000Lossless], ExplicitVRLittleEndian),
        ([ImplicitVRLittleEndian, ExplicitVRLittleEndian], ImplicitVRLittleEndian),
        (["1.2.3.999", JPEG_XL_LOSSLESS], JPEG_XL_LOSSLESS),
    ],
)
def test_the_requestors_syntax_order_wins(
    server: DimseServer, proposed: list[str], accepted: str
) -> None:
    assoc = _associate(server.port, [build_context(CTImageStorage, proposed)])
    assert assoc.is_established
    [context] = assoc.accepted_contexts
    assert context.transfer_syntax == [accepted]
    assoc.release()


def test_many_storage_classes_are_accepted_in_one_association(server: DimseServer) -> None:
    from pynetdicom import AllStoragePresentationContexts

    contexts = [
        build_context(str(cx.abstract_syntax)) for cx in AllStoragePresentationContexts[:128]
    ]
    assoc = _associate(server.port, contexts)
    assert assoc.is_established
    assert len(assoc.accepted_contexts) == 128
    assoc.release()


# ------------------------------------------------------------------ C-STORE


def test_a_storage_association_hands_the_received_data_set_to_ingest(
    server: DimseServer, ingest: ScriptedIngest
) -> None:
    """Served by api.dimse.storage_link: the data set exactly as sent, in its syntax."""
    ds = _small_ct()
    status = _store(server.port, ds, [ImplicitVRLittleEndian])
    assert status.Status == 0x0000
    [(path, source, data)] = ingest.calls
    assert ingest.syntaxes == [ImplicitVRLittleEndian]
    assert path.parent == server.incoming and not path.exists()
    received = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    assert received.PixelData == ds.PixelData
    assert (source.protocol, source.calling_ae, source.called_ae) == ("DIMSE", CALLING, "CHRONICLE")
    assert source.peer.startswith("127.0.0.1:")


def test_a_mixed_association_stores_through_pynetdicom(
    server: DimseServer, ingest: ScriptedIngest
) -> None:
    """Storage proposed beside a retrieve model: pynetdicom serves it, with its Part-10 file."""
    ds = _small_ct()
    contexts = [
        build_context(CTImageStorage, [ImplicitVRLittleEndian]),
        build_context(StudyRootQueryRetrieveInformationModelMove),
    ]
    assoc = _associate(server.port, contexts)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    [(path, source, data)] = ingest.calls
    assert ingest.syntaxes == [None]
    assert data[128:132] == b"DICM"
    received = dcmread(BytesIO(data))
    assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert received.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert received.SOPInstanceUID == ds.SOPInstanceUID
    assert source.calling_ae == CALLING


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (Invalid("does not match", status=0xA900), 0xA900),
        (Invalid("cannot parse"), 0xC000),
        (Invalid("SOP class not supported", status=0x0122), 0x0122),
        (Invalid("a success is not a failure", status=0x0000), 0xC000),
        (Unavailable("log down"), 0xA700),
        (RuntimeError("bug"), 0xC000),
        (KeyError("bug"), 0xC000),
    ],
)
def test_store_failures_map_to_failure_statuses(
    server: DimseServer,
    ingest: ScriptedIngest,
    raised: Exception,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail(path: Path) -> Any:
        raise raised

    ingest.behaviour = fail
    answer = _store(server.port, _small_ct())
    assert answer.Status == status
    assert answer.ErrorComment and len(answer.ErrorComment) <= 64
    assert len(ingest.calls) == 1
    failed = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "C-STORE from" in r.getMessage()
    ]
    assert failed and f"0x{status:04X}" in failed[0].getMessage()


def test_dataset_naming_another_instance_is_refused_before_ingest(
    server: DimseServer, ingest: ScriptedIngest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _small_ct()
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.preamble = b"\0" * 128
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)  # keeps the File Meta as set
    # Sent from the file, the command carries the File Meta's UID, the
    # dataset its own: the two disagree.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    status = _store(server.port, path)
    assert status.Status == 0xA900
    assert ingest.calls == []


def test_dataset_over_the_size_limit_is_refused_out_of_resources(
    server: DimseServer, ingest: ScriptedIngest
) -> None:
    status = _store(server.port, make_ct(rows=1024, cols=1024))
    assert status.Status == 0xA700
    assert ingest.calls == []


def _cutting_proxy(target_port: int, after_bytes: int) -> int:
    """A one-connection TCP relay that drops both sides after `after_bytes` upstream."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])

    def relay() -> None:
        client, _ = listener.accept()
        listener.close()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        back = threading.Thread(target=_pump, args=(upstream, client, None), daemon=True)
        back.start()
        _pump(client, upstream, after_bytes)
        for end in (client, upstream):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    threading.Thread(target=relay, daemon=True).start()
    return port


def _pump(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
    relayed = 0
    with contextlib.suppress(OSError):
        while limit is None or relayed < limit:
            chunk = source.recv(65536)
            if not chunk:
                return
            if limit is not None:
                chunk = chunk[: limit - relayed]
            sink.sendall(chunk)
            relayed += len(chunk)


def test_connection_cut_mid_dataset_leaves_no_file(
    server: DimseServer, ingest: ScriptedIngest
) -> None:
    port = _cutting_proxy(server.port, after_bytes=200_000)
    assoc = _associate(port, [build_context(CTImageStorage)])
    assert assoc.is_established
    status = assoc.send_c_store(make_ct(rows=512, cols=512))
    assert "Status" not in status  # no response: the connection is gone
    deadline = time.monotonic() + 5
    while list(server.incoming.glob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(server.incoming.glob("*.dcm")) == []
    assert ingest.calls == []


def test_storescu_sends_200_instances_over_one_association(
    server: DimseServer, ingest: ScriptedIngest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chronicle.dimse")
    study = generate_uid()
    for number in range(200):
        write_part10(_small_ct(study_uid=study, InstanceNumber=number), tmp_path / f"{number}.dcm")
    started = time.perf_counter()
    run = subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "STORESCU",
            "-aec",
            "CHRONICLE",
            "+sd",
            "127.0.0.1",
            str(server.port),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(ingest.calls) == 200
    assert {source.calling_ae for _, source, _ in ingest.calls} == {"STORESCU"}
    # One line per association says what happened, not one per instance.
    summary = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert any("200 C-STORE (200 success)" in line for line in summary), summary
    assert not [
        r for r in caplog.records if r.levelno >= logging.INFO and "C-STORE from" in r.getMessage()
    ]
    print(f"storescu: 200 instances in {elapsed:.2f} s = {200 / elapsed:.0f} instances/s")


def test_real_ingest_keeps_what_storescu_sent(tmp_path: Path) -> None:
    from infra.factory import open_blob_store, open_event_log
    from ingest.service import IngestService
    from schemas import codec

    settings = Settings(
        data_dir=tmp_path / "data", dimse_port=free_port(), remote_aes=["STORESCU@127.0.0.1:1"]
    )
    event_log = open_event_log(settings.log_url)
    blobs = open_blob_store(settings.blob_url)
    real = StandInArchive(settings, IngestService(event_log, blobs))  # type: ignore[arg-type]
    sent = write_part10(_small_ct(), tmp_path / "in" / "one.dcm")
    dimse = start_dimse(real)
    try:
        for _ in range(2):  # the second is a duplicate: kept once, acknowledged twice
            run = subprocess.run(
                [
                    dcmtk("storescu"),
                    "-v",
                    "-aec",
                    "CHRONICLE",
                    "127.0.0.1",
                    str(dimse.port),
                    str(sent),
                ],
                capture_output=True,
                text=True,
                env=tool_env(),
                timeout=60,
            )
            output = run.stdout + run.stderr
            assert run.returncode == 0 and "Received Store Response (Success)" in output, output
        records = event_log.read({}, 10)
        assert len(records) == 2
        stored = codec.decode(records[0].value).payload
        assert stored.source.protocol == "DIMSE" and stored.source.calling_ae == "STORESCU"
        kept = blobs.get(stored.blob.key).read()
        assert kept[stored.blob.dataset_offset :] == dcmread_dataset_bytes(sent)
    finally:
        dimse.stop()
        event_log.close()
        blobs.close()


def dcmread_dataset_bytes(path: Path) -> bytes:
    """What storescu puts on the wire for a file it does not convert: the bytes after the meta."""
    from tests.support import dataset_bytes

    return dataset_bytes(path.read_bytes())


def _raw_pdv(context_id: int, control: int, value: bytes) -> bytes:
    return (
        struct.pack(">BBIIBB", 0x04, 0, len(value) + 6, len(value) + 2, context_id, control) + value
    )


def test_an_abort_mid_dataset_on_a_storage_association_keeps_nothing(
    server: DimseServer, ingest: ScriptedIngest
) -> None:
    assoc = _associate(server.port, [build_context(CTImageStorage)])
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    command = command_set(
        [
            (0x00000002, "UI", CTImageStorage),
            (0x00000100, "US", 0x0001),
            (0x00000110, "US", 1),
            (0x00000700, "US", 0),
            (0x00000800, "US", 0x0000),
            (0x00001000, "UI", generate_uid()),
        ]
    )
    sent = _raw_pdv(context_id, 0x03, command) + _raw_pdv(context_id, 0x00, b"\0" * 4096)
    assoc.dul.socket.send(sent)
    deadline = time.monotonic() + 5
    while not list(server.incoming.glob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(server.incoming.glob("*.dcm")), "the data set was being received"
    assoc.abort()
    deadline = time.monotonic() + 5
    while list(server.incoming.glob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(server.incoming.glob("*.dcm")) == []
    assert ingest.calls == []


def test_echo_and_stores_share_a_storage_association(
    server: DimseServer, ingest: ScriptedIngest
) -> None:
    assoc = _associate(server.port, [build_context(VERIFICATION), build_context(CTImageStorage)])
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        for _ in range(3):
            assert assoc.send_c_store(_small_ct()).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert len(ingest.calls) == 3
