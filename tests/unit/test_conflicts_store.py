"""The conflict report on real embedded stores: two sites' ingest services on one log.

SQLite log, folder blobs and chDB in this process: the report lists each UID
kept with different datasets, says which version queries show, is unchanged
when every event is applied again (idempotent) and after `replay`.
"""

from __future__ import annotations

from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from infra.errors import Invalid
from infra.factory import open_blob_store, open_event_log, open_projection_store
from infra.ports import BlobStore, EventLog, ProjectionStore
from ingest.service import IngestService, StoreOutcome
from projections.conflicts import TABLE, list_conflicts
from projections.replay import replay
from projections.runner import Projector
from schemas.events import Source
from tests.support import make_ct, write_part10


@dataclass
class Stores:
    log: EventLog
    blobs: BlobStore
    index: ProjectionStore
    folder: Path

    def site(self, name: str) -> IngestService:
        return IngestService(self.log, self.blobs, site=name, node=f"node-{name}")

    def project(self, name: str = "levels") -> None:
        Projector(self.log, self.index, blobs=self.blobs, name=name).run_until(self.log.end())


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    folder = tmp_path_factory.mktemp("conflicts")
    opened = Stores(
        open_event_log(f"sqlite://{folder / 'log.db'}"),
        open_blob_store(f"file://{folder / 'blobs'}"),
        open_projection_store(f"chdb://{folder / 'index'}"),
        folder,
    )
    yield opened
    opened.index.close()
    opened.blobs.close()
    opened.log.close()


def store(stores: Stores, site: str, ae: str, ds: Dataset) -> StoreOutcome:
    path = write_part10(ds, stores.folder / f"{generate_uid()}.dcm")
    return stores.site(site).store_part10_file(path, source=Source("DIMSE", calling_ae=ae))


def edited(ds: Dataset, **attrs: Any) -> Dataset:
    """The same instance (same UIDs) with a different dataset."""
    copy = deepcopy(ds)
    for keyword, value in attrs.items():
        setattr(copy, keyword, value)
    return copy


@pytest.fixture(scope="module")
def stored(stores: Stores) -> dict[str, list[StoreOutcome]]:
    """Three instances, each sent in one of the ways a multi-site archive sees them."""
    study, series = generate_uid(), generate_uid()
    same, changed, resent = (
        make_ct(study, series, uid, rows=8, cols=8)
        for uid in sorted(generate_uid() for _ in range(3))
    )
    outcomes = {
        "same": [store(stores, "A", "MOD-A", same), store(stores, "B", "MOD-B", same)],
        "edited": [
            store(stores, "A", "MOD-A", changed),
            store(stores, "B", "MOD-B", edited(changed, StudyDescription="edited")),
        ],
        "resent": [
            store(stores, "A", "MOD-A", resent),
            store(stores, "A", "MOD-A", edited(resent, InstanceNumber=2)),
            store(stores, "B", "MOD-B", resent),
        ],
    }
    stores.project()
    return outcomes


def test_only_uids_with_two_datasets_are_conflicts_and_the_newest_is_current(
    stores: Stores, stored: dict[str, list[StoreOutcome]]
) -> None:
    assert stored["same"][1].duplicate and not stored["edited"][1].duplicate
    page = list_conflicts(stores.index)
    uids = [c.sop_instance_uid for c in page.conflicts]
    assert uids == [
        stored["edited"][0].event.sop_instance_uid,
        stored["resent"][0].event.sop_instance_uid,
    ]
    edited, resent = page.conflicts
    assert [v.receipts[0].site for v in edited.versions] == ["A", "B"]
    assert [v.receipts[0].calling_ae for v in edited.versions] == ["MOD-A", "MOD-B"]
    assert edited.current is not None
    assert edited.current.dataset_sha256 == stored["edited"][1].event.blob.sha256
    # The first dataset came back last (from site B): by log order it is current again.
    assert resent.current is not None
    assert resent.current.dataset_sha256 == stored["resent"][0].event.blob.sha256
    assert [r.site for r in resent.versions[0].receipts] == ["A", "B"]
    positions = [r.offset for v in resent.versions for r in v.receipts]
    assert sorted(positions) == sorted(o.position[1] for o in stored["resent"])


def test_pages_follow_uid_order(stores: Stores, stored: dict[str, list[StoreOutcome]]) -> None:
    first = list_conflicts(stores.index, limit=1)
    second = list_conflicts(stores.index, limit=1, offset=1)
    assert first.more and not second.more
    assert [c.sop_instance_uid for c in first.conflicts + second.conflicts] == [
        c.sop_instance_uid for c in list_conflicts(stores.index).conflicts
    ]
    assert list_conflicts(stores.index, offset=5).conflicts == []
    with pytest.raises(Invalid):
        list_conflicts(stores.index, limit=0)


def test_applying_every_event_again_changes_nothing(
    stores: Stores, stored: dict[str, list[StoreOutcome]]
) -> None:
    before = list_conflicts(stores.index).to_json()
    stores.project(name="again")  # a second projector: its own checkpoint, the same tables
    assert list_conflicts(stores.index).to_json() == before
    [(rows,)] = stores.index.query(f"SELECT count() FROM {TABLE} FINAL")
    assert rows == sum(len(outcomes) for outcomes in stored.values())


def test_replay_rebuilds_the_same_report(
    stores: Stores, stored: dict[str, list[StoreOutcome]]
) -> None:
    before = list_conflicts(stores.index).to_json()
    stores.index.command(f"TRUNCATE TABLE {TABLE}")  # only a rebuild from the log brings it back
    assert list_conflicts(stores.index).conflicts == []
    replay(stores.log, stores.index, stores.blobs)
    assert list_conflicts(stores.index).to_json() == before
