"""The whole archive while its broker or its object store is down, through `chronicle serve`.

One `chronicle serve` on this module's own Tansu broker and SeaweedFS (each
frozen with SIGSTOP in turn: connections stay open, nothing answers, the
hardest case for a client). While one is frozen, storescu's C-STORE is
answered 0xA700 and a STOW-RS 503 with Retry-After, each within the bound the
URL options set; a STOW stream running across the fault loses nothing it was
told was kept; after SIGCONT new stores succeed and everything acknowledged,
before, during and after, is found and retrieved byte for byte.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from pydicom.uid import generate_uid

from infra.kafka_options import parse_kafka_url
from infra.s3_options import parse_s3_url
from tests.chronicle_server import ChronicleServer, StartChronicle
from tests.integration.test_faults_e2e_support import (
    OUT_OF_RESOURCES,
    SUCCESS,
    StowStream,
    assert_kept,
    make_instances,
    start_archive,
    storescu,
    stow,
    wait_for,
)
from tests.seaweed import SeaweedFS, private_seaweed  # noqa: F401  (a fixture)
from tests.tansu import TansuBroker

DELIVERY_TIMEOUT_S = 1.5
#: librdkafka reports a timed-out record up to ~1 s late; the producer's own
#: wait gives up 2 s past delivery.timeout.ms (infra/kafka_producer.py).
REPORT_GRACE_S = 2.0
KAFKA_BOUND_S = DELIVERY_TIMEOUT_S + REPORT_GRACE_S
FAST_S3 = {"connect_timeout": "0.5", "read_timeout": "0.5", "max_attempts": "2"}
#: Parsing, the File Meta and the answer, on top of the adapters' own bounds.
HANDLING_S = 1.0
#: A modality's usual DIMSE timeout (pynetdicom's default; many are 30-60 s).
MODALITY_DIMSE_TIMEOUT_S = 30.0
#: Long enough for every stream to be running when the fault starts (STOW-RS got
#: faster: 50 tiny instances per stream could all be kept before the freeze).
STREAM_LENGTH = 450
STREAMS = 3
T = TypeVar("T")


@pytest.fixture(scope="module")
def broker() -> Iterator[TansuBroker]:
    with TansuBroker() as started:
        yield started


@pytest.fixture(scope="module")
def server(
    broker: TansuBroker,
    private_seaweed: SeaweedFS,  # noqa: F811
    start_chronicle_module: StartChronicle,
) -> ChronicleServer:
    log_url = broker.topic_url(delivery_timeout_ms=int(DELIVERY_TIMEOUT_S * 1000), timeout_ms=1500)
    return start_archive(start_chronicle_module, log_url, private_seaweed.url(**FAST_S3))


def outage_run(
    server: ChronicleServer,
    folder: Path,
    freeze: Callable[[], None],
    thaw: Callable[[], None],
    bound: float,
) -> None:
    """Store before, during and after a freeze; check the statuses, their timing and that
    everything acknowledged is kept; print the seconds to 0xA700 and to 503."""
    studies = [generate_uid() for _ in range(3)]
    before, during, after = (
        make_instances(folder / phase, 6, studies, tag=phase.upper())
        for phase in ("before", "during", "after")
    )
    streamed = make_instances(folder / "stream", STREAM_LENGTH, studies, size=16, tag="STREAM")
    streams = [StowStream(server, streamed[n::STREAMS]) for n in range(STREAMS)]
    assert set(storescu(server, [i.path for i in before[:3]]).values()) == {SUCCESS}
    assert stow(server, before[3:]).status_code == 200
    for stream in streams:
        stream.start()
    wait_for(lambda: all(s.acknowledged() for s in streams), 10, "the STOW streams started")
    freeze()
    running = [stream.is_alive() for stream in streams]
    try:
        with ThreadPoolExecutor(1) as pool:
            c_store = pool.submit(timed, lambda: storescu(server, [during[0].path]))
            stow_seconds, refused = timed(lambda: stow(server, during[1:3]))
            c_store_seconds, statuses = c_store.result()
    finally:
        thaw()
        thawed = time.monotonic()
    assert all(running), "a STOW stream ended before the fault: make STREAM_LENGTH longer"
    assert statuses == {during[0].path: OUT_OF_RESOURCES}
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert c_store_seconds < bound + HANDLING_S, f"0xA700 only after {c_store_seconds:.2f} s"
    assert stow_seconds < bound + HANDLING_S, f"503 only after {stow_seconds:.2f} s"
    for stream in streams:
        resumed = functools.partial(stream.resumed, since=thawed)
        wait_for(resumed, 20, "a STOW stream got through after the fault", interval=0.05)
        stream.halt.set()
    for stream in streams:
        stream.join(timeout=60)
    assert set(storescu(server, [i.path for i in after[:3]]).values()) == {SUCCESS}
    assert stow(server, after[3:]).status_code == 200
    # What was refused may still have landed (a frozen peer may have taken it):
    # it may be kept, once, but nothing acknowledged may be missing.
    kept = [i for s in streams for i in s.acknowledged()]
    refused_all = [*during, *(i for s in streams for i in s.refused())]
    landed = assert_kept(server, [*before, *kept, *after], in_doubt=refused_all)
    print(
        f"\n0xA700 after {c_store_seconds:.2f} s, 503 after {stow_seconds:.2f} s (bound {bound} s);"
        f" STOW streams: {len(kept)} kept, {len(refused_all) - len(during)} refused;"
        f" refused yet kept later: {landed} of {len(refused_all)}"
    )


def timed(call: Callable[[], T]) -> tuple[float, T]:
    began = time.monotonic()
    result = call()
    return time.monotonic() - began, result


def test_default_bounds_are_well_under_a_modality_dimse_timeout() -> None:
    kafka = parse_kafka_url("kafka://broker:9092/chronicle")
    s3 = parse_s3_url("s3://chronicle/archive")
    kafka_bound = kafka.delivery_timeout_ms / 1000 + REPORT_GRACE_S
    assert kafka_bound == 12.0
    assert s3.unavailable_within == 18.0
    assert kafka_bound <= MODALITY_DIMSE_TIMEOUT_S / 2
    assert s3.unavailable_within < MODALITY_DIMSE_TIMEOUT_S


def test_broker_frozen_c_store_0xa700_stow_503_in_bounded_time_then_resumes(
    server: ChronicleServer, broker: TansuBroker, tmp_path: Path
) -> None:
    outage_run(server, tmp_path, broker.pause, broker.resume, KAFKA_BOUND_S)


def test_s3_frozen_c_store_0xa700_stow_503_in_bounded_time_then_resumes(
    server: ChronicleServer,
    private_seaweed: SeaweedFS,  # noqa: F811
    tmp_path: Path,
) -> None:
    bound = parse_s3_url(private_seaweed.url(**FAST_S3)).unavailable_within
    assert bound == 5.0
    outage_run(server, tmp_path, private_seaweed.pause, private_seaweed.resume, bound)
