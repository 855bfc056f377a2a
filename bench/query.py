"""Study-level C-FIND and QIDO-RS latency, Chronicle beside Orthanc, at 10k and 100k instances.

The corpus is realistic in shape: studies of 2 series x 5 instances, two
studies per patient, family names drawn from a skewed list (a few very
common, many rare), five modalities, five years of dates. Chronicle is filled
by appending InstanceStored events to its log and replaying them (what the
log makes possible); Orthanc by storing small DICOM files through its REST
API. Both are then queried by the same pynetdicom client (C-FIND) and the same
httpx client (QIDO-RS), one request at a time, and p50/p99 are reported.

    .venv/bin/python bench/query.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.dimse.tuning import tune_pynetdicom  # noqa: E402
from bench.peers import CALLING_AE, running_chronicle, running_orthanc  # noqa: E402
from infra.factory import open_blob_store, open_event_log, open_projection_store  # noqa: E402
from infra.read_cache import READ_CACHE_ENV  # noqa: E402
from projections.replay import replay  # noqa: E402
from schemas import codec  # noqa: E402
from schemas.events import BlobRef, Envelope, InstanceStored, Source  # noqa: E402

COMMON = ["SMITH", "GARCIA", "MULLER", "TANAKA", "NGUYEN", "ROSSI", "DUBOIS", "KOWALSKI"]
MODALITIES = ["CT", "MR", "US", "CR", "DX"]
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SHA = "0" * 64
REPEAT = 40
UNCACHED = "Chronicle uncached"


def family_name(rng: random.Random) -> str:
    if rng.random() < 0.5:  # half the patients share eight names
        return rng.choice(COMMON)
    return "".join(rng.choice("ABCDEFGHIJKLMNOPRSTUVWZ") for _ in range(rng.randint(5, 9)))


def corpus(instances: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Instance attribute dicts; the same seed gives the same corpus to both archives."""
    rng = random.Random(seed)
    first = date(2020, 1, 1)
    for study_index in range(instances // 10):
        patient = study_index // 2
        rng_p = random.Random(patient)
        name = f"{family_name(rng_p)}^{rng_p.choice(['ANNA', 'JOHN', 'YUKI', 'LEA', 'OMAR'])}"
        study = {
            "PatientName": name,
            "PatientID": f"P{patient:07d}",
            "PatientBirthDate": f"{rng_p.randint(1930, 2020)}0101",
            "PatientSex": rng_p.choice("MF"),
            "StudyInstanceUID": f"1.2.826.0.1.3680043.9.7433.1.{study_index}",
            "StudyDate": (first + timedelta(days=rng.randrange(5 * 365))).strftime("%Y%m%d"),
            "StudyTime": f"{rng.randrange(24):02d}{rng.randrange(60):02d}00",
            "AccessionNumber": f"A{study_index:08d}",
            "StudyID": str(study_index % 10000),
            "StudyDescription": "BENCH",
        }
        modality = rng.choice(MODALITIES)
        for series_index in range(2):
            series_uid = f"{study['StudyInstanceUID']}.{series_index + 1}"
            for number in range(1, 6):
                yield {
                    **study,
                    "Modality": modality,
                    "SeriesInstanceUID": series_uid,
                    "SeriesNumber": series_index + 1,
                    "SOPInstanceUID": f"{series_uid}.{number}",
                    "InstanceNumber": number,
                }


def dicom_json(attrs: dict[str, Any]) -> dict[str, Any]:
    vr = {
        "PatientName": "PN",
        "PatientID": "LO",
        "PatientBirthDate": "DA",
        "PatientSex": "CS",
        "StudyInstanceUID": "UI",
        "StudyDate": "DA",
        "StudyTime": "TM",
        "AccessionNumber": "SH",
        "StudyID": "SH",
        "StudyDescription": "LO",
        "Modality": "CS",
        "SeriesInstanceUID": "UI",
        "SeriesNumber": "IS",
        "SOPInstanceUID": "UI",
        "InstanceNumber": "IS",
    }
    from pydicom.datadict import tag_for_keyword

    out: dict[str, Any] = {"00080016": {"vr": "UI", "Value": [CT_STORAGE]}}
    for keyword, value in attrs.items():
        tag = f"{tag_for_keyword(keyword):08X}"
        out[tag] = {
            "vr": vr[keyword],
            "Value": [{"Alphabetic": value} if vr[keyword] == "PN" else value],
        }
    return dict(sorted(out.items()))


def stored_record(attrs: dict[str, Any]) -> tuple[str, bytes]:
    """The log record (key, encoded envelope) an ingest of this instance would append.

    The blob reference points nowhere: queries never read blobs, and the
    projector only reads one for a sidecar, which these events have not.
    """
    event = InstanceStored(
        sop_class_uid=CT_STORAGE,
        sop_instance_uid=attrs["SOPInstanceUID"],
        series_instance_uid=attrs["SeriesInstanceUID"],
        study_instance_uid=attrs["StudyInstanceUID"],
        patient_id=attrs["PatientID"],
        issuer_of_patient_id="",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        blob=BlobRef(f"instances/00/00/{SHA}.dcm", SHA, 0, 0),
        source=Source("IMPORT"),
        metadata=dicom_json(attrs),
    )
    key = event.study_instance_uid
    return key, codec.encode(Envelope.of(event, key))


def fill_chronicle(data_dir: Path, instances: int) -> float:
    """Append InstanceStored events for the corpus and replay them; seconds spent."""
    started = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open_event_log(f"sqlite://{data_dir}/log.db")
    batch: list[tuple[str, bytes]] = []
    for attrs in corpus(instances):
        batch.append(stored_record(attrs))
        if len(batch) == 2000:
            log.append(batch)
            batch = []
    if batch:
        log.append(batch)
    index = open_projection_store(f"chdb://{data_dir}/index")
    blobs = open_blob_store(f"file://{data_dir}/blobs")
    replay(log, index, blobs, batch=10_000)
    index.close()
    log.close()
    return time.perf_counter() - started


def part10(attrs: dict[str, Any]) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(CT_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(attrs["SOPInstanceUID"])
    ds.SOPClassUID = CT_STORAGE
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def fill_orthanc(base_url: str, instances: int) -> float:
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(4) as pool:

        def post(attrs: dict[str, Any]) -> None:
            response = client.post(f"{base_url}/instances", content=part10(attrs))
            response.raise_for_status()

        for _ in pool.map(post, corpus(instances), chunksize=64):
            pass
    return time.perf_counter() - started


QUERIES: dict[str, dict[str, str]] = {
    "PatientName=SMITH*": {"PatientName": "SMITH*"},
    "PatientName=rare*": {"PatientName": "KOP*"},
    "StudyDate one month": {"StudyDate": "20220301-20220331"},
    "AccessionNumber exact": {"AccessionNumber": "A00000421"},
    "ModalitiesInStudy=MR, 2021": {"ModalitiesInStudy": "MR", "StudyDate": "20210101-20211231"},
}


def c_find_timer(
    port: int, ae_title: str
) -> tuple[Callable[[dict[str, str]], int], Callable[[], None]]:
    # The same client for both archives, with TCP_NODELAY (pynetdicom never
    # sets it, and a C-FIND request sent as two PDUs would wait for the
    # server's delayed ACK) and fast polling.
    tune_pynetdicom()
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise SystemExit(f"C-FIND association to {ae_title} refused")

    def find(keys: dict[str, str]) -> int:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        for keyword in (
            "StudyInstanceUID",
            "PatientName",
            "PatientID",
            "StudyDate",
            "AccessionNumber",
            "ModalitiesInStudy",
        ):
            setattr(identifier, keyword, keys.get(keyword, ""))
        matches = 0
        for status, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in (0xFF00, 0xFF01):
                matches += 1
        return matches

    return find, assoc.release


def measure(run: Callable[[dict[str, str]], int], keys: dict[str, str]) -> dict[str, float]:
    run(keys)  # warm
    times = []
    matches = 0
    for _ in range(REPEAT):
        started = time.perf_counter()
        matches = run(keys)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50": statistics.median(times),
        "p99": times[int(0.99 * (len(times) - 1))],
        "matches": matches,
    }


def qido(base: str) -> Callable[[dict[str, str]], int]:
    client = httpx.Client(timeout=60)

    def search(keys: dict[str, str]) -> int:
        response = client.get(f"{base}/studies", params={**keys, "limit": "1000"})
        return len(response.json()) if response.status_code == 200 else 0

    return search


def bench_size(instances: int, work: Path, only: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if only in (None, "chronicle"):
        folder = work / f"chronicle-{instances}"
        fill = fill_chronicle(folder / "data", instances)
        # Twice: as configured (repeated identical queries are answered from the
        # index's read cache until the next write), and with the cache off, so every
        # query runs in ClickHouse - the figure compared with Orthanc.
        for label, env in (("Chronicle", None), (UNCACHED, {READ_CACHE_ENV: "0"})):
            with running_chronicle(folder, env=env) as peer:
                find, release = c_find_timer(peer.dimse_port, peer.ae_title)
                base = peer.stow_url.rsplit("/studies", 1)[0]
                results[label] = {
                    "fill_s": fill,
                    **{
                        name: {"cfind": measure(find, keys), "qido": measure(qido(base), keys)}
                        for name, keys in QUERIES.items()
                    },
                }
                release()
    if only in (None, "orthanc"):
        with running_orthanc(work / f"orthanc-{instances}") as peer:
            base = peer.stow_url.rsplit("/studies", 1)[0]
            fill = fill_orthanc(peer.count_url.rsplit("/statistics", 1)[0], instances)
            find, release = c_find_timer(peer.dimse_port, peer.ae_title)
            results["Orthanc"] = {
                "fill_s": fill,
                **{
                    name: {"cfind": measure(find, keys), "qido": measure(qido(base), keys)}
                    for name, keys in QUERIES.items()
                },
            }
            release()
    return results


def report(size: int, results: dict[str, Any]) -> None:
    print(f"\n{size} instances (p50 / p99 ms, {REPEAT} runs, 1 client)")
    peers = ("Orthanc", "Chronicle", UNCACHED)
    heads = "".join(f"{p:>17}" for p in peers)
    print(f"{'query':28} {'proto':6}{heads} {'ratio':>7} {'uncached':>9}")
    for name in QUERIES:
        for proto in ("cfind", "qido"):
            found = [results.get(p, {}).get(name, {}).get(proto) for p in peers]
            cells = "".join(
                f"{r['p50']:8.1f}/{r['p99']:7.1f} " if r else f"{'-':>16} " for r in found
            )
            o, c, u = found
            ratio = f"{o['p50'] / c['p50']:.2f}x" if o and c else "-"
            plain = f"{o['p50'] / u['p50']:.2f}x" if o and u else "-"
            print(f"{name:28} {proto:6}{cells}{ratio:>7} {plain:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--only", choices=["chronicle", "orthanc"])
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="chronicle-bench-query-"))
    everything = {}
    for size in args.sizes:
        results = bench_size(size, work, args.only)
        report(size, results)
        everything[str(size)] = results
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"query-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(everything, indent=2))
    print(f"\nresults: {path}  (ratio > 1: Chronicle faster)")


if __name__ == "__main__":
    main()
