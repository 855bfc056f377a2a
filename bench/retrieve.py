"""C-MOVE throughput, Chronicle beside Orthanc: one study of synthetic CT 512x512 moved to dcmtk.

Both archives are started fresh and loaded with the same study (one storescu
association each); then, `--runs` rounds, dcmtk's movescu asks each in turn to
C-MOVE the whole study to one dcmtk storescp (`--ignore`: received, not
written), all with TCP_NODELAY=1. Instances per second = instances / movescu
wall time; alternating the archives spreads background load over both.

    python bench/retrieve.py [--count 500] [--runs 3] [--only chronicle|orthanc]

Prints instances/s per archive (median of the runs) and the Chronicle/Orthanc
ratio, and writes the figures as JSON to bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the generators and launchers live in tests/

import httpx  # noqa: E402
from corpus_cache import CORPUS_DIR, start_corpus  # noqa: E402
from peers import CALLING_AE, running_orthanc  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from tests.chronicle_server import launch_chronicle  # noqa: E402
from tests.support import dcmtk, free_port, make_ct, tool_env, write_part10  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEST_AE = "BENCHDEST"
PEER_NAMES = ("orthanc", "chronicle")
INSTANCES_PER_SERIES = 100


@dataclass(frozen=True)
class Source:
    """A running archive the study is moved from."""

    name: str
    ae_title: str
    dimse_port: int
    #: Returns once the archive answers queries about everything loaded.
    settle: Callable[[], None]


def build_study(count: int) -> tuple[str, list[Path]]:
    """One study of `count` CT instances, 100 per series, generated once and cached."""
    folder = CORPUS_DIR / f"move-ct512-{count}"
    marker = folder / "COMPLETE"
    if not marker.exists():
        start_corpus(folder, f"a {count}-instance CT study")
        study_uid = generate_uid()
        for number in range(count):
            if number % INSTANCES_PER_SERIES == 0:
                series_uid = generate_uid()
            ds = make_ct(
                study_uid,
                series_uid,
                patient_name="Bench^Move",
                patient_id="BENCH-MOVE",
                SeriesNumber=number // INSTANCES_PER_SERIES + 1,
                InstanceNumber=number % INSTANCES_PER_SERIES + 1,
            )
            write_part10(ds, folder / f"ct{number:05d}.dcm")
        marker.write_text(f"{study_uid}\n")
    return marker.read_text().strip(), sorted(folder.glob("ct*.dcm"))


@contextmanager
def storescp(port: int) -> Iterator[None]:
    """dcmtk's Storage SCP as the Move Destination: receives everything, keeps nothing."""
    argv = [dcmtk("storescp"), "-aet", DEST_AE, "--ignore", str(port)]
    process = subprocess.Popen(
        argv, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"storescp did not listen on {port}")


def load(source: Source, files: list[Path]) -> None:
    argv = [dcmtk("storescu"), "-aet", CALLING_AE, "-aec", source.ae_title, "-to", "30"]
    argv += ["127.0.0.1", str(source.dimse_port), *map(str, files)]
    done = subprocess.run(argv, env=tool_env(), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"storescu exited with {done.returncode}:\n{done.stderr[-2000:]}")
    source.settle()


def move_once(source: Source, study_uid: str, count: int) -> float:
    """Seconds for movescu to C-MOVE the study to storescp; checks every instance went."""
    argv = [dcmtk("movescu"), "-v", "-S", "-aet", CALLING_AE, "-aec", source.ae_title]
    argv += ["-aem", DEST_AE, "-to", "30", "-td", "600"]
    argv += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    argv += ["127.0.0.1", str(source.dimse_port)]
    started = time.perf_counter()
    done = subprocess.run(argv, env=tool_env(), capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    log = done.stdout + done.stderr
    # Success means every sub-operation completed (PS3.4 C.4.2.1.5); the counts
    # are printed only when the final response carries them.
    success = "Received Final Move Response (Success)" in log
    completed = re.findall(r"Number of Completed Suboperations\s*:\s*(\d+)", log)
    if done.returncode != 0 or not success or (completed and int(completed[-1]) != count):
        raise RuntimeError(
            f"{source.name}: C-MOVE incomplete (exit {done.returncode}):\n{log[-3000:]}"
        )
    return elapsed


@contextmanager
def orthanc_source(folder: Path, dest_port: int) -> Iterator[Source]:
    with running_orthanc(folder) as peer:
        base = peer.count_url.rsplit("/", 1)[0]
        # Orthanc moves only to modalities it knows; declare the storescp.
        answer = httpx.put(
            f"{base}/modalities/benchdest", json=[DEST_AE, "127.0.0.1", dest_port], timeout=30
        )
        answer.raise_for_status()
        yield Source(peer.name, peer.ae_title, peer.dimse_port, lambda: None)


@contextmanager
def chronicle_source(folder: Path, dest_port: int, extra_args: list[str]) -> Iterator[Source]:
    remotes = [f"{CALLING_AE}@127.0.0.1:{free_port()}", f"{DEST_AE}@127.0.0.1:{dest_port}"]
    server = launch_chronicle(folder / "data", extra_args=extra_args, remote_aes=remotes)
    health = f"{server.base_url}/healthz"

    def settle() -> None:
        deadline = time.monotonic() + 600
        while httpx.get(health, timeout=30).json().get("projection_lag") != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("Chronicle's projection did not catch up")
            time.sleep(0.05)

    try:
        yield Source("Chronicle", server.ae_title, server.dimse_port, settle)
    finally:
        server.stop()


Starter = Callable[[Path, int], AbstractContextManager[Source]]


def measure(
    starters: dict[str, Starter], study: tuple[str, list[Path]], runs: int
) -> dict[str, dict[str, object]]:
    """Start and load every archive, then C-MOVE from each in turn, `runs` rounds:
    background load on the machine falls on both alike."""
    study_uid, files = study
    dest_port = free_port()
    seconds: dict[str, list[float]] = {name: [] for name in starters}
    with ExitStack() as stack:
        stack.enter_context(storescp(dest_port))
        sources = {}
        for name, start in starters.items():
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-move-{name}-"))
            source = stack.enter_context(start(Path(tmp), dest_port))
            print(f"{source.name:9}  loading {len(files)} instances ...", flush=True)
            load(source, files)
            sources[name] = source
        for run in range(1, runs + 1):
            for name, source in sources.items():
                elapsed = move_once(source, study_uid, len(files))
                seconds[name].append(elapsed)
                rate = len(files) / elapsed
                print(
                    f"{source.name:9}  C-MOVE run {run}: {rate:7.1f} instances/s ({elapsed:.2f} s)"
                )
    return {name: _figures(taken, len(files)) for name, taken in seconds.items()}


def _figures(seconds: list[float], count: int) -> dict[str, object]:
    median = statistics.median(seconds)
    return {
        "runs_s": seconds,
        "median_s": median,
        "instances_per_s": count / median,
        "best_instances_per_s": count / min(seconds),
    }


def _versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    return {
        "orthanc": first_line(["/usr/sbin/Orthanc", "--version"]),
        "dcmtk": first_line([dcmtk("movescu"), "--version"]),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="instances in the study")
    parser.add_argument("--runs", type=int, default=3, help="C-MOVEs per archive (median)")
    parser.add_argument("--only", choices=PEER_NAMES, help="measure one archive only")
    parser.add_argument("--chronicle-args", default="", help="extra `chronicle serve` flags")
    parser.add_argument("--min-ratio", type=float, help="exit 2 if Chronicle/Orthanc is lower")
    args = parser.parse_args(argv)

    study = build_study(args.count)
    extra = shlex.split(args.chronicle_args)
    starters: dict[str, Starter] = {
        "orthanc": orthanc_source,
        "chronicle": lambda folder, port: chronicle_source(folder, port, extra),
    }
    names = [args.only] if args.only else list(PEER_NAMES)
    results = measure({name: starters[name] for name in names}, study, args.runs)
    ratio = None
    if len(results) == 2:
        chronicle = float(results["chronicle"]["instances_per_s"])  # type: ignore[arg-type]
        orthanc = float(results["orthanc"]["instances_per_s"])  # type: ignore[arg-type]
        ratio = chronicle / orthanc
        print(
            f"\nC-MOVE {args.count} instances: Orthanc {orthanc:.1f}/s, "
            f"Chronicle {chronicle:.1f}/s, ratio {ratio:.2f}x"
        )

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "benchmark": "retrieve",
        "scenario": "C-MOVE of one study to dcmtk storescp --ignore, movescu wall time",
        "at": stamp,
        "count": args.count,
        "runs": args.runs,
        "chronicle_args": args.chronicle_args,
        "versions": _versions(),
        "results": results,
        "ratio": ratio,
    }
    out = RESULTS_DIR / f"retrieve-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out.relative_to(REPO_ROOT)}")
    if args.min_ratio is not None and ratio is not None and ratio < args.min_ratio:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
