"""Study and series statistics follow the instances, moves and replays included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from api import matching
from api.catalog import list_metadata
from api.wiring import Archive, open_archive
from infra.settings import Settings
from projections.replay import replay
from schemas.events import Source
from tests.support import make_ct, write_part10

IMPORT = Source(protocol="IMPORT")


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = open_archive(Settings(data_dir=tmp_path / "data"))
    yield opened
    opened.close()


def _store(archive: Archive, tmp_path: Path, **uids: str) -> None:
    ds = make_ct(rows=4, cols=4, **uids)
    ds.InstanceNumber = 1 + len(list(tmp_path.glob("*.dcm")))  # a new dataset hash each time
    path = write_part10(ds, tmp_path / f"{generate_uid()}.dcm")
    archive.ingest.store_part10_file(path, source=IMPORT)


def _studies(archive: Archive) -> dict[str, int]:
    assert archive.read_barrier()
    query = matching.parse_qido("STUDY", [("includefield", "NumberOfStudyRelatedInstances")])
    found = matching.search(archive.index, query)
    return {r["0020000D"]["Value"][0]: r["00201208"]["Value"][0] for r in found}


def _series(archive: Archive, study: str) -> dict[str, int]:
    query = matching.parse_qido(
        "SERIES", [("includefield", "NumberOfSeriesRelatedInstances")], study_uid=study
    )
    found = matching.search(archive.index, query)
    return {r["0020000E"]["Value"][0]: r["00201209"]["Value"][0] for r in found}


def test_counts_follow_stores_and_an_instance_that_moves_empties_its_old_study(
    archive: Archive, tmp_path: Path
) -> None:
    a, b = generate_uid(), generate_uid()
    series_a, series_b, moving = generate_uid(), generate_uid(), generate_uid()
    _store(archive, tmp_path, study_uid=a, series_uid=series_a, sop_uid=moving)
    _store(archive, tmp_path, study_uid=b, series_uid=series_b)
    assert _studies(archive) == {a: 1, b: 1}
    # A newer version of the same instance names study b: a is left with nothing.
    _store(archive, tmp_path, study_uid=b, series_uid=series_b, sop_uid=moving)
    assert _studies(archive) == {b: 2}
    assert _series(archive, b) == {series_b: 2}
    assert _series(archive, a) == {}
    # /metadata reads instance_member: the place left is hidden, live and after replay.
    assert _metadata_sops(archive, a, series_a) == []
    assert moving in _metadata_sops(archive, b, series_b)
    archive.projector.stop()
    replay(archive.log, archive.index, archive.blobs)
    archive.projector.reload()
    assert _metadata_sops(archive, a, series_a) == []
    assert len(_metadata_sops(archive, b, series_b)) == 2


def _metadata_sops(archive: Archive, study: str, series: str) -> list[str]:
    assert archive.read_barrier()
    rows = list_metadata(archive.index, study, series)
    assert all(row.metadata_json.startswith("{") for row in rows)
    return [row.sop_instance_uid for row in rows]


def test_replay_rebuilds_the_same_statistics(archive: Archive, tmp_path: Path) -> None:
    study = generate_uid()
    for _ in range(3):
        _store(archive, tmp_path, study_uid=study, series_uid=generate_uid())
    before = _studies(archive)
    archive.projector.stop()
    replay(archive.log, archive.index, archive.blobs)
    archive.projector.reload()
    assert _studies(archive) == before == {study: 3}
