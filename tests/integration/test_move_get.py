"""C-MOVE and C-GET against a real `chronicle serve`, with pynetdicom peers we control.

One server per module holds one patient: study A (three CT in Explicit VR LE,
one MR in JPEG-LS lossless, one Secondary Capture in RLE) and study B (one
CT). Each Move Destination is a pynetdicom Storage SCP in this process with
one behaviour (accepts everything, uncompressed only, Implicit only, refuses
Secondary Capture, refuses every instance, slow), configured on the server as
a remote AE. Received datasets are recorded as the bytes on the wire.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, build_context, build_role, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from api.dimse.ae import accepted_transfer_syntaxes
from api.dimse.retrieve import (
    EXPLICIT,
    IMPLICIT,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from tests.chronicle_server import ChronicleServer, StartChronicle
from tests.integration.dimse_harness import extended
from tests.support import dataset_bytes, free_port, make_ct, pydicom_file

CALLING = "HARNESS"
CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
PATIENT_ID = "RETRIEVE-1"
DICOM_AS_STORED = "application/dicom; transfer-syntax=*"


@dataclass(frozen=True)
class Received:
    transfer_syntax: str
    sop_instance_uid: str
    originator_ae: str | None
    originator_id: int | None
    dataset: bytes


@dataclass
class Destination:
    """A pynetdicom Storage SCP with one behaviour, recording what it receives."""

    title: str
    port: int
    syntaxes: list[str]
    refuse_classes: frozenset[str] = frozenset()
    status: int = 0x0000
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)

    def handle(self, event: Any) -> int:
        time.sleep(self.delay)
        request = event.request
        self.received.append(
            Received(
                str(event.context.transfer_syntax),
                str(request.AffectedSOPInstanceUID),
                request.MoveOriginatorApplicationEntityTitle,
                request.MoveOriginatorMessageID,
                _encoded(event),
            )
        )
        return self.status


def _encoded(event: Any) -> bytes:
    """The dataset bytes as received, whether pynetdicom kept them in memory or,
    with STORE_RECV_CHUNKED_DATASET (set by any in-process DIMSE server of this
    test worker), wrote them to a file."""
    try:
        path = event.dataset_path
    except AttributeError:
        path = None
    if path:
        return dataset_bytes(Path(path).read_bytes())
    return bytes(event.encoded_dataset(include_meta=False))


DESTINATIONS = {
    "FULL": {"syntaxes": accepted_transfer_syntaxes()},
    "PLAIN": {"syntaxes": [EXPLICIT, IMPLICIT]},
    "IMPLICIT": {"syntaxes": [IMPLICIT]},
    "NOSC": {"syntaxes": accepted_transfer_syntaxes(), "refuse_classes": frozenset({SC})},
    "REFUSE": {"syntaxes": accepted_transfer_syntaxes(), "status": 0xA700},
    "SLOW": {"syntaxes": accepted_transfer_syntaxes(), "delay": 0.3},
}


@dataclass
class Stored:
    server: ChronicleServer
    destinations: dict[str, Destination]
    study_a: str
    study_b: str
    ct_series: str
    ct: list[str]
    mr: str
    sc: str
    b_ct: str
    sources: dict[str, Dataset]

    @property
    def study_a_instances(self) -> set[str]:
        return {*self.ct, self.mr, self.sc}


def _start_destinations() -> tuple[dict[str, Destination], list[Any]]:
    destinations: dict[str, Destination] = {}
    servers = []
    for title, spec in DESTINATIONS.items():
        dest = Destination(title, free_port(), **spec)  # type: ignore[arg-type]
        ae = AE(ae_title=title)
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            if str(cx.abstract_syntax) not in dest.refuse_classes:
                ae.add_supported_context(cx.abstract_syntax, dest.syntaxes)
        servers.append(
            ae.start_server(
                ("127.0.0.1", dest.port), block=False, evt_handlers=[(evt.EVT_C_STORE, dest.handle)]
            )
        )
        destinations[title] = dest
    return destinations, servers


def _compressed(name: str, study: str, series: str) -> Dataset:
    ds = dcmread(pydicom_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName = PATIENT_ID, "Retrieve^Test"
    return ds


def _c_store(port: int, datasets: list[Dataset]) -> None:
    ae = AE(ae_title=CALLING)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CHRONICLE")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def stored(start_chronicle_module: StartChronicle) -> Iterator[Stored]:
    destinations, servers = _start_destinations()
    remotes = [f"{CALLING}@127.0.0.1:{free_port()}"]
    remotes += [f"{d.title}@127.0.0.1:{d.port}" for d in destinations.values()]
    remotes.append(f"DOWN@127.0.0.1:{free_port()}")  # configured, never listening
    server = start_chronicle_module(remote_aes=remotes)
    study_a, study_b, ct_series = generate_uid(), generate_uid(), generate_uid()
    cts = [
        make_ct(study_a, ct_series, rows=32, cols=32, patient_id=PATIENT_ID, InstanceNumber=n)
        for n in range(1, 4)
    ]
    mr = _compressed("MR_small_jpeg_ls_lossless.dcm", study_a, generate_uid())
    sc = _compressed("SC_rgb_rle.dcm", study_a, generate_uid())
    b_ct = make_ct(study_b, rows=32, cols=32, patient_id=PATIENT_ID)
    datasets = [*cts, mr, sc, b_ct]
    _c_store(server.dimse_port, datasets)
    yield Stored(
        server,
        destinations,
        study_a,
        study_b,
        ct_series,
        [str(ds.SOPInstanceUID) for ds in cts],
        str(mr.SOPInstanceUID),
        str(sc.SOPInstanceUID),
        str(b_ct.SOPInstanceUID),
        {str(ds.SOPInstanceUID): ds for ds in datasets},
    )
    for scp in servers:
        scp.shutdown()


@pytest.fixture
def dest(stored: Stored) -> Callable[[str], Destination]:
    for destination in stored.destinations.values():
        destination.received.clear()
    return lambda title: stored.destinations[title]


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _associate(port: int, contexts: list[Any], **kwargs: Any) -> Any:
    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, contexts, ae_title="CHRONICLE", **kwargs)
    assert assoc.is_established
    return assoc


def c_move(
    stored: Stored,
    identifier: Dataset,
    destination: str,
    *,
    model: str = STUDY_ROOT_MOVE,
    relational: bool = False,
    msg_id: int = 1,
) -> list[tuple[Dataset, Dataset | None]]:
    negotiation = [extended(model, b"\x01")] if relational else None
    assoc = _associate(stored.server.dimse_port, [build_context(model)], ext_neg=negotiation)
    try:
        return list(assoc.send_c_move(identifier, destination, model, msg_id=msg_id))
    finally:
        assoc.release()


def _stored_blob(stored: Stored, sop_uid: str) -> bytes:
    ds = stored.sources[sop_uid]
    url = (
        f"{stored.server.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/"
        f"{ds.SeriesInstanceUID}/instances/{sop_uid}"
    )
    response = httpx.get(url, headers={"Accept": DICOM_AS_STORED}, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def _final(responses: list[tuple[Dataset, Dataset | None]]) -> tuple[Dataset, Dataset | None]:
    assert responses, "no C-MOVE/C-GET response"
    return responses[-1]


def _uids(identifier: Dataset) -> list[str]:
    value = identifier.FailedSOPInstanceUIDList
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _pixels_match_source(stored: Stored, received: Received) -> bool:
    meta = Dataset()
    meta.TransferSyntaxUID = received.transfer_syntax
    got = dcmread(BytesIO(received.dataset), force=True)
    got.file_meta = meta  # type: ignore[assignment]
    source = stored.sources[received.sop_instance_uid]
    return bool(np.array_equal(got.pixel_array, source.pixel_array))


# -- C-MOVE ----------------------------------------------------------------------


def test_study_move_sends_every_instance_as_stored_over_one_association(
    stored: Stored, dest: Callable[[str], Destination]
) -> None:
    responses = c_move(
        stored, _identifier("STUDY", StudyInstanceUID=stored.study_a), "FULL", msg_id=7
    )

    status, identifier = _final(responses)
    assert status.Status == 0x0000 and identifier is None
    assert status.NumberOfCompletedSuboperations == 5
    assert status.NumberOfFailedSuboperations == 0
    pending = [s for s, _ in responses[:-1]]
    assert [s.Status for s in pending] == [0xFF00] * 5
    assert [s.NumberOfRemainingSuboperations for s in pending] == [4, 3, 2, 1, 0]
    assert [s.NumberOfCompletedSuboperations for s in pending] == [1, 2, 3, 4, 5]
    received = dest("FULL").received
    assert {r.sop_instance_uid for r in received} == stored.study_a_instances
    for item in received:
        assert item.originator_ae == CALLING and item.originator_id == 7
        assert item.dataset == dataset_bytes(_stored_blob(stored, item.sop_instance_uid))
    syntaxes = {r.sop_instance_uid: r.transfer_syntax for r in received}
    assert syntaxes[stored.mr] == JPEG_LS and syntaxes[stored.sc] == RLE


def test_each_level_moves_what_its_unique_keys_name(
    stored: Stored, dest: Callable[[str], Destination]
) -> None:
    cases = [
        (PATIENT_ROOT_MOVE, _identifier("PATIENT", PatientID=PATIENT_ID)),
        (STUDY_ROOT_MOVE, _identifier("STUDY", StudyInstanceUID=[stored.study_a, stored.study_b])),
        (
            STUDY_ROOT_MOVE,
            _identifier(
                "SERIES", StudyInstanceUID=stored.study_a, SeriesInstanceUID=stored.ct_series
            ),
        ),
        (
            PATIENT_ROOT_MOVE,
            _identifier(
                "IMAGE",
                PatientID=PATIENT_ID,
                StudyInstanceUID=stored.study_a,
                SeriesInstanceUID=stored.ct_series,
                SOPInstanceUID=stored.ct[:2],
            ),
        ),
    ]
    expected = [
        {*stored.study_a_instances, stored.b_ct},
        {*stored.study_a_instances, stored.b_ct},
        set(stored.ct),
        set(stored.ct[:2]),
    ]
    for (model, identifier), wanted in zip(cases, expected, strict=True):
        dest("FULL").received.clear()
        status, _ = _final(c_move(stored, identifier, "FULL", model=model))
        assert status.Status == 0x0000, identifier
        assert {r.sop_instance_uid for r in dest("FULL").received} == wanted, identifier


def test_relational_retrieve_needs_no_keys_above_the_level(
    stored: Stored, dest: Callable[[str], Destination]
) -> None:
    identifier = _identifier("IMAGE", SOPInstanceUID=stored.mr)

    refused, _ = _final(c_move(stored, identifier, "FULL"))
    moved, _ = _final(c_move(stored, identifier, "FULL", relational=True))

    assert refused.Status == 0xA900
    assert moved.Status == 0x0000 and moved.NumberOfCompletedSuboperations == 1
    assert [r.sop_instance_uid for r in dest("FULL").received] == [stored.mr]


def test_unknown_destination_is_refused(stored: Stored) -> None:
    identifier = _identifier("STUDY", StudyInstanceUID=stored.study_a)

    status, _ = _final(c_move(stored, identifier, "NOWHERE"))

    assert status.Status == 0xA801


def test_an_unreachable_destination_fails_every_sub_operation(stored: Stored) -> None:
    identifier = _identifier("STUDY", StudyInstanceUID=stored.study_a)

    status, failed = _final(c_move(stored, identifier, "DOWN"))

    assert status.Status == 0xA702 and "DOWN" in status.ErrorComment
    assert status.NumberOfFailedSuboperations == 5
    assert failed is not None and set(_uids(failed)) == stored.study_a_instances


def test_nothing_matched_is_a_success_with_no_sub_operations(stored: Stored) -> None:
    status, _ = _final(c_move(stored, _identifier("STUDY", StudyInstanceUID="1.2.3.4"), "FULL"))

    assert status.Status == 0x0000 and status.NumberOfCompletedSuboperations == 0


@pytest.mark.parametrize(("title", "syntax"), [("PLAIN", EXPLICIT), ("IMPLICIT", IMPLICIT)])
def test_uncompressed_only_destination_gets_decoded_pixel_exact_instances(
    stored: Stored, dest: Callable[[str], Destination], title: str, syntax: str
) -> None:
    status, _ = _final(c_move(stored, _identifier("STUDY", StudyInstanceUID=stored.study_a), title))

    assert status.Status == 0x0000
    received = {r.sop_instance_uid: r for r in dest(title).received}
    assert set(received) == stored.study_a_instances
    assert {r.transfer_syntax for r in received.values()} == {syntax}
    for uid in (stored.mr, stored.sc, stored.ct[0]):
        assert _pixels_match_source(stored, received[uid]), uid


def test_a_refused_sop_class_fails_alone(
    stored: Stored, dest: Callable[[str], Destination]
) -> None:
    status, identifier = _final(
        c_move(stored, _identifier("STUDY", StudyInstanceUID=stored.study_a), "NOSC")
    )

    assert status.Status == 0xB000
    assert status.NumberOfCompletedSuboperations == 4
    assert status.NumberOfFailedSuboperations == 1
    assert identifier is not None and _uids(identifier) == [stored.sc]
    assert {r.sop_instance_uid for r in dest("NOSC").received} == {*stored.ct, stored.mr}


def test_every_sub_operation_failing_is_a702(stored: Stored) -> None:
    status, identifier = _final(
        c_move(stored, _identifier("STUDY", StudyInstanceUID=stored.study_a), "REFUSE")
    )

    assert status.Status == 0xA702
    assert status.NumberOfFailedSuboperations == 5
    assert identifier is not None
    assert set(_uids(identifier)) == stored.study_a_instances


def test_c_cancel_stops_the_move(stored: Stored, dest: Callable[[str], Destination]) -> None:
    assoc = _associate(stored.server.dimse_port, [build_context(STUDY_ROOT_MOVE)])
    context_id = assoc.accepted_contexts[0].context_id
    identifier = _identifier("STUDY", StudyInstanceUID=stored.study_a)
    responses = []
    try:
        for status, found in assoc.send_c_move(identifier, "SLOW", STUDY_ROOT_MOVE, msg_id=3):
            responses.append((status, found))
            if status.Status == 0xFF00 and len(responses) == 1:
                assoc.send_c_cancel(3, context_id)
    finally:
        assoc.release()

    status, _ = _final(responses)
    assert status.Status == 0xFE00
    assert status.NumberOfRemainingSuboperations > 0
    assert len(dest("SLOW").received) < 5


# -- C-GET -----------------------------------------------------------------------


@dataclass
class GetPeer:
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event: Any) -> int:
        request = event.request
        with self.lock:
            self.received.append(
                Received(
                    str(event.context.transfer_syntax),
                    str(request.AffectedSOPInstanceUID),
                    None,
                    None,
                    _encoded(event),
                )
            )
        return 0x0000


def c_get(
    stored: Stored, identifier: Dataset, syntaxes: list[list[str]], model: str = STUDY_ROOT_GET
) -> tuple[list[tuple[Dataset, Dataset | None]], GetPeer]:
    """C-GET proposing, per storage class of the study, one context per syntax list."""
    peer = GetPeer()
    contexts = [build_context(model)]
    classes = [CT, SC, "1.2.840.10008.5.1.4.1.1.4"]
    for sop_class in classes:
        contexts += [build_context(sop_class, ts) for ts in syntaxes]
    roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
    assoc = _associate(
        stored.server.dimse_port,
        contexts,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, peer.handle)],
    )
    try:
        return list(assoc.send_c_get(identifier, model)), peer
    finally:
        assoc.release()


def test_get_returns_the_instances_as_stored_on_the_same_association(stored: Stored) -> None:
    identifier = _identifier("STUDY", StudyInstanceUID=stored.study_a)

    responses, peer = c_get(stored, identifier, [[EXPLICIT, IMPLICIT], [JPEG_LS], [RLE]])

    status, _ = _final(responses)
    assert status.Status == 0x0000 and status.NumberOfCompletedSuboperations == 5
    assert {r.sop_instance_uid for r in peer.received} == stored.study_a_instances
    for item in peer.received:
        assert item.dataset == dataset_bytes(_stored_blob(stored, item.sop_instance_uid))


def test_get_with_uncompressed_contexts_only_decodes(stored: Stored) -> None:
    identifier = _identifier("SERIES", StudyInstanceUID=stored.study_a, SeriesInstanceUID="")
    identifier = _identifier("IMAGE", SOPInstanceUID=[stored.mr, stored.sc])
    model = PATIENT_ROOT_GET

    responses, peer = c_get(stored, identifier, [[JPEG_LS, EXPLICIT, IMPLICIT]], model=model)
    refused, _ = _final(responses)
    assert refused.Status == 0xA900  # hierarchical: the patient, study and series keys

    identifier.PatientID, identifier.StudyInstanceUID = PATIENT_ID, stored.study_a
    identifier.SeriesInstanceUID = stored.sources[stored.mr].SeriesInstanceUID
    identifier.SOPInstanceUID = stored.mr
    responses, peer = c_get(stored, identifier, [[JPEG_LS, EXPLICIT, IMPLICIT]], model=model)

    status, _ = _final(responses)
    assert status.Status == 0x0000 and status.NumberOfCompletedSuboperations == 1
    # One context offering [JPEG-LS, Explicit, Implicit]: we are the sender, so
    # Chronicle picks Explicit VR LE, which every decodable instance fits.
    [item] = peer.received
    assert item.transfer_syntax == EXPLICIT
    assert _pixels_match_source(stored, item)


def test_get_fails_only_the_instances_without_a_context(stored: Stored) -> None:
    peer = GetPeer()
    contexts = [build_context(STUDY_ROOT_GET), build_context(CT, [EXPLICIT])]
    assoc = _associate(
        stored.server.dimse_port,
        contexts,
        ext_neg=[build_role(CT, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, peer.handle)],
    )
    try:
        responses = list(
            assoc.send_c_get(_identifier("STUDY", StudyInstanceUID=stored.study_a), STUDY_ROOT_GET)
        )
        released = assoc.is_established
    finally:
        assoc.release()

    status, identifier = _final(responses)
    assert released
    assert status.Status == 0xB000
    assert status.NumberOfCompletedSuboperations == 3 and status.NumberOfFailedSuboperations == 2
    assert identifier is not None and set(_uids(identifier)) == {stored.mr, stored.sc}
    assert {r.sop_instance_uid for r in peer.received} == set(stored.ct)
