"""What a viewer asks of an archive: series and study /metadata, whole-study WADO-RS.

Two corpora of real Part-10 files, stored in both archives over four dcmtk
storescu associations (that load is also the suite's C-STORE figure):

* metadata studies: one series each, of 100 or of 500 small CT instances
  (64x64 pixels; /metadata never carries pixel data, so pixel size does not
  matter there, and small files keep the corpus small);
* the WADO study: bench/retrieve.py's study of synthetic CT 512x512 (~0.5 MB
  each, 100 per series), retrieved whole as multipart/related application/dicom.

A viewer opening a study asks for its metadata once, cold, and perhaps again
later. Chronicle keeps answers until its next write, so the first request
for each series and study is the cold figure (one sample per study: several
studies per size give the p50/p99), and `warm` repeats one of them.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import generate_uid

from bench.corpus_cache import CORPUS_DIR, start_corpus
from bench.ingest import cstore, queryable_after
from bench.peers import Peer
from bench.retrieve import build_study
from bench.scale_queries import percentiles
from tests.support import make_ct, write_part10

METADATA_ACCEPT = "application/dicom+json"
STUDY_ACCEPT = 'multipart/related; type="application/dicom"'
WARM_REPEATS = 10
WADO_RUNS = 3


@dataclass(frozen=True)
class ViewerStudy:
    study_uid: str
    series_uid: str
    instances: int


@dataclass(frozen=True)
class ViewerCorpus:
    metadata_studies: list[ViewerStudy]
    metadata_files: list[Path]
    wado_study_uid: str
    wado_files: list[Path]

    @property
    def wado_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.wado_files)


def build_metadata_studies(per_size: dict[int, int]) -> tuple[list[ViewerStudy], list[Path]]:
    """{series size: how many studies}, each a single series of small CT; cached."""
    label = "-".join(f"{count}x{size}" for size, count in sorted(per_size.items()))
    folder = CORPUS_DIR / f"scale-meta-{label}"
    marker = folder / "COMPLETE"
    if not marker.exists():
        start_corpus(folder, f"metadata studies {label}")
        made = []
        for size, count in sorted(per_size.items()):
            for copy in range(count):
                made.append(_write_series(folder / f"s{size}-{copy}", size))
        marker.write_text(json.dumps([vars(study) for study in made]))
    found = [ViewerStudy(**item) for item in json.loads(marker.read_text())]
    return found, sorted(folder.glob("s*/*.dcm"))


def _write_series(folder: Path, size: int) -> ViewerStudy:
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    for number in range(1, size + 1):
        ds = make_ct(
            study_uid,
            series_uid,
            rows=64,
            cols=64,
            patient_name="Viewer^Bench",
            patient_id=f"VIEW-{size}",
            InstanceNumber=number,
            SliceLocation=float(number),
            ImagePositionPatient=[0.0, 0.0, float(number)],
            ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            PixelSpacing=[0.7, 0.7],
            SliceThickness=1.0,
        )
        write_part10(ds, folder / f"i{number:04d}.dcm")
    return ViewerStudy(study_uid, series_uid, size)


def build_corpus(metadata_per_size: dict[int, int], wado_instances: int) -> ViewerCorpus:
    studies, files = build_metadata_studies(metadata_per_size)
    wado_uid, wado_files = build_study(wado_instances)
    return ViewerCorpus(studies, files, wado_uid, wado_files)


def load(peer: Peer, corpus: ViewerCorpus) -> dict[str, Any]:
    """Store both corpora over 4 associations; the C-STORE rates, once queryable."""
    figures: dict[str, Any] = {}
    for name, files in (("ct512", corpus.wado_files), ("ct64", corpus.metadata_files)):
        seconds = cstore(peer, files, 4)
        figures[name] = {"instances": len(files), "seconds": seconds, "per_s": len(files) / seconds}
        print(f"  {peer.name}: C-STORE x4 {name}: {len(files) / seconds:.1f} instances/s")
    figures["queryable_after_s"] = queryable_after(peer)
    return figures


def _get(client: httpx.Client, url: str, accept: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    response = client.get(url, headers={"Accept": accept})
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
    return elapsed, response.content


def measure_metadata(dicomweb_base: str, studies: list[ViewerStudy]) -> dict[str, Any]:
    """{series|study: {size: {cold: p50/p99 over studies, warm: p50/p99 of repeats}}}."""
    out: dict[str, Any] = {"series": {}, "study": {}}
    with httpx.Client(timeout=300) as client:
        for size in sorted({study.instances for study in studies}):
            group = [study for study in studies if study.instances == size]
            for level in ("series", "study"):
                urls = [_metadata_url(dicomweb_base, study, level) for study in group]
                cold = []
                for url in urls:
                    elapsed, body = _get(client, url, METADATA_ACCEPT)
                    if len(json.loads(body)) != size:
                        raise RuntimeError(f"{url}: expected {size} instances")
                    cold.append(elapsed)
                warm = [_get(client, urls[0], METADATA_ACCEPT)[0] for _ in range(WARM_REPEATS)]
                out[level][str(size)] = {"cold": percentiles(cold), "warm": percentiles(warm)}
    return out


def _metadata_url(base: str, study: ViewerStudy, level: str) -> str:
    if level == "series":
        return f"{base}/studies/{study.study_uid}/series/{study.series_uid}/metadata"
    return f"{base}/studies/{study.study_uid}/metadata"


def measure_wado(dicomweb_base: str, corpus: ViewerCorpus) -> dict[str, Any]:
    """Whole-study WADO-RS, streamed and counted; MB/s (10^6 bytes) of the median run."""
    url = f"{dicomweb_base}/studies/{corpus.wado_study_uid}"
    seconds, received = [], 0
    with httpx.Client(timeout=600) as client:
        for _ in range(WADO_RUNS):
            started = time.perf_counter()
            received = 0
            with client.stream("GET", url, headers={"Accept": STUDY_ACCEPT}) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"GET {url}: {response.status_code}")
                for chunk in response.iter_raw(1 << 20):
                    received += len(chunk)
            seconds.append(time.perf_counter() - started)
    if received < corpus.wado_bytes * 0.9:
        raise RuntimeError(f"{url}: {received} bytes for {corpus.wado_bytes} stored")
    median = statistics.median(seconds)
    return {
        "instances": len(corpus.wado_files),
        "bytes": received,
        "runs_s": seconds,
        "mb_per_s": received / median / 1e6,
    }
