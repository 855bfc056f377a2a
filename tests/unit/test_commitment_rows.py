"""Storage commitment events: codec round trips, published schemas, projection rows.

Rows are pure functions of (record, envelope): the same event gives the same
rows, and a ReplacingMergeTree keyed like storage_commitment ends in the same
state whatever order or how often the rows arrive.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.ports import LogRecord
from projections.rows import ABSORBED, REPORTED, REQUESTED, UNDELIVERED, Row, rows_for
from schemas import codec
from schemas.events import (
    Delivery,
    Envelope,
    FailedSOP,
    ReferencedSOP,
    Source,
    StorageCommitmentReported,
    StorageCommitmentRequested,
)
from tests.unit.test_codec import instance

uids = st.from_regex(r"\A[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,6}\Z")
referenced = st.builds(ReferencedSOP, uids, uids)
reasons = st.sampled_from([0x0110, 0x0112, 0x0119, 0x0122, 0x0131, 0x0213])
REQUESTER = Source("DIMSE", calling_ae="MOD", called_ae="CHRONICLE", peer="127.0.0.1:4000")
DELIVERIES: list[Delivery] = ["same-association", "new-association", "undelivered", "absorbed"]


def validator(name: str) -> jsonschema.Draft202012Validator:
    text = resources.files("schemas").joinpath(f"jsonschema/{name}.v1.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


# Built once: building a validator costs more than validating.
REQUESTED_SCHEMA = validator("StorageCommitmentRequested")
REPORTED_SCHEMA = validator("StorageCommitmentReported")


def requested(transaction: str = "1.2.3", items: list[ReferencedSOP] | None = None) -> Envelope:
    event = StorageCommitmentRequested(
        transaction,
        items or [ReferencedSOP("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")],
        REQUESTER,
        [(0, 41)],
    )
    return Envelope.of(event, key=transaction)


def reported(
    request: Envelope,
    offset: int,
    delivery: Delivery = "same-association",
    failed: list[FailedSOP] | None = None,
) -> Envelope:
    asked = request.payload
    event = StorageCommitmentReported(
        transaction_uid=asked.transaction_uid,
        request_event_id=request.event_id,
        request_partition=0,
        request_offset=offset,
        requester=asked.source,
        items=asked.items,
        failed=failed or [],
        event_type_id=0 if delivery == "absorbed" else (2 if failed else 1),
        delivery=delivery,
        destination="MOD@127.0.0.1:104" if delivery == "new-association" else "",
        attempts=0 if delivery == "absorbed" else 1,
        detail="",
    )
    return Envelope.of(event, key=asked.transaction_uid)


def record(envelope: Envelope, offset: int) -> LogRecord:
    return LogRecord(0, offset, envelope.key, codec.encode(envelope))


def rows(envelope: Envelope, offset: int) -> list[Row]:
    decoded = codec.decode(codec.encode(envelope))
    return rows_for(record(envelope, offset), decoded, None).tables["storage_commitment"]


def replacing_merge(all_rows: list[Row]) -> dict[tuple[str, str], Row]:
    """What ReplacingMergeTree(version) ORDER BY (transaction_uid, request_event_id) keeps."""
    kept: dict[tuple[str, str], Row] = {}
    for row in all_rows:
        key = (row["transaction_uid"], row["request_event_id"])
        if key not in kept or row["version"] >= kept[key]["version"]:
            kept[key] = row
    return kept


# ------------------------------------------------------------------ codec


@settings(max_examples=50)
@given(
    transaction=uids, items=st.lists(referenced, min_size=1, max_size=5), ae=st.text(max_size=16)
)
def test_requested_round_trips_and_matches_its_schema(
    transaction: str, items: list[ReferencedSOP], ae: str
) -> None:
    event = StorageCommitmentRequested(transaction, items, Source("DIMSE", calling_ae=ae), [(0, 9)])
    envelope = Envelope.of(event, key=transaction)
    data = codec.encode(envelope)
    assert codec.decode(data) == envelope
    REQUESTED_SCHEMA.validate(json.loads(data))


@settings(max_examples=50)
@given(
    items=st.lists(referenced, min_size=1, max_size=5),
    reason=reasons,
    delivery=st.sampled_from(DELIVERIES),
)
def test_reported_round_trips_and_matches_its_schema(
    items: list[ReferencedSOP], reason: int, delivery: Delivery
) -> None:
    failed = [FailedSOP(items[0].sop_class_uid, items[0].sop_instance_uid, reason)]
    envelope = reported(requested(items=items), 5, delivery, failed)
    data = codec.encode(envelope)
    assert codec.decode(data) == envelope
    REPORTED_SCHEMA.validate(json.loads(data))


def test_peek_type_reads_the_type_without_decoding() -> None:
    assert codec.peek_type(codec.encode(requested())) == "StorageCommitmentRequested"
    assert codec.peek_type(codec.encode(Envelope.of(instance(), key="1.2"))) == "InstanceStored"
    spaced = json.dumps(json.loads(codec.encode(requested())), indent=1).encode()
    assert codec.peek_type(spaced) == "StorageCommitmentRequested"


# ------------------------------------------------------------------- rows


def test_request_then_report_rows() -> None:
    request = requested()
    [asked] = rows(request, 42)
    assert asked["state"] == REQUESTED and asked["version"] == 42
    assert (asked["request_offset"], asked["requester_ae"]) == (42, "MOD")
    assert json.loads(asked["items"]) == [
        {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3.4"}
    ]
    failed = [FailedSOP("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 0x0112)]
    [answer] = rows(reported(request, 42, "new-association", failed), 50)
    assert answer["state"] == REPORTED and answer["version"] == 50
    assert (answer["request_event_id"], answer["request_offset"]) == (request.event_id, 42)
    assert answer["items"] == asked["items"]
    assert json.loads(answer["failed"])[0]["failure_reason"] == 0x0112
    assert set(answer) == set(asked)  # a replacing row carries every column


def test_states_follow_the_delivery() -> None:
    request = requested()
    states = {d: rows(reported(request, 1, d), 2)[0]["state"] for d in DELIVERIES}
    assert states == {
        "same-association": REPORTED,
        "new-association": REPORTED,
        "undelivered": UNDELIVERED,
        "absorbed": ABSORBED,
    }


def test_rows_are_pure_and_repeatable() -> None:
    request = requested()
    assert rows(request, 3) == rows(request, 3)
    answer = reported(request, 3)
    assert rows(answer, 9) == rows(answer, 9)
    other = Envelope.of(instance(), key="1.2")
    assert "storage_commitment" not in rows_for(record(other, 1), other, None).tables


@given(
    count=st.integers(min_value=1, max_value=4),
    answered=st.lists(st.booleans(), min_size=4, max_size=4),
    order=st.randoms(use_true_random=False),
    repeats=st.lists(st.integers(min_value=0, max_value=7), max_size=8),
)
def test_any_order_and_any_repeats_end_in_the_same_state(
    count: int, answered: list[bool], order: Any, repeats: list[int]
) -> None:
    """Requests of one transaction and their reports: the merge result is order-free."""
    events: list[tuple[Envelope, int]] = []
    offset = 0
    requests = []
    for _ in range(count):
        request = requested("1.2.840.99")
        requests.append((request, offset))
        events.append((request, offset))
        offset += 1
    for (request, at), answer in zip(requests, answered, strict=False):
        if answer:
            events.append((reported(request, at), offset))
            offset += 1
    produced = [row for envelope, at in events for row in rows(envelope, at)]
    expected = replacing_merge(produced)
    shuffled = produced + [produced[i % len(produced)] for i in repeats]
    order.shuffle(shuffled)
    assert replacing_merge(shuffled) == expected
    states = sorted(row["state"] for row in expected.values())
    assert states.count(REPORTED) == sum(answered[:count])
    assert len(expected) == count
