"""The soak: C-STORE at half the measured maximum plus 20 QIDO-RS searches a second.

On a running Chronicle (the largest index of the run):
1. isolated ingest: four pynetdicom associations send CT 256x256 instances
   (~130 KB, a fresh SOP Instance UID each) as fast as they can, from a
   process of their own: the maximum;
2. isolated QIDO: 20 distinct study searches a second, nothing else;
3. the soak: both at once for `seconds`, C-STORE paced at half the maximum
   over the four associations (the senders at a lower CPU priority:
   SENDER_NICENESS), while the resident memory of every Chronicle
   process (the server and its children) is sampled with psutil.
Reported: QIDO p50/p99 against the isolated run, the ingest rate reached
against its target, resident memory (max, and its trend as a least-squares
slope in MiB/min over the whole run and over its last two thirds, after
warm-up).
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import psutil
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from api.dimse.tuning import tune_pynetdicom
from bench.peers import CALLING_AE
from bench.scale_queries import KINDS, Keys, Opener, QueryKeys, Search, could_match, percentiles
from tests.support import make_ct

ASSOCIATIONS = 4
#: The soak's senders run at this CPU niceness: they stand for modalities on
#: other machines, and on this one 2-core machine they took ~0.35 of a core
#: beside the archive's ~0.55, their threads waiting ~0.8 s per second for a
#: core and the archive's ~0.6 (run-queue time, /proc/*/schedstat). The
#: maximum they are paced against is measured without it.
SENDER_NICENESS = 10
QIDO_PER_S = 20
QIDO_THREADS = 8
PER_SERIES = 100


def resident_bytes(pid: int) -> int:
    """RSS summed over a process and all its descendants (workers, helpers)."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class Instances:
    """CT 256x256 datasets from one template, each with fresh UIDs; thread-safe."""

    def __init__(self) -> None:
        self._template = make_ct(rows=256, cols=256, patient_name="Soak^Bench", patient_id="SOAK")
        self._lock = threading.Lock()
        self._count = 0
        self._study = self._series = ""

    def could_match(self) -> Callable[[Keys], bool]:
        """Whether a search's keys could match one of these studies."""
        t = self._template
        return could_match(
            str(t.StudyDate), str(t.Modality), str(t.PatientName), str(t.AccessionNumber)
        )

    def next(self) -> Dataset:
        with self._lock:
            if self._count % PER_SERIES == 0:
                if self._count % (2 * PER_SERIES) == 0:
                    self._study = generate_uid()
                self._series = generate_uid()
            self._count += 1
            number = self._count
            study, series = self._study, self._series
        # Dataset.copy() is shallow (the elements are shared between threads);
        # a deep copy shares only the immutable pixel bytes.
        ds = copy.deepcopy(self._template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = (number - 1) % PER_SERIES + 1
        return ds


def _associate(port: int, ae_title: str) -> Association:
    tune_pynetdicom()
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise RuntimeError(f"C-STORE association to {ae_title} refused")
    return assoc


def store(
    port: int, ae_title: str, source: Instances, count: int, rate: float | None
) -> tuple[int, int]:
    """Send `count` instances over one association, paced at `rate`/s when given.

    (stored, failed): a failure (a refusal, or no response at all) is counted,
    not fatal, and a lost association is opened again.
    """
    assoc = _associate(port, ae_title)
    started = time.perf_counter()
    failed = 0
    try:
        for sent in range(count):
            if rate:
                delay = started + sent / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if not assoc.is_established:
                assoc = _associate(port, ae_title)
            status = assoc.send_c_store(source.next())
            if not status or status.Status != 0x0000:
                failed += 1
    finally:
        if assoc.is_established:
            assoc.release()
    return count - failed, failed


def ingest(
    port: int, ae_title: str, source: Instances, count: int, rate: float | None
) -> tuple[float, int]:
    """`count` instances over ASSOCIATIONS associations (each at rate/4): (stored/s, failed)."""
    share = count // ASSOCIATIONS
    per_assoc = rate / ASSOCIATIONS if rate else None
    started = time.perf_counter()
    with ThreadPoolExecutor(ASSOCIATIONS) as pool:
        jobs = [
            pool.submit(store, port, ae_title, source, share, per_assoc)
            for _ in range(ASSOCIATIONS)
        ]
        outcomes = [job.result() for job in jobs]
    stored = sum(ok for ok, _ in outcomes)
    return stored / (time.perf_counter() - started), sum(bad for _, bad in outcomes)


def ingest_apart(
    port: int, ae_title: str, count: int, rate: float | None, niceness: int = 0
) -> tuple[float, int]:
    """`ingest` in a process of its own, as a modality is: in the benchmark's
    process its pynetdicom threads held the interpreter lock the QIDO
    clients' timers wait for (until 2026-11-23 they shared it)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_ingest_fresh, port, ae_title, count, rate, niceness).result()


def _ingest_fresh(
    port: int, ae_title: str, count: int, rate: float | None, niceness: int
) -> tuple[float, int]:
    if niceness:
        os.nice(niceness)
    return ingest(port, ae_title, Instances(), count, rate)


def paced_queries(
    open_client: Opener,
    keys: QueryKeys,
    seconds: float,
    stored: Callable[[Keys], bool] | None = None,
) -> dict[str, Any]:
    """QIDO_PER_S distinct study searches a second (kinds in turn), open loop.
    With `stored` (whether a search could match a study being stored), the
    searches it cannot match are also reported apart, under "apart"."""
    local = threading.local()
    # Each thread's client is opened and sent one search (untimed) beforehand:
    # its connection, and its first answer parsed in full (scale_queries).
    opened = [open_client() for _ in range(QIDO_THREADS)]
    for n, (first, _) in enumerate(opened):
        first(keys.distinct(KINDS[n % len(KINDS)]))
    idle: list[Search] = [found for found, _ in opened]
    lock = threading.Lock()

    def search(query: dict[str, str]) -> float:
        if not hasattr(local, "search"):
            with lock:
                local.search = idle.pop()
        begun = time.perf_counter()
        local.search(query)
        return (time.perf_counter() - begun) * 1000

    total = int(seconds * QIDO_PER_S)
    queries = [keys.distinct(KINDS[n % len(KINDS)]) for n in range(total)]
    jobs: list[Future[float]] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(QIDO_THREADS) as pool:
        for n, query in enumerate(queries):
            delay = started + n / QIDO_PER_S - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            jobs.append(pool.submit(search, query))
        millis = [job.result() for job in jobs]
    for _, close in opened:
        close()
    figures = percentiles(millis)
    if stored is not None:
        apart = [ms for query, ms in zip(queries, millis, strict=True) if not stored(query)]
        figures["apart"] = percentiles(apart) if apart else {}
    return figures


def _slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 3:
        return 0.0
    times = [t / 60 for t, _ in samples]
    mib = [rss / 2**20 for _, rss in samples]
    return float(statistics.linear_regression(times, mib).slope)


def sample_memory(pid: int, stop: threading.Event, every: float) -> list[tuple[float, int]]:
    samples: list[tuple[float, int]] = []
    started = time.perf_counter()
    while True:
        samples.append((time.perf_counter() - started, resident_bytes(pid)))
        if stop.wait(every):
            return samples


def memory_figures(samples: list[tuple[float, int]]) -> dict[str, Any]:
    tail = samples[len(samples) // 3 :]
    return {
        "samples": [[round(t, 1), rss] for t, rss in samples],
        "max_mib": max(rss for _, rss in samples) / 2**20,
        "first_mib": samples[0][1] / 2**20,
        "last_mib": samples[-1][1] / 2**20,
        "slope_mib_per_min": _slope_mib_per_min(samples),
        "slope_tail_mib_per_min": _slope_mib_per_min(tail),
    }


def soak(
    pid: int,
    dimse: tuple[int, str],
    open_client: Opener,
    keys: QueryKeys,
    *,
    seconds: float,
    isolated_seconds: float,
    max_count: int,
) -> dict[str, Any]:
    port, ae_title = dimse
    source = Instances()
    print(f"  soak: isolated C-STORE, {max_count} instances over {ASSOCIATIONS} associations")
    maximum, failed_alone = ingest_apart(port, ae_title, max_count, None)
    print(f"  soak: maximum {maximum:.1f} instances/s; isolated QIDO {isolated_seconds:.0f} s")
    isolated = paced_queries(open_client, keys, isolated_seconds)
    target_rate = maximum / 2
    count = int(target_rate * seconds) // ASSOCIATIONS * ASSOCIATIONS
    print(f"  soak: {seconds:.0f} s at {target_rate:.1f} C-STORE/s + {QIDO_PER_S} QIDO/s")
    stop = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        memory = pool.submit(sample_memory, pid, stop, max(1.0, seconds / 120))
        try:
            ingesting = pool.submit(
                ingest_apart, port, ae_title, count, target_rate, SENDER_NICENESS
            )
            during = paced_queries(open_client, keys, seconds, source.could_match())
            reached, failed = ingesting.result()
        finally:
            stop.set()
        samples = memory.result()
    return {
        "seconds": seconds,
        "isolated_ingest_per_s": maximum,
        "target_ingest_per_s": target_rate,
        "ingest_per_s": reached,
        "sent": count,
        "sender_niceness": SENDER_NICENESS,
        "failed": failed,
        "isolated_failed": failed_alone,
        "isolated_qido": isolated,
        "qido": during,
        "qido_p99_ratio": during["p99"] / isolated["p99"],
        "memory": memory_figures(samples),
    }
