"""Study-search keys for the scale suite, and the clients that time them.

Chronicle's embedded index keeps the answer to a query until its next write
(infra/read_cache.py), so a benchmark repeating one query measures the
cache. Every kind therefore comes in two forms: `repeated` (the same keys
each time: a worklist refreshing) and `distinct` (fresh keys each request:
another name prefix, accession, date window, so no request can be answered
from an earlier one). The distinct figures are the ones held to the targets.
The same seed gives both archives the same sequence of keys.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import math
import random
import statistics
import string
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from bench.query import COMMON, MODALITIES, c_find_timer
from bench.scale_corpus import DAYS, GIVEN_NAMES, Shape, accession, study_date

KINDS = ("PatientName wildcard", "StudyDate range", "ModalitiesInStudy", "AccessionNumber exact")
Keys = dict[str, str]
#: Runs one study search with these keys; returns the number of matches.
Search = Callable[[Keys], int]
Opener = Callable[[], tuple[Search, Callable[[], None]]]


class QueryKeys:
    """Keys per request over one corpus; `distinct` never hands out the same keys twice."""

    def __init__(self, shape: Shape, seed: int = 11) -> None:
        self._shape = shape
        self._rng = random.Random(seed)
        self._used: set[tuple[tuple[str, str], ...]] = set()
        self._accessions = list(range(shape.studies))
        self._rng.shuffle(self._accessions)

    def repeated(self, kind: str) -> Keys:
        return {
            "PatientName wildcard": {"PatientName": "SMITH*"},
            "StudyDate range": {"StudyDate": "20220301-20220331"},
            "ModalitiesInStudy": {"ModalitiesInStudy": "MR", "StudyDate": "20210101-20211231"},
            "AccessionNumber exact": {"AccessionNumber": accession(self._shape.studies // 2)},
        }[kind]

    def distinct(self, kind: str) -> Keys:
        for _ in range(100_000):
            keys = self._draw(kind)
            signature = tuple(sorted(keys.items()))
            if signature not in self._used:
                self._used.add(signature)
                return keys
        raise RuntimeError(f"no fresh keys left for {kind}")

    def _draw(self, kind: str) -> Keys:
        rng = self._rng
        if kind == "PatientName wildcard":
            return {"PatientName": self._name_prefix()}
        # Windows of varying length as well as start: a 10-minute soak alone asks
        # 3,000 of each kind, more than there are days in five years.
        if kind == "StudyDate range":
            days = rng.randint(21, 42)  # about a month
            start = rng.randrange(DAYS - days)
            return {"StudyDate": f"{study_date(start)}-{study_date(start + days)}"}
        if kind == "ModalitiesInStudy":
            days = rng.randint(300, 430)  # about a year
            start = rng.randrange(DAYS - days)
            window = f"{study_date(start)}-{study_date(start + days)}"
            return {"ModalitiesInStudy": rng.choice(MODALITIES), "StudyDate": window}
        # Existing accessions first; past them (small corpora), numbers no study has:
        # the same index lookup, answered with no match.
        if self._accessions:
            return {"AccessionNumber": accession(self._accessions.pop())}
        return {"AccessionNumber": accession(self._shape.studies + rng.randrange(10**7))}

    def _name_prefix(self) -> str:
        """Half common names (hundreds of studies at 1M), half rare two- or three-letter stems."""
        rng = self._rng
        if rng.random() < 0.5:
            name = rng.choice(COMMON)
            stem = name[: rng.randint(3, len(name))]
            if rng.random() < 0.7:
                return f"{name}^{rng.choice(GIVEN_NAMES)[: rng.randint(1, 2)]}*"
            return f"{stem}*"
        letters = string.ascii_uppercase
        return "".join(rng.choice(letters) for _ in range(rng.randint(2, 3))) + "*"


def could_match(
    date: str, modality: str, patient_name: str, accession: str
) -> Callable[[Keys], bool]:
    """Whether a study search's keys could match a study with these date,
    modality, name and accession: during the soak such a search must wait for the
    projector, as read-your-writes requires (the studies it stores change its
    answer), so its latency is reported apart as well."""
    name = patient_name.upper()

    def check(keys: Keys) -> bool:
        window = keys.get("StudyDate")
        if window:
            low, _, high = window.partition("-") if "-" in window else (window, "", window)
            if not (low or "00000000") <= date <= (high or "99999999"):
                return False
        if keys.get("ModalitiesInStudy", modality) != modality:
            return False
        if keys.get("AccessionNumber", accession) != accession:
            return False
        pattern = keys.get("PatientName")
        return pattern is None or fnmatch.fnmatchcase(name, pattern.upper())

    return check


#: Once in every study of a study search's DICOM JSON answer (any spacing).
STUDY_UID_KEY = b'"0020000D"'


def qido_opener(dicomweb_base: str) -> Opener:
    """One HTTP connection per client; anything but 200/204 stops the benchmark.

    A request is timed to the last byte of its answer. Its matches are counted
    in the bytes (the Study Instance UID's key): parsing each answer, as this
    client did until 2026-11-23, cost ~2-3 ms of CPU for a 400-study answer in
    the process every client's timer shares (one interpreter lock), so it
    slowed the other clients' requests too. A client's first answer (untimed)
    is parsed in full, and its count held to the parsed one."""

    def open_client() -> tuple[Search, Callable[[], None]]:
        client = httpx.Client(timeout=120)
        checked = [False]

        def search(keys: Keys) -> int:
            params = {**keys, "limit": "1000"}
            response = client.get(f"{dicomweb_base}/studies", params=params)
            if response.status_code == 204:
                return 0
            if response.status_code != 200:
                raise RuntimeError(f"QIDO-RS {params}: {response.status_code} {response.text}")
            found = response.content.count(STUDY_UID_KEY)
            if not checked[0]:
                parsed = len(orjson.loads(response.content))
                if parsed != found:
                    raise RuntimeError(f"QIDO-RS {params}: {parsed} studies, {found} UID keys")
                checked[0] = True
            return found

        return search, client.close

    return open_client


def c_find_opener(port: int, ae_title: str) -> Opener:
    """One association per client (bench/query.py's tuned pynetdicom SCU).

    A peer may drop an association between requests (Orthanc did, now and
    then, under 8 clients): the client associates again and repeats the
    request, and the repeat's time (association included) is the one counted.
    """

    def open_client() -> tuple[Search, Callable[[], None]]:
        current = [c_find_timer(port, ae_title)]

        def search(keys: Keys) -> int:
            find, _ = current[0]
            try:
                return find(keys)
            except RuntimeError as exc:  # pynetdicom: "association ... must be established"
                print(f"  C-FIND to {ae_title}: {exc}; associating again", flush=True)
                current[0] = c_find_timer(port, ae_title)
                return current[0][0](keys)

        return search, lambda: current[0][1]()

    return open_client


def percentiles(millis: list[float]) -> dict[str, float]:
    """p50 (median) and p99 by nearest rank: with fewer than 100 samples p99 is the maximum."""
    ordered = sorted(millis)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)],
        "n": len(ordered),
    }


def quiet_collector() -> None:
    """Young collections every 50,000 allocations instead of 700 in the clients'
    process: the benchmark's clients share the machine with the archive they
    measure, and with Python's defaults parsing a large answer cost them as much
    CPU as the server spent making it. Either archive's answers are parsed the
    same way."""
    gc.set_threshold(50_000, 20, 10)


def run_clients(open_client: Opener, plans: list[list[Keys]]) -> dict[str, Any]:
    """One thread per plan, each on its own connection, all started together.

    Each client first sends one untimed request (connection set-up, first
    touch); latency in ms per request, matches averaged over the timed ones.
    """
    millis: list[float] = []
    matches: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    ready = threading.Barrier(len(plans) + 1)

    def client(plan: list[Keys]) -> None:
        search, close = open_client()
        try:
            search(plan[0])
            ready.wait()
            for keys in plan[1:]:
                started = time.perf_counter()
                found = search(keys)
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    millis.append(elapsed)
                    matches.append(found)
        except BaseException as exc:  # reported in the caller's thread
            errors.append(exc)
            ready.abort()
        finally:
            close()

    threads = [threading.Thread(target=client, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()  # a failed client aborts it; its error is raised below
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a benchmark client failed: {errors[0]!r}") from errors[0]
    return {
        **percentiles(millis),
        "per_s": len(millis) / wall,
        "matches_mean": statistics.fmean(matches),
    }


def plans(keys: QueryKeys, kind: str, mode: str, clients: int, per_client: int) -> list[list[Keys]]:
    """Every client's keys, drawn before the clock starts (one warm-up each)."""
    draw = keys.distinct if mode == "distinct" else keys.repeated
    return [[draw(kind) for _ in range(per_client + 1)] for _ in range(clients)]


def measure_searches(
    open_client: Opener, keys: QueryKeys, clients: tuple[int, ...], requests: int
) -> dict[str, Any]:
    """{kind: {mode: {clients: figures}}}; `requests` timed per measurement."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        out[kind] = {}
        for mode in ("distinct", "repeated"):
            out[kind][mode] = {
                str(n): run_clients(open_client, plans(keys, kind, mode, n, -(-requests // n)))
                for n in clients
            }
    return out
