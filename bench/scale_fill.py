"""Filling the two indexes with the scale corpus, size after size.

Chronicle: InstanceStored events appended to its SQLite log (what the log
makes possible: no blobs, no parsing), then `chronicle replay`, the real
command, timed as a subprocess (process start and the table swap included).
Orthanc: the same instances as small Part-10 files POSTed to its REST API
over parallel connections, within a time budget.
"""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.query import part10
from bench.scale_corpus import Shape, append_studies, instances
from infra.factory import open_event_log
from tests.chronicle_server import chronicle_command

ORTHANC_POSTERS = 8


def fill_chronicle(data_dir: Path, shape: Shape, start: int, stop: int) -> dict[str, Any]:
    """Append studies [start, stop) to the log and replay the whole log."""
    data_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    appended = 0
    # A resumed run finds the studies already there (an interrupted run appended them).
    if _events(data_dir) < stop * shape.instances_per_study:
        appended = append_studies(f"sqlite://{data_dir / 'log.db'}", shape, start, stop)
    append_s = time.perf_counter() - began
    events = _events(data_dir)
    replay_s = replay(data_dir)
    return {
        "appended": appended,
        "append_s": append_s,
        "events": events,
        "replay_s": replay_s,
        "replay_per_s": events / replay_s,
    }


def _events(data_dir: Path) -> int:
    log = open_event_log(f"sqlite://{data_dir / 'log.db'}")
    try:
        return sum(log.end().values())
    finally:
        log.close()


def replay(data_dir: Path) -> float:
    """Seconds `chronicle replay --data-dir` takes; its output goes to a log beside the data."""
    argv = chronicle_command() + ["replay", "--data-dir", str(data_dir)]
    with (data_dir.parent / "replay.log").open("ab") as out:
        began = time.perf_counter()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"chronicle replay exited with {done.returncode}: see {out.name}")
    return seconds


POST_ATTEMPTS = 3


def fill_orthanc(
    base_url: str, shape: Shape, start: int, stop: int, budget_s: float
) -> dict[str, Any]:
    """POST studies [start, stop) to Orthanc's /instances; stops past `budget_s` seconds."""
    began = time.perf_counter()
    posted = 0
    lock = threading.Lock()
    over = threading.Event()
    limits = httpx.Limits(max_connections=ORTHANC_POSTERS)
    with httpx.Client(timeout=120, limits=limits) as client:

        def post(attrs: dict[str, Any]) -> None:
            nonlocal posted
            if over.is_set():
                return
            body = part10(attrs)
            for attempt in range(POST_ATTEMPTS):
                try:
                    response = client.post(f"{base_url}/instances", content=body)
                    break
                except httpx.TransportError:
                    # Orthanc's HTTP server now and then drops a connection
                    # (it once cost a whole 100k run); storing the same
                    # instance again is harmless ("AlreadyStored").
                    if attempt == POST_ATTEMPTS - 1:
                        raise
                    time.sleep(0.5)
            response.raise_for_status()
            with lock:
                posted += 1
                if posted % 10_000 == 0:
                    rate = posted / (time.perf_counter() - began)
                    print(f"  Orthanc: {posted:,} posted, {rate:.0f}/s", flush=True)
            if time.perf_counter() - began > budget_s:
                over.set()

        with ThreadPoolExecutor(ORTHANC_POSTERS) as pool:
            for _ in pool.map(post, instances(shape, start, stop)):
                pass
    seconds = time.perf_counter() - began
    return {
        "instances": posted,
        "seconds": seconds,
        "per_s": posted / seconds if seconds else 0.0,
        "complete": not over.is_set(),
    }
