"""Storage commitment decisions without a network: verdicts, failure reasons, delivery policy."""

from __future__ import annotations

import io
import threading
from typing import Any, BinaryIO

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset

from api.dimse.commitment import is_storage_sop_class, parse_request, report_dataset
from infra.errors import Invalid, NotFound, Unavailable
from infra.settings import RemoteAE
from projections.commitment_rules import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    RESOURCE_LIMITATION,
    SOP_CLASS_NOT_SUPPORTED,
    DeliveryFailed,
    Entry,
    HeldInstance,
    Outcome,
    Report,
    ReportPolicy,
    addresses,
    classify,
    dataset_sha256,
    deliver,
    duplicate_failures,
    judge_item,
    verify_blob,
)
from projections.rows import ABSORBED, REPORTED, REQUESTED, UNDELIVERED
from schemas.events import FailedSOP, ReferencedSOP, Source

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ITEM = ReferencedSOP(CT, "1.2.3.4")

# ---------------------------------------------------------------- verdicts


def test_a_first_request_is_new() -> None:
    assert classify("a", 10, [Entry("a", REQUESTED, 10)]) == ("new", "")
    assert classify("a", 10, []) == ("new", "")


def test_an_answered_request_is_done_whatever_its_outcome() -> None:
    for state in (REPORTED, UNDELIVERED, ABSORBED):
        assert classify("a", 10, [Entry("a", state, 10, 12)]) == ("done", "")


def test_a_request_after_the_report_is_a_duplicate() -> None:
    entries = [Entry("a", REPORTED, 1, 5), Entry("b", REQUESTED, 9)]
    assert classify("b", 9, entries) == ("duplicate", "")


def test_a_request_while_another_is_pending_is_absorbed() -> None:
    assert classify("b", 9, [Entry("a", REQUESTED, 1), Entry("b", REQUESTED, 9)]) == (
        "absorbed",
        "a",
    )
    # ... also when re-read after that other one was reported later on
    assert classify("b", 9, [Entry("a", REPORTED, 1, 20)]) == ("absorbed", "a")


def test_the_primary_is_preferred_over_absorbed_requests() -> None:
    entries = [Entry("a", REQUESTED, 1), Entry("b", ABSORBED, 3, 4)]
    assert classify("c", 9, entries) == ("absorbed", "a")


def test_after_an_undelivered_report_a_request_is_new() -> None:
    assert classify("b", 9, [Entry("a", UNDELIVERED, 1, 5)]) == ("new", "")


def test_a_later_request_does_not_make_an_earlier_one_a_retry() -> None:
    # restart: "a" re-read while "b" (later) was absorbed into it
    assert classify("a", 1, [Entry("a", REQUESTED, 1), Entry("b", ABSORBED, 5, 6)]) == (
        "new",
        "",
    )


# ---------------------------------------------------------- failure reasons


def held(sop_class: str = CT) -> HeldInstance:
    return HeldInstance(sop_class, "instances/x.dcm", "ab" * 32, 10)


def judge(item: ReferencedSOP, found: HeldInstance | None, **kw: Any) -> int | None:
    options: dict[str, Any] = {"supported": True, "fresh": True, "verify": lambda h: None}
    options.update(kw)
    return judge_item(item, found, **options)


def test_failure_reasons() -> None:
    assert judge(ITEM, held()) is None
    assert judge(ITEM, None) == NO_SUCH_OBJECT_INSTANCE
    assert judge(ITEM, None, fresh=False) == RESOURCE_LIMITATION
    assert judge(ITEM, held(MR)) == CLASS_INSTANCE_CONFLICT
    assert judge(ITEM, held(), supported=False) == SOP_CLASS_NOT_SUPPORTED
    assert judge(ITEM, held(), verify=lambda h: PROCESSING_FAILURE) == PROCESSING_FAILURE


def test_duplicates_fail_every_item_with_0x0131() -> None:
    assert duplicate_failures([ITEM, ITEM]) == [FailedSOP(CT, "1.2.3.4", 0x0131)] * 2


class Blobs:
    """A BlobStore stand-in: one blob, or an error."""

    def __init__(self, data: bytes = b"", error: Exception | None = None) -> None:
        self.data, self.error = data, error

    def get(self, key: str) -> BinaryIO:
        if self.error:
            raise self.error
        return io.BytesIO(self.data)


def test_blob_verification() -> None:
    import hashlib

    data = b"META" + b"dataset bytes"
    sha = hashlib.sha256(data[4:]).hexdigest()
    good = HeldInstance(CT, "k", sha, 4)
    assert dataset_sha256(Blobs(data), "k", 4) == sha  # type: ignore[arg-type]
    assert verify_blob(Blobs(data), good) is None  # type: ignore[arg-type]
    assert verify_blob(Blobs(data[:-1] + b"X"), good) == PROCESSING_FAILURE  # type: ignore[arg-type]
    assert verify_blob(Blobs(error=NotFound("k")), good) == PROCESSING_FAILURE  # type: ignore[arg-type]
    assert verify_blob(Blobs(error=Unavailable("down")), good) == RESOURCE_LIMITATION  # type: ignore[arg-type]


def test_supported_classes_are_the_storage_classes() -> None:
    assert is_storage_sop_class(CT)
    assert is_storage_sop_class("1.2.3.4.5")  # private: stored as sent
    assert not is_storage_sop_class("1.2.840.10008.5.1.4.31")  # Modality Worklist FIND
    assert not is_storage_sop_class("1.2.840.10008.1.20.1")


# -------------------------------------------------------------- the report


@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_report_content(outcomes: list[bool]) -> None:
    items = [ReferencedSOP(CT, f"1.2.3.{n}") for n in range(len(outcomes))]
    failed = [
        FailedSOP(i.sop_class_uid, i.sop_instance_uid, 0x0112)
        for i, ok in zip(items, outcomes, strict=True)
        if not ok
    ]
    report = Report("1.2.9", items, failed)
    assert report.event_type_id == (1 if all(outcomes) else 2)
    ds = report_dataset(report, "CHRONICLE")
    assert ds.TransactionUID == "1.2.9" and ds.RetrieveAETitle == "CHRONICLE"
    sent = [i.ReferencedSOPInstanceUID for i in ds.get("ReferencedSOPSequence", [])]
    assert sent == [i.sop_instance_uid for i, ok in zip(items, outcomes, strict=True) if ok]
    failed_sent = ds.get("FailedSOPSequence", [])
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in failed_sent] == [
        (f.sop_instance_uid, 0x0112) for f in failed
    ]
    assert ("FailedSOPSequence" in ds) == (not all(outcomes))


def action_information(**changes: Any) -> Dataset:
    info = Dataset()
    info.TransactionUID = "1.2.9"
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    info.ReferencedSOPSequence = [item]
    for keyword, value in changes.items():
        if value is None:
            delattr(info, keyword)
        else:
            setattr(info, keyword, value)
    return info


def test_parse_request() -> None:
    assert parse_request(action_information()) == ("1.2.9", [ITEM])
    for bad in (
        action_information(TransactionUID=None),
        action_information(ReferencedSOPSequence=[]),
        action_information(ReferencedSOPSequence=[Dataset()]),
    ):
        with pytest.raises(Invalid):
            parse_request(bad)
    with pytest.raises(Invalid) as too_many:
        parse_request(action_information(), max_items=0)
    assert too_many.value.status == 0x0213


# ----------------------------------------------------------------- delivery


def test_delays_back_off_and_cap() -> None:
    assert ReportPolicy(attempts=5, first_delay=1, backoff=3, max_delay=5).delays() == [
        0.0,
        1,
        3,
        5,
        5,
    ]
    assert ReportPolicy(attempts=1).delays() == [0.0]


def test_addresses_prefer_the_requesters_host() -> None:
    remotes = [RemoteAE("MOD", "10.0.0.1", 104), RemoteAE("X", "h", 1), RemoteAE("MOD", "h2", 11)]
    assert [r.host for r in addresses(remotes, "MOD", "h2:5000")] == ["h2", "10.0.0.1"]
    assert addresses(remotes, "NONE", "h:1") == []


class Courier:
    """Scripted: which routes fail; records every attempt."""

    def __init__(self, open_: bool, failures: int) -> None:
        self.open, self.failures, self.calls = open_, failures, list[str]()

    def is_open(self, association: Any) -> bool:
        return self.open

    def send_on(self, association: Any, report: Report) -> None:
        self.calls.append("same")
        self.open = False
        raise DeliveryFailed("peer went away")

    def send_to(self, remote: RemoteAE, report: Report) -> None:
        self.calls.append(str(remote))
        if len([c for c in self.calls if c != "same"]) <= self.failures:
            raise DeliveryFailed("could not be reached")


def send(
    courier: Courier, remotes: list[str], attempts: int = 3, stop: bool = False
) -> Outcome | None:
    associations = [object()]

    def open_association() -> Any:
        while associations:
            candidate = associations.pop()
            if courier.is_open(candidate):
                return candidate
        return None

    halt = threading.Event()
    if stop:
        halt.set()
    return deliver(
        courier,
        Report("1.2.9", [ITEM], []),
        open_association=open_association,
        remotes=[RemoteAE.parse(r) for r in remotes],
        requester=Source("DIMSE", calling_ae="MOD", peer="127.0.0.1:4000"),
        policy=ReportPolicy(attempts=attempts, first_delay=0.001, backoff=1),
        stop=halt,
    )


def test_same_association_first_then_the_configured_address() -> None:
    courier = Courier(open_=True, failures=1)
    outcome = send(courier, ["MOD@127.0.0.1:104"])
    assert outcome is not None
    assert courier.calls == ["same", "MOD@127.0.0.1:104", "MOD@127.0.0.1:104"]
    assert (outcome.delivery, outcome.attempts) == ("new-association", 3)


def test_every_attempt_failing_is_undelivered() -> None:
    courier = Courier(open_=False, failures=99)
    outcome = send(courier, ["MOD@127.0.0.1:104"], attempts=3)
    assert outcome is not None
    assert (outcome.delivery, outcome.attempts) == ("undelivered", 3)
    assert "could not be reached" in outcome.detail


def test_an_unconfigured_requester_is_undelivered_at_once() -> None:
    courier = Courier(open_=False, failures=0)
    outcome = send(courier, [])
    assert outcome is not None
    assert courier.calls == [] and outcome.delivery == "undelivered"
    assert "no configured address" in outcome.detail


def test_stopping_ends_the_back_off_without_an_outcome() -> None:
    courier = Courier(open_=False, failures=99)
    assert send(courier, ["MOD@127.0.0.1:104"], attempts=3, stop=True) is None
    assert courier.calls == ["MOD@127.0.0.1:104"]  # the first attempt is immediate
