"""The per-process filter of SOP Instance UIDs with a receipt: it holds every
UID stored up to the position asked about (it may hold a few more), follows
the log as the projections move, and hashes as ClickHouse does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import stored_sops
from api.stored_sops import FOLLOW_MAX, Bloom, StoredSops, uid_hash
from infra.ports import ProjectionStore
from tests.unit import test_pending_studies as pending
from tests.unit.test_members import instance_event

_UIDS = st.lists(
    st.from_regex(r"1\.2\.[0-9]{1,20}(\.[0-9]{1,8}){0,3}", fullmatch=True), max_size=60
)


#: The pending-study tests' index (a module-scoped fixture: one per module).
index = pending.index


def test_the_hash_is_clickhouses(index: ProjectionStore) -> None:
    uids = ["1.2.3", "1.2.826.0.1.3680043.9.7433.2.0.1.1", "9" * 64]
    for uid in uids:
        [(theirs,)] = index.query("SELECT reinterpretAsUInt64(MD5({u:String}))", {"u": uid})
        assert uid_hash(uid) == theirs


@settings(max_examples=50, deadline=None)
@given(built=_UIDS, added=_UIDS)
def test_the_filter_holds_every_uid_put_in(built: list[str], added: list[str]) -> None:
    bloom = Bloom(len(built))
    bloom.add_hashes(np.array([uid_hash(uid) for uid in built], dtype=np.uint64))
    for uid in added:
        bloom.add(uid)
    assert all(uid in bloom for uid in built + added)


def test_few_uids_never_put_in_are_held() -> None:
    bloom = Bloom(10_000)
    bloom.add_hashes(np.array([uid_hash(f"1.2.{n}") for n in range(10_000)], dtype=np.uint64))
    held = sum(f"1.3.{n}" in bloom for n in range(10_000))
    assert held < 300  # about 1 % by design, 3 % allowed


class Archive(pending.Archive):
    """The pending-study tests' archive, with a filter of its own."""

    def __init__(self, folder: Path, index: ProjectionStore) -> None:
        super().__init__(folder, index)
        self.stored = StoredSops(self.log, index)

    def store(self, *sops: int) -> None:
        self.log.append([("k", instance_event(1, 1, sop, {})) for sop in sops])
        self.projector.run_until(self.log.end())

    def held(self, *sops: int) -> set[str]:
        """Of these SOPs, those the filter may hold at the projector's position."""
        at = self.projector.checkpoint()
        return self.stored.may_hold([f"1.3.{sop}" for sop in sops], at)


@pytest.fixture
def archive(index: ProjectionStore, tmp_path: Path) -> Iterator[Archive]:
    made = Archive(tmp_path, index)
    yield made
    made.close()


def test_before_it_is_built_every_uid_is_asked(archive: Archive) -> None:
    archive.store(1)
    archive.stored._not_before = float("inf")  # no build on a thread here
    assert archive.held(1, 2, 3) == {"1.3.1", "1.3.2", "1.3.3"}


def test_built_it_holds_the_stored_uids_and_follows_the_log(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stored_sops, "PAGE", 2)  # read in pages of two UIDs
    archive.store(1, 2, 4, 5, 6)
    archive.stored.build(archive.projector.checkpoint())
    assert archive.held(1, 2, 3, 4, 5, 6) == {"1.3.1", "1.3.2", "1.3.4", "1.3.5", "1.3.6"}
    archive.store(3)  # projected after the build: followed from the log
    assert archive.held(3, 7) == {"1.3.3"}


def test_far_behind_it_is_built_again_and_asks_meanwhile(archive: Archive) -> None:
    archive.store(1)
    archive.stored.build(archive.projector.checkpoint())
    archive.stored._not_before = float("inf")
    far = {0: archive.log.end()[0] + FOLLOW_MAX + 1}
    assert archive.stored.may_hold(["1.3.9"], far) == {"1.3.9"}


def test_a_uid_answered_not_held_is_held_once_its_receipt_is_followed(archive: Archive) -> None:
    archive.store(1)
    archive.stored.build(archive.projector.checkpoint())
    assert archive.held(8) == set()  # answered, and that answer kept...
    archive.store(8)
    assert archive.held(8) == {"1.3.8"}  # ...until its receipt is followed


def test_a_filter_built_again_answers_afresh(archive: Archive) -> None:
    archive.store(1)
    archive.stored.build(archive.projector.checkpoint())
    assert archive.held(9) == set()
    archive.log.append([("k", instance_event(1, 1, 9, {}))])
    archive.projector.run_until(archive.log.end())
    archive.stored.build(archive.projector.checkpoint())  # past the log: nothing to follow
    assert archive.held(9) == {"1.3.9"}
