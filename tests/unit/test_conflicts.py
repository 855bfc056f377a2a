"""The conflict projection's row function and the report's grouping: pure, no store."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from infra.ports import LogRecord
from projections.conflicts import TABLE, group_conflicts, iso_utc, receipt_by_sop_rows
from schemas import codec
from schemas.events import (
    BlobRef,
    Envelope,
    ReferencedSOP,
    Source,
    StorageCommitmentRequested,
)
from tests.unit.test_codec import instance


def record_of(envelope: Envelope, partition: int = 1, offset: int = 9) -> LogRecord:
    return LogRecord(partition, offset, envelope.key, codec.encode(envelope))


def ddl_columns() -> list[str]:
    sql = resources.files("schemas").joinpath("ddl/003_receipt_by_sop.sql").read_text()
    found = re.search(r"\{suffix\} \((.*)\) ENGINE", sql, flags=re.DOTALL)
    assert found is not None
    return re.findall(r"^\s+(\w+) ", found.group(1), flags=re.MULTILINE)


def test_one_row_per_instance_stored_with_site_source_and_log_position() -> None:
    sha = "cd" * 32
    event = instance(blob=BlobRef(f"instances/cd/cd/{sha}.dcm", sha, 2000, 300))
    envelope = Envelope.of(event, key="1.2", site="SITE-B", node="node-7")
    decoded = codec.decode(record_of(envelope).value)
    first = receipt_by_sop_rows(record_of(envelope), decoded).tables
    second = receipt_by_sop_rows(record_of(envelope), decoded).tables
    assert first == second  # pure: the same event gives the same row, same version
    [row] = first[TABLE]
    assert list(row) == ddl_columns()
    assert (row["sop_instance_uid"], row["dataset_sha256"]) == ("1.2.3.4", sha)
    assert (row["partition"], row["offset"], row["version"]) == (1, 9, 9)
    assert (row["site"], row["node"], row["calling_ae"]) == ("SITE-B", "node-7", "MOD")
    assert (row["study_instance_uid"], row["series_instance_uid"]) == ("1.2", "1.2.3")
    assert row["occurred_at"].tzinfo is not None


def test_other_event_types_contribute_no_row() -> None:
    request = StorageCommitmentRequested(
        transaction_uid="1.9",
        items=[ReferencedSOP("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")],
        source=Source("DIMSE", calling_ae="MOD"),
        log_end=[],
    )
    envelope = Envelope.of(request, key="1.9")
    assert receipt_by_sop_rows(record_of(envelope), envelope).tables == {}


def receipt(uid: str, sha: str, offset: int, site: str = "A", **more: Any) -> dict[str, Any]:
    return {
        "sop_instance_uid": uid,
        "dataset_sha256": sha,
        "partition": 0,
        "offset": offset,
        "study_instance_uid": more.get("study", "1.2"),
        "series_instance_uid": more.get("series", "1.2.3"),
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "blob_key": f"instances/{sha}.dcm",
        "site": site,
        "node": "n",
        "protocol": "DIMSE",
        "calling_ae": f"AE-{site}",
        "called_ae": "CHRONICLE",
        "peer": "",
        "occurred_at": datetime(2025, 1, 2, 3, 4, 5, offset, tzinfo=UTC),
    }


def test_versions_in_log_order_with_their_receipts_and_the_current_one() -> None:
    rows = [
        receipt("1.5", "aa", 3, "A"),
        receipt("1.5", "bb", 4, "B", series="1.2.9"),
        receipt("1.5", "aa", 8, "C"),  # the first version arrives again, from a third site
    ]
    [conflict] = group_conflicts(rows, {"1.5": "aa"})
    older, newer = conflict.versions
    assert conflict.current is older  # re-sent last: newest by log order again
    assert [v.dataset_sha256 for v in conflict.versions] == ["aa", "bb"]
    assert [(r.site, r.offset) for r in older.receipts] == [("A", 3), ("C", 8)]
    assert newer.series_instance_uid == "1.2.9" and not newer.current
    listed = conflict.to_json()
    assert listed["current_sha256"] == "aa"
    assert listed["versions"][0]["site"] == "A"  # first receipt, flat
    assert listed["versions"][0]["received_at"] == "2025-01-02T03:04:05.000003Z"
    assert listed["versions"][1]["calling_ae"] == "AE-B"


def test_a_receipt_read_twice_before_a_merge_counts_once() -> None:
    rows = [receipt("1.5", "aa", 3), receipt("1.5", "aa", 3), receipt("1.5", "bb", 4)]
    [conflict] = group_conflicts(rows, {"1.5": "bb"})
    assert [len(v.receipts) for v in conflict.versions] == [1, 1]


def test_a_rejected_instance_has_no_current_version() -> None:
    [conflict] = group_conflicts([receipt("1.5", "aa", 1), receipt("1.5", "bb", 2)], {})
    assert conflict.current is None
    assert conflict.to_json()["current_sha256"] == ""


def test_received_times_print_as_utc_whatever_form_the_index_gives() -> None:
    expected = "2025-01-02T03:04:05.000000Z"
    assert iso_utc(datetime(2025, 1, 2, 3, 4, 5)) == expected  # naive: UTC
    assert iso_utc("2025-01-02T03:04:05+00:00") == expected  # through a worker's proxy
    assert iso_utc("2025-01-02T04:04:05.000000+01:00") == expected


@given(
    st.lists(
        st.tuples(st.sampled_from(["1.1", "1.2", "1.3"]), st.sampled_from(["aa", "bb", "cc"])),
        min_size=1,
        max_size=30,
    )
)
def test_every_receipt_lands_once_under_its_uid_and_version(pairs: list[tuple[str, str]]) -> None:
    rows = sorted(
        (receipt(uid, sha, offset) for offset, (uid, sha) in enumerate(pairs)),
        key=lambda row: (row["sop_instance_uid"], row["offset"]),
    )
    current = {uid: sha for uid, sha in pairs}  # the last receipt of each UID
    conflicts = group_conflicts(rows, current)
    assert [c.sop_instance_uid for c in conflicts] == sorted({uid for uid, _ in pairs})
    for conflict in conflicts:
        kept = [(uid, sha) for uid, sha in pairs if uid == conflict.sop_instance_uid]
        assert [v.dataset_sha256 for v in conflict.versions] == list(
            dict.fromkeys(s for _, s in kept)
        )
        assert sum(len(v.receipts) for v in conflict.versions) == len(kept)
        assert sum(v.current for v in conflict.versions) == 1
        for version in conflict.versions:
            offsets = [r.offset for r in version.receipts]
            assert offsets == sorted(offsets)
