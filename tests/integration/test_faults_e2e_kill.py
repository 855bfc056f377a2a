"""`chronicle serve` killed with SIGKILL mid-stream, then restarted on the same URLs.

The node runs on Kafka (Tansu) and S3 (SeaweedFS) with its chDB index in its
data folder. A crash may lose only what no client was told was kept:

- the projector, killed while it lags behind a STOW-RS stream, resumes from the
  checkpoint stored beside its rows: every acknowledged instance is indexed
  exactly once, and the raw (un-merged) tables show that no event before the
  stored checkpoint was applied again. (The lone projector on chDB stores it
  at most once a second while it runs: the position /healthz showed at the
  kill may be ahead, and the events in between are applied again, which
  changes no row.)
- storescu's C-STORE stream, cut by the kill: every instance storescu saw
  answered Success is found and retrieved byte for byte after the restart, and
  `chronicle check` finds no event without its blob.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.chronicle_server import REPO_ROOT, ChronicleServer, StartChronicle, chronicle_command
from tests.integration.test_faults_e2e_support import (
    SUCCESS,
    StowStream,
    assert_kept,
    healthz,
    make_instances,
    start_archive,
    storescu_command,
    storescu_statuses,
    wait_for,
)
from tests.seaweed import SeaweedFS, seaweed  # noqa: F401  (a fixture)
from tests.support import tool_env
from tests.tansu import session_broker

STREAMS = 2
#: The raw tables of the restarted node's index, read by a process of its own
#: (chDB locks its folder to one process, and this one must not hold it).
RAW_TABLES = """
import json, sys
from infra.factory import open_projection_store
store = open_projection_store(sys.argv[1])
q = store.query
print(json.dumps({
    "instances": q("SELECT count(), uniqExact(sop_instance_uid),"
                   " uniqExact(sop_instance_uid, version) FROM instance")[0],
    "receipts": q("SELECT count(), uniqExact(partition, offset), uniqExact(sop_instance_uid)"
                  " FROM receipt")[0],
    "reapplied": q("SELECT partition, offset FROM receipt GROUP BY partition, offset"
                   " HAVING count() > 1"),
    "checkpoint": q("SELECT partition, next_offset FROM checkpoint FINAL"
                    " WHERE projector = 'levels'"),
}))
store.close()
"""


@pytest.fixture
def urls(request: pytest.FixtureRequest, seaweed: SeaweedFS) -> tuple[str, str]:  # noqa: F811
    return session_broker(request).topic_url(), seaweed.url()


def raw_tables(data_dir: Path) -> dict[str, Any]:
    index_url = f"chdb://{(data_dir / 'index').resolve()}"
    result = subprocess.run(
        [sys.executable, "-c", RAW_TABLES, index_url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def offsets(position: dict[str, int]) -> dict[int, int]:
    return {int(partition): int(offset) for partition, offset in position.items()}


def test_a_projector_killed_mid_way_resumes_from_its_checkpoint_no_row_missing_or_doubled(
    start_chronicle: StartChronicle, urls: tuple[str, str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    server = start_archive(start_chronicle, *urls, data_dir=data_dir)
    studies = [generate_uid() for _ in range(4)]
    sent = make_instances(tmp_path / "sent", 300, studies, size=16, tag="PROJECTOR")
    streams = [StowStream(server, sent[n::STREAMS], stop_on_failure=True) for n in range(STREAMS)]
    for stream in streams:
        stream.start()
    seen: dict[str, Any] = {}

    def projector_mid_way() -> bool:
        seen.update(healthz(server))
        acknowledged = sum(len(s.acknowledged()) for s in streams)
        projected = sum(seen["checkpoint"].values())
        return acknowledged >= 40 and projected > 0 and seen["projection_lag"] > 0

    wait_for(projector_mid_way, 30, "the projector lagging behind the stream", interval=0.05)
    server.kill()
    for stream in streams:
        stream.join(timeout=60)
    checkpoint_at_kill = offsets(seen["checkpoint"])
    acknowledged = [i for s in streams for i in s.acknowledged()]
    in_doubt = [i for s in streams for i in s.refused()]
    assert len(acknowledged) + len(in_doubt) < len(sent), "the kill came after the stream"
    stored_at_kill = {int(p): int(o) for p, o in raw_tables(data_dir)["checkpoint"] if o}

    restarted = start_archive(start_chronicle, *urls, data_dir=data_dir)
    resumed_at = offsets(healthz(restarted)["checkpoint"])
    assert all(resumed_at.get(p, 0) >= o for p, o in stored_at_kill.items()), (
        f"restarted at {resumed_at}, behind the checkpoint stored at the kill {stored_at_kill}"
    )
    landed = assert_kept(restarted, acknowledged, in_doubt)
    log_end = offsets(healthz(restarted)["log_end"])
    restarted.stop()

    reapplied = assert_projected_once(
        raw_tables(data_dir), len(acknowledged) + landed, stored_at_kill, log_end
    )
    print(
        f"\nkilled at checkpoint {checkpoint_at_kill} (stored {stored_at_kill})"
        f" with lag {seen['projection_lag']};"
        f" {len(acknowledged)} acknowledged, {landed} of {len(in_doubt)} in doubt kept;"
        f" {reapplied} events re-applied after the restart"
    )


def assert_projected_once(
    raw: dict[str, Any], kept: int, stored_at_kill: dict[int, int], log_end: dict[int, int]
) -> int:
    """The raw tables (no FINAL, merges or not): each kept instance projected from one
    event, each event in the log once, nothing before the checkpoint applied again, and
    the checkpoint at the log end. Returns how many events were applied twice."""
    _, sops, projected_events = raw["instances"]
    assert sops == projected_events == kept, "an instance projected from two events"
    _, events, receipt_sops = raw["receipts"]
    assert events == receipt_sops == kept, "an event doubled in the log"
    reapplied = [(p, o) for p, o in raw["reapplied"]]
    assert all(o >= stored_at_kill.get(p, 0) for p, o in reapplied), (
        f"events before the stored checkpoint {stored_at_kill} applied again: {reapplied}"
    )
    checkpoint = {p: o for p, o in raw["checkpoint"] if o}
    assert checkpoint == {p: o for p, o in log_end.items() if o}, "not caught up to the log end"
    return len(reapplied)


def test_an_ingest_node_killed_mid_c_store_stream_keeps_every_acknowledged_instance(
    start_chronicle: StartChronicle, urls: tuple[str, str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    server = start_archive(start_chronicle, *urls, data_dir=data_dir)
    studies = [generate_uid() for _ in range(3)]
    sent = make_instances(tmp_path / "sent", 150, studies, size=128, tag="INGEST")
    statuses = kill_mid_stream(server, [i.path for i in sent], tmp_path / "storescu.log")
    by_path = {i.path: i for i in sent}
    acknowledged = [by_path[p] for p, status in statuses.items() if status == SUCCESS]
    in_doubt = [by_path[p] for p, status in statuses.items() if status != SUCCESS]
    assert 40 <= len(acknowledged) < len(sent), "the kill did not cut the stream"
    assert len(in_doubt) <= 1, f"storescu saw failures before the kill: {in_doubt}"

    restarted = start_archive(start_chronicle, *urls, data_dir=data_dir)
    landed = assert_kept(restarted, acknowledged, in_doubt)
    report = chronicle_check(restarted, *urls)
    # No event without its blob; the instance in flight may have left an orphan blob.
    assert report["missing blobs"] == report["corrupt blobs (sha256 mismatch)"] == 0
    assert report["events"] == len(acknowledged) + landed, "an event doubled or lost"
    assert report["orphan blobs (kept, referenced by no event)"] <= len(in_doubt) - landed
    print(
        f"\nkilled after {len(acknowledged)} of {len(sent)} C-STOREs acknowledged;"
        f" in flight: {len(in_doubt)}, kept: {landed}; check: {report}"
    )


def kill_mid_stream(server: ChronicleServer, paths: list[Path], output: Path) -> dict[Path, str]:
    """Send `paths` with storescu, SIGKILL the node once 41 are in the log (storescu sends
    one at a time, so it has read 40 answers by then); its answer for each file it began
    to send."""
    with output.open("wb") as sink:
        modality = subprocess.Popen(
            storescu_command(server, paths), stdout=sink, stderr=subprocess.STDOUT, env=tool_env()
        )
        try:
            wait_for(
                lambda: sum(healthz(server)["log_end"].values()) >= 41,
                30,
                "storescu's stream under way",
            )
            server.kill()
            modality.wait(timeout=30)
        finally:
            if modality.poll() is None:
                modality.kill()
                modality.wait()
    return storescu_statuses(output.read_text(errors="replace"))


def chronicle_check(server: ChronicleServer, log_url: str, blob_url: str) -> dict[str, int]:
    """`chronicle check` on the node's URLs: its counts, by the label it prints."""
    result = subprocess.run(
        [
            *chronicle_command(),
            "check",
            "--data-dir",
            str(server.data_dir),
            "--log-url",
            log_url,
            "--blob-url",
            blob_url,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    counts: dict[str, int] = {}
    for line in result.stdout.splitlines():
        # "events: 3, blobs checked: 3", then one "label: count" per line.
        pairs = line.split(", ") if line.startswith("events:") else [line]
        for pair in pairs:
            label, colon, number = pair.rpartition(": ")
            if colon and number.isdigit():
                counts[label] = int(number)
    return counts
