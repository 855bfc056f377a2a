"""Ingest throughput, Chronicle beside Orthanc, on one corpus of synthetic CT 512x512.

Scenarios (each on a freshly started, empty archive, so nothing is a duplicate):
  cstore-1  dcmtk storescu, every file over one association
  cstore-4  four storescu processes at once, a quarter of the files each
  stow-4    STOW-RS, 50 instances per multipart body, four concurrent connections

    python bench/ingest.py [--count 1000] [--only chronicle|orthanc] [--min-ratio 1.0]

Prints instances/s per archive and the Chronicle/Orthanc ratio, and writes the
figures as JSON to bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the generators and launchers live in tests/

import httpx  # noqa: E402
from corpus_cache import CORPUS_DIR, start_corpus  # noqa: E402
from peers import CALLING_AE, Peer, running_chronicle, running_orthanc  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from tests.support import dcmtk, make_ct, multipart_related, tool_env, write_part10  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
INSTANCES_PER_STUDY = 100
STOW_BATCH = 50
CONCURRENCY = 4
#: Orthanc 1.10.1 on this 2-core machine, same corpus (DESIGN.md, Performance).
REFERENCE_ORTHANC = {"cstore-1": 195.0, "cstore-4": 373.0, "stow-4": 293.0}
SCENARIOS = {
    "cstore-1": "C-STORE, 1 association",
    "cstore-4": f"C-STORE, {CONCURRENCY} associations",
    "stow-4": f"STOW-RS, {CONCURRENCY} clients x {STOW_BATCH}",
}
Starter = Callable[[Path], AbstractContextManager[Peer]]
PEER_NAMES = ("orthanc", "chronicle")


def build_corpus(count: int) -> list[Path]:
    """`count` CT instances, 100 per study, generated once and kept in bench/.corpus."""
    folder = CORPUS_DIR / f"ct512-{count}"
    marker = folder / "COMPLETE"
    if not marker.exists():
        start_corpus(folder, f"{count} CT 512x512 instances")
        for number in range(count):
            if number % INSTANCES_PER_STUDY == 0:
                study_uid, series_uid = generate_uid(), generate_uid()
                subject = f"{number // INSTANCES_PER_STUDY:03d}"
            ds = make_ct(
                study_uid,
                series_uid,
                patient_name=f"Bench^{subject}",
                patient_id=f"BENCH-{subject}",
                InstanceNumber=number % INSTANCES_PER_STUDY + 1,
            )
            write_part10(ds, folder / f"ct{number:05d}.dcm")
        marker.write_text(f"{count}\n")
    return sorted(folder.glob("ct*.dcm"))


def _chunks(files: list[Path], parts: int) -> list[list[Path]]:
    return [files[k * len(files) // parts : (k + 1) * len(files) // parts] for k in range(parts)]


def cstore(peer: Peer, files: list[Path], associations: int) -> float:
    """Seconds for `associations` concurrent storescu runs to send every file."""
    commands = [
        [dcmtk("storescu"), "-aet", CALLING_AE, "-aec", peer.ae_title, "-to", "30"]
        + ["127.0.0.1", str(peer.dimse_port)]
        + [str(f) for f in chunk]
        for chunk in _chunks(files, associations)
    ]
    start = time.perf_counter()
    runs = [
        subprocess.Popen(c, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c in commands
    ]
    outputs = [run.communicate()[0] for run in runs]
    elapsed = time.perf_counter() - start
    for run, output in zip(runs, outputs, strict=True):
        if run.returncode != 0:
            tail = output.decode(errors="replace")[-2000:]
            raise RuntimeError(f"storescu exited with {run.returncode}:\n{tail}")
    return elapsed


def stow(peer: Peer, files: list[Path], clients: int = CONCURRENCY) -> float:
    """Seconds to STOW every file in 50-instance bodies over `clients` connections."""
    bodies: queue.Queue[tuple[bytes, str]] = queue.Queue()
    for start in range(0, len(files), STOW_BATCH):
        bodies.put(multipart_related([f.read_bytes() for f in files[start : start + STOW_BATCH]]))
    failures: list[str] = []

    def post_until_empty() -> None:
        with httpx.Client(timeout=600) as client:
            while True:
                try:
                    body, content_type = bodies.get_nowait()
                except queue.Empty:
                    return
                headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
                response = client.post(peer.stow_url, content=body, headers=headers)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:500]}")

    threads = [threading.Thread(target=post_until_empty) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} STOW-RS requests failed; first: {failures[0]}")
    return elapsed


def run_scenario(peer: Peer, scenario: str, files: list[Path]) -> float:
    if scenario == "cstore-1":
        return cstore(peer, files, 1)
    if scenario == "cstore-4":
        return cstore(peer, files, CONCURRENCY)
    return stow(peer, files)


def queryable_after(peer: Peer, timeout: float = 600.0) -> float | None:
    """Chronicle acknowledges before projecting: seconds until /healthz shows no lag."""
    if peer.name != "Chronicle":
        return None
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if httpx.get(peer.count_url, timeout=30).json().get("projection_lag") == 0:
            return time.perf_counter() - started
        time.sleep(0.05)
    return None


def measure_once(
    name: str, start: Starter, scenario: str, files: list[Path], run_dir: Path
) -> dict[str, object]:
    """One scenario on a fresh archive in `run_dir`, with nothing dirty in the
    page cache when it starts. The archives are kept until the whole run ends:
    on ext4 without a journal (this machine's disk) creating a file right after
    thousands were deleted scans past every recently freed inode, which would
    tax whichever server runs after a deletion (up to 6 % of the machine here)
    rather than measure it."""
    archive = Path(tempfile.mkdtemp(prefix=f"{name}-{scenario}-", dir=run_dir))
    # Flush what earlier scenarios left dirty in the page cache (GBs by the
    # last round): its writeback would otherwise slow this scenario's fsyncs,
    # the more so for the server that syncs more often.
    os.sync()
    with start(archive) as peer:
        print(f"{peer.name:9}  {SCENARIOS[scenario]} ...", end=" ", flush=True)
        seconds = run_scenario(peer, scenario, files)
        stored = peer.stored_instances()
        lag_s = queryable_after(peer)
    rate = len(files) / seconds
    print(f"{rate:7.1f} instances/s ({seconds:.1f} s, {stored} stored)", flush=True)
    if stored != len(files):
        raise RuntimeError(f"{peer.name} kept {stored} of {len(files)} instances")
    figure: dict[str, object] = {"seconds": seconds, "instances_per_s": rate, "stored": stored}
    if lag_s is not None:
        figure["queryable_after_s"] = lag_s
    return figure


def measure(
    starters: dict[str, Starter], files: list[Path], run_dir: Path, rounds: int
) -> dict[str, dict[str, dict[str, object]]]:
    """Every scenario `rounds` times, the archives side by side: each round runs
    both on a scenario before the next one, the first to go alternating, so
    that a slow spell of this shared machine (CPU steal comes and goes over
    tens of seconds) falls on both rather than on whichever ran second. Per
    archive and scenario: the median rate, and every round's figures."""
    names = list(starters)
    runs: dict[str, dict[str, list[dict[str, object]]]] = {n: {} for n in names}
    for number in range(rounds):
        if rounds > 1:
            print(f"-- round {number + 1} of {rounds}")
        for scenario in SCENARIOS:
            order = names if number % 2 == 0 else names[::-1]
            for name in order:
                figure = measure_once(name, starters[name], scenario, files, run_dir)
                runs[name].setdefault(scenario, []).append(figure)
    results: dict[str, dict[str, dict[str, object]]] = {}
    for name in names:
        results[name] = {}
        for scenario, figures in runs[name].items():
            rates = [float(f["instances_per_s"]) for f in figures]  # type: ignore[arg-type]
            results[name][scenario] = {
                "instances_per_s": statistics.median(rates),
                "rounds": figures,
            }
    return results


def round_ratios(results: dict[str, dict[str, dict[str, object]]], scenario: str) -> list[float]:
    """Chronicle / Orthanc per round (measured a few seconds apart)."""

    def rates(name: str) -> list[float]:
        figures = results.get(name, {}).get(scenario, {}).get("rounds", [])
        assert isinstance(figures, list)
        return [float(f["instances_per_s"]) for f in figures]

    return [c / o for c, o in zip(rates("chronicle"), rates("orthanc"), strict=False) if o]


def table(results: dict[str, dict[str, dict[str, object]]]) -> Iterator[str]:
    """Median rates; the ratio is the median of the rounds' ratios."""
    measured_orthanc = "orthanc" in results
    median_ratios = ratios(results)
    yield f"{'scenario (median rate)':28} {'Orthanc':>10} {'Chronicle':>10} {'ratio':>7}"
    for scenario, title in SCENARIOS.items():
        orthanc = _rate(results, "orthanc", scenario) or REFERENCE_ORTHANC[scenario]
        chronicle = _rate(results, "chronicle", scenario)
        ref = "" if measured_orthanc else "*"
        ratio = f"{median_ratios[scenario]:6.2f}x" if scenario in median_ratios else "      -"
        shown = f"{chronicle:10.1f}" if chronicle else f"{'-':>10}"
        per_round = round_ratios(results, scenario)
        spread = f"  rounds {' '.join(f'{r:.2f}' for r in per_round)}" if len(per_round) > 1 else ""
        yield f"{title:28} {orthanc:9.1f}{ref or ' '} {shown} {ratio}{spread}"
    if not measured_orthanc:
        yield "* Orthanc not run: its reference figure from DESIGN.md"


def _rate(results: dict[str, dict[str, dict[str, object]]], name: str, scenario: str) -> float:
    value = results.get(name, {}).get(scenario, {}).get("instances_per_s")
    return float(value) if isinstance(value, int | float) else 0.0


def ratios(results: dict[str, dict[str, dict[str, object]]]) -> dict[str, float]:
    out = {}
    for scenario in SCENARIOS:
        chronicle = _rate(results, "chronicle", scenario)
        orthanc = _rate(results, "orthanc", scenario) or REFERENCE_ORTHANC[scenario]
        per_round = round_ratios(results, scenario)
        if per_round:
            out[scenario] = statistics.median(per_round)
        elif chronicle:
            out[scenario] = chronicle / orthanc
    return out


def _versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except OSError:
            return "not installed"
        return (done.stdout or done.stderr).strip().splitlines()[0]

    return {
        "orthanc": first_line(["/usr/sbin/Orthanc", "--version"]),
        "dcmtk": first_line([dcmtk("storescu"), "--version"]),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="instances (default 1000)")
    parser.add_argument("--only", choices=PEER_NAMES, help="measure one archive only")
    parser.add_argument(
        "--chronicle-args", default="", help='extra `chronicle serve` flags, e.g. "--workers 2"'
    )
    parser.add_argument("--work-dir", type=Path, help="where the archives keep their files")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure every scenario this many times, the archives alternating (default 3)",
    )
    parser.add_argument(
        "--min-ratio", type=float, help="exit 2 if a Chronicle/Orthanc ratio is lower"
    )
    args = parser.parse_args(argv)

    files = build_corpus(args.count)
    starters: dict[str, Starter] = {
        "orthanc": running_orthanc,
        "chronicle": partial(running_chronicle, extra_args=shlex.split(args.chronicle_args)),
    }
    names = [args.only] if args.only else list(PEER_NAMES)
    chosen = {name: starters[name] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.work_dir) as run_dir:
        results = measure(chosen, files, Path(run_dir), max(1, args.rounds))
    print()
    print("\n".join(table(results)))

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chronicle_vs_orthanc = ratios(results)
    report = {
        "benchmark": "ingest",
        "at": stamp,
        "count": args.count,
        "rounds": args.rounds,
        "chronicle_args": args.chronicle_args,
        "versions": _versions(),
        "reference_orthanc": REFERENCE_ORTHANC,
        "results": results,
        "ratios": chronicle_vs_orthanc,
    }
    out = RESULTS_DIR / f"ingest-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out.relative_to(REPO_ROOT)}")
    if args.min_ratio is not None and any(
        r < args.min_ratio for r in chronicle_vs_orthanc.values()
    ):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
