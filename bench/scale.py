"""The scale suite: Chronicle (embedded defaults) beside Orthanc, from 10k to 1M instances.

For each size (a prefix of one corpus: 10k studies x 2 series x 50 instances
over 5k patients at 1M), Chronicle's log is extended with InstanceStored
events and replayed (`chronicle replay`, timed), then served; Orthanc (up to
--orthanc-sizes) is filled through its REST API. Both answer the same QIDO-RS
and C-FIND study searches (1 and 8 clients, distinct and repeated keys); at
the largest size both hold, both store a viewer corpus over 4 C-STORE
associations, answer series/study /metadata and whole-study WADO-RS, and
store 5 rounds of 500 CT over 4 associations in turns (bench.scale_store). On
the largest Chronicle index: a soak (C-STORE at half the maximum plus 20
QIDO/s) and optionally a py-spy profile of the slowest search. Prints the
tables and issue 6's targets with PASS/FAIL; writes JSON and a PNG plot to
bench/results/. See bench/README.md.

    .venv/bin/python bench/scale.py            # 10k, 100k, 1M; 600 s soak
    .venv/bin/python bench/scale.py --quick    # 10k only, 60 s soak
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(1, str(REPO_ROOT / "bench"))  # bench/ingest.py imports `peers` bare

from bench import scale_profile, scale_report, scale_soak, scale_store, scale_viewer  # noqa: E402
from bench.ingest import RESULTS_DIR, _versions  # noqa: E402
from bench.peers import CALLING_AE, Peer, running_orthanc  # noqa: E402
from bench.scale_corpus import Shape  # noqa: E402
from bench.scale_fill import fill_chronicle, fill_orthanc  # noqa: E402
from bench.scale_pair import measure_pair  # noqa: E402
from bench.scale_queries import (  # noqa: E402
    KINDS,
    QueryKeys,
    c_find_opener,
    measure_searches,
    qido_opener,
    quiet_collector,
)
from bench.work_lock import only_run_in  # noqa: E402
from tests.chronicle_server import launch_chronicle  # noqa: E402
from tests.support import free_port  # noqa: E402


@dataclass
class Plan:
    sizes: list[int]
    orthanc_sizes: list[int]
    requests: int  # QIDO-RS
    cfind_requests: int
    soak_seconds: float
    isolated_seconds: float
    soak_max_count: int
    metadata_studies: dict[int, int]
    wado_instances: int
    orthanc_budget_s: float
    profile_seconds: float
    chronicle_args: list[str] = field(default_factory=list)
    skip_replay: bool = False

    @property
    def viewer_size(self) -> int:
        return max(self.orthanc_sizes) if self.orthanc_sizes else min(self.sizes)


@dataclass
class Archive:
    peer: Peer
    pid: int

    @property
    def dicomweb(self) -> str:
        return self.peer.stow_url.rsplit("/studies", 1)[0]


@contextmanager
def serving_chronicle(folder: Path, extra_args: list[str]) -> Iterator[Archive]:
    server = launch_chronicle(
        folder / "data",
        extra_args=extra_args,
        remote_aes=[f"{CALLING_AE}@127.0.0.1:{free_port()}"],
        workers=None,  # the embedded defaults: one front-end process per core
    )
    try:
        peer = Peer(
            "Chronicle",
            server.ae_title,
            server.dimse_port,
            f"{server.dicomweb_url}/studies",
            f"{server.base_url}/healthz",
        )
        yield Archive(peer, server.process.pid)
    finally:
        server.stop()


def measure_archive(
    archive: Archive, size: int, keys: QueryKeys, plan: Plan, viewer: scale_viewer.ViewerCorpus
) -> dict[str, Any]:
    """Queries at this size, and the viewer's requests once the viewer corpus is stored."""
    name = archive.peer.name
    out: dict[str, Any] = {}
    if size == plan.viewer_size:
        print(f"{name}: storing the viewer corpus", flush=True)
        out["load"] = scale_viewer.load(archive.peer, viewer)
    print(f"{name} @{size:,}: QIDO-RS and C-FIND study searches", flush=True)
    out["queries"] = {
        "qido": measure_searches(qido_opener(archive.dicomweb), keys, (1, 8), plan.requests),
        "cfind": measure_searches(
            c_find_opener(archive.peer.dimse_port, archive.peer.ae_title),
            keys,
            (1, 8),
            plan.cfind_requests,
        ),
    }
    if size >= plan.viewer_size:
        print(f"{name} @{size:,}: /metadata and WADO-RS", flush=True)
        out["metadata"] = scale_viewer.measure_metadata(archive.dicomweb, viewer.metadata_studies)
        out["wado"] = scale_viewer.measure_wado(archive.dicomweb, viewer)
    return out


def _file(results: dict[str, Any], archive: str, size: int, measured: dict[str, Any]) -> None:
    """Queries under results[archive]["queries"][size], the rest under ["viewer"][size]."""
    tree = results.setdefault(archive, {})
    rest = {name: part for name, part in measured.items() if name != "queries"}
    tree.setdefault("queries", {})[str(size)] = measured["queries"]
    if rest:
        tree.setdefault("viewer", {})[str(size)] = rest


def run_chronicle(
    results: dict[str, Any], work: Path, plan: Plan, viewer: scale_viewer.ViewerCorpus, size: int
) -> None:
    """Extend the log to `size`, replay it, serve it and measure."""
    folder = _fill_chronicle(results, work, plan, size)
    keys = QueryKeys(Shape.of(size))
    with serving_chronicle(folder, plan.chronicle_args) as archive:
        measured = measure_archive(archive, size, keys, plan, viewer)
        _file(results, "chronicle", size, dict(measured))
        _save(results)  # before the long last phases
        if size == max(plan.sizes):
            _last_size(results, archive, keys, plan, measured)


def _fill_chronicle(results: dict[str, Any], work: Path, plan: Plan, size: int) -> Path:
    folder = work / "chronicle"
    tree = results.setdefault("chronicle", {})
    done, studies = tree.get("_studies", 0), Shape.of(size).studies
    if plan.skip_replay and str(size) in tree.get("fill", {}):
        print(f"Chronicle: serving the index a resumed run already replayed to {size:,}")
    else:
        print(f"Chronicle: appending studies {done:,}..{studies:,} and replaying", flush=True)
        fill = fill_chronicle(folder / "data", Shape.of(max(plan.sizes)), done, studies)
        print(f"  replay: {fill['events']:,} events, {fill['replay_per_s']:,.0f}/s", flush=True)
        tree.setdefault("fill", {})[str(size)] = fill
    tree["_studies"] = studies
    return folder


def _last_size(
    results: dict[str, Any], archive: Archive, keys: QueryKeys, plan: Plan, measured: Any
) -> None:
    """The profile and the soak; a failure of either is recorded, and the run goes on."""
    opener = qido_opener(archive.dicomweb)
    tree = results["chronicle"]
    if plan.profile_seconds:
        slowest = max(KINDS, key=lambda k: measured["queries"]["qido"][k]["distinct"]["8"]["p50"])
        out = RESULTS_DIR / f"scale-profile-{results['at']}.txt"
        print(f"Chronicle: py-spy on {slowest} for {plan.profile_seconds:.0f} s", flush=True)
        with _recorded(tree, "profile"):
            tree["profile"] = scale_profile.record(
                archive.pid, opener, keys, slowest, plan.profile_seconds, out
            )
    if plan.soak_seconds:
        with _recorded(tree, "soak"):
            tree["soak"] = scale_soak.soak(
                archive.pid,
                (archive.peer.dimse_port, archive.peer.ae_title),
                opener,
                keys,
                seconds=plan.soak_seconds,
                isolated_seconds=plan.isolated_seconds,
                max_count=plan.soak_max_count,
            )


@contextmanager
def _recorded(tree: dict[str, Any], name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # a late phase must not lose the hour of figures before it
        traceback.print_exc()
        tree.setdefault("errors", {})[name] = repr(exc)


def run_orthanc(
    results: dict[str, Any], work: Path, plan: Plan, viewer: scale_viewer.ViewerCorpus, size: int
) -> None:
    with running_orthanc(work / "orthanc") as peer:
        _fill_orthanc(results, peer, plan, size)
        archive = Archive(peer, 0)
        measured = measure_archive(archive, size, QueryKeys(Shape.of(size)), plan, viewer)
    _file(results, "orthanc", size, measured)


def _fill_orthanc(results: dict[str, Any], peer: Peer, plan: Plan, size: int) -> None:
    full = Shape.of(max(plan.sizes))
    done = results.get("orthanc", {}).get("_studies", 0)
    studies = Shape.of(size).studies
    base = peer.count_url.rsplit("/statistics", 1)[0]
    print(f"Orthanc: POSTing studies {done:,}..{studies:,}", flush=True)
    fill = fill_orthanc(base, full, done, studies, plan.orthanc_budget_s)
    print(f"  {fill['instances']:,} instances at {fill['per_s']:.0f}/s", flush=True)
    results.setdefault("orthanc", {}).setdefault("fill", {})[str(size)] = fill
    results["orthanc"]["_studies"] = studies


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    sizes = args.sizes or ([10_000] if quick else [10_000, 100_000, 1_000_000])
    orthanc = args.orthanc_sizes
    if orthanc is None:
        orthanc = [s for s in sizes if s <= 100_000]
    soak = args.soak_seconds if args.soak_seconds is not None else (60.0 if quick else 600.0)
    return Plan(
        sizes=sorted(sizes),
        orthanc_sizes=sorted(orthanc),
        requests=args.requests or (20 if quick else 200),
        cfind_requests=args.cfind_requests or (20 if quick else 50),
        soak_seconds=soak,
        isolated_seconds=10.0 if quick else 60.0,
        soak_max_count=200 if quick else 1000,
        metadata_studies={100: 3, 500: 2} if quick else {100: 10, 500: 4},
        wado_instances=500,
        orthanc_budget_s=args.orthanc_budget,
        profile_seconds=args.profile_seconds,
        chronicle_args=shlex.split(args.chronicle_args),
        skip_replay=args.skip_replay,
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k only, 60 s soak (smoke run)")
    parser.add_argument("--sizes", type=int, nargs="+", help="index sizes (multiples of 100)")
    parser.add_argument("--orthanc-sizes", type=int, nargs="*", help="default: sizes <= 100k")
    parser.add_argument(
        "--requests", type=int, help="timed QIDO-RS requests per measurement (default 200)"
    )
    parser.add_argument(
        "--cfind-requests", type=int, help="timed C-FIND requests per measurement (default 50)"
    )
    parser.add_argument("--soak-seconds", type=float, help="0 skips the soak (default 600)")
    parser.add_argument("--profile-seconds", type=float, default=0.0, help="py-spy at the end")
    parser.add_argument("--orthanc-budget", type=float, default=3600.0, help="fill seconds max")
    parser.add_argument("--chronicle-args", default="", help="extra `chronicle serve` flags")
    parser.add_argument("--work-dir", type=Path, help="archives' folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the archives' folder")
    parser.add_argument(
        "--skip-replay",
        action="store_true",
        help="with --resume: serve an index whose replay the interrupted run already measured",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        help="results JSON of an interrupted run with the same --work-dir: measure only "
        "the sizes it lacks (a log already holding a size's instances is replayed, not extended)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    plan = make_plan(args)
    quiet_collector()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {"benchmark": "scale", "at": stamp, "plan": vars(plan).copy()}
    if args.resume:
        results = json.loads(args.resume.read_text())
        results.setdefault("resumed", []).append(stamp)
    results["versions"] = _versions()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    viewer = scale_viewer.build_corpus(plan.metadata_studies, plan.wado_instances)
    scale_store.corpus()  # generated before any archive runs
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="chronicle-bench-scale-"))
    try:
        with only_run_in(work):
            _enough_disk(work, plan)
            _interleave(results, work, plan, viewer)
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return _finish(results)


#: Free disk the full suite needs in its work folder: both 100k archives, the
#: 1M index and the soak's ~100k CT (a run with ~40 GB of older work folders
#: left filled the disk mid-soak, and Chronicle rightly refused 69 % of its
#: stores with 0xA700).
FULL_RUN_FREE_BYTES = 30 * 1024**3


def _enough_disk(work: Path, plan: Plan) -> None:
    needed = FULL_RUN_FREE_BYTES * max(plan.sizes) // 1_000_000
    free = shutil.disk_usage(work).free
    if free < needed:
        raise SystemExit(
            f"{work}: {free / 1024**3:.1f} GiB free, the run needs about "
            f"{needed / 1024**3:.0f} GiB (remove older --work-dir folders)"
        )


def _interleave(
    results: dict[str, Any], work: Path, plan: Plan, viewer: scale_viewer.ViewerCorpus
) -> None:
    """Size by size; at a size both hold, both serve at once and every measurement
    runs on one and then the other (bench.scale_pair), so both meet the host's
    slow spells alike."""
    for size in sorted(set(plan.sizes) | set(plan.orthanc_sizes)):
        chronicle = size in plan.sizes and not _measured(results, "chronicle", size)
        orthanc = size in plan.orthanc_sizes and not _measured(results, "orthanc", size)
        if chronicle and orthanc:
            run_both(results, work, plan, viewer, size)
        elif chronicle:
            run_chronicle(results, work, plan, viewer, size)
        elif orthanc:
            run_orthanc(results, work, plan, viewer, size)
        _save(results)


def run_both(
    results: dict[str, Any], work: Path, plan: Plan, viewer: scale_viewer.ViewerCorpus, size: int
) -> None:
    """Both archives filled to `size`, then served together and measured in turns."""
    folder = _fill_chronicle(results, work, plan, size)
    with running_orthanc(work / "orthanc") as peer:
        _fill_orthanc(results, peer, plan, size)
        with serving_chronicle(folder, plan.chronicle_args) as archive:
            archives = {"orthanc": Archive(peer, 0), "chronicle": archive}
            keys = {name: QueryKeys(Shape.of(size)) for name in archives}
            measured = measure_pair(archives, keys, size, plan, viewer)
            for name, figures in measured.items():
                _file(results, name, size, dict(figures))
            _save(results)
            if size == max(plan.sizes):
                _last_size(results, archive, keys["chronicle"], plan, measured["chronicle"])


def _measured(results: dict[str, Any], archive: str, size: int) -> bool:
    """True for sizes a resumed run (--resume) already has figures for."""
    return str(size) in results.get(archive, {}).get("queries", {})
    for archive in ("chronicle", "orthanc"):
        results.get(archive, {}).pop("_studies", None)


def _save(results: dict[str, Any]) -> Path:
    """Written after every size, so a failure late in a long run keeps what came before."""
    out = RESULTS_DIR / f"scale-{results['at']}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return out


def _finish(results: dict[str, Any]) -> int:
    checks = scale_report.evaluate(results)
    results["targets"] = [
        {"target": c.target, "figure": c.figure, "verdict": c.verdict} for c in checks
    ]
    for line in scale_report.latency_table(results):
        print(line)
    print()
    for line in scale_report.other_table(results):
        print(line)
    for line in scale_report.soak_lines(results.get("chronicle", {}).get("soak")):
        print(line)
    if "profile" in results.get("chronicle", {}):
        print("\n".join(scale_profile.lines(results["chronicle"]["profile"])))
    for line in scale_report.checks_table(checks):
        print(line)
    out = _save(results)
    png = out.with_suffix(".png")
    scale_report.plot(results, png)
    print(f"\nresults: {out.relative_to(REPO_ROOT)}\nplot:    {png.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
