"""Study and series statistics, recomputed for what each projector batch touched.

`study_stats` and `series_stats` (migration 004) hold what a query returns
about a study or series as a whole and whether it has a live instance. After a
batch's rows are inserted, and before its checkpoint, the projector recomputes
the rows of every study the batch touched, including the study an instance
left when a newer version of it names another study, so a reader that waited
for the checkpoint sees statistics that match the instances. A study or series
left with no live instance gets a row of zeros (never a stale count).

Replay skips the per-batch work and rebuilds both tables once at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infra.ports import ProjectionStore

_STUDY = (
    "SELECT study_instance_uid, uniqExact(series_instance_uid) AS n_series,"
    " count() AS n_instances, arraySort(groupUniqArray(modality)) AS modalities,"
    " arraySort(groupUniqArray(sop_class_uid)) AS sop_classes,"
    " argMax(sop_instance_uid, (version, sop_instance_uid)) AS representative"
    " FROM instance{s} FINAL WHERE hidden = 0{where} GROUP BY study_instance_uid"
)
_SERIES = (
    "SELECT series_instance_uid, any(study_instance_uid) AS parent_study,"
    " count() AS n_instances,"
    " argMax(sop_instance_uid, (version, sop_instance_uid)) AS representative"
    " FROM instance{s} FINAL WHERE hidden = 0{where} GROUP BY series_instance_uid"
)
# FINAL reads past the instance table's skip indexes (ClickHouse does not use
# them under FINAL), so the studies' instances are first found without FINAL
# (bloom filter on study_instance_uid: a few granules) and FINAL then reads
# only those primary keys. The subquery's superset (any version ever in the
# studies) cannot change the answer: the outer filter still decides on the
# newest version. At 100k instances the projector spent most of each batch
# scanning the whole table here.
_IN_STUDIES = (
    " AND study_instance_uid IN {{studies:Array(String)}}"
    " AND sop_instance_uid IN (SELECT sop_instance_uid FROM instance{s}"
    " WHERE study_instance_uid IN {{studies:Array(String)}})"
)
STUDY_COLUMNS = ["study_instance_uid", "n_series", "n_instances", "modalities", "sop_classes",
                 "representative", "version"]  # fmt: skip
SERIES_COLUMNS = ["series_instance_uid", "study_instance_uid", "n_instances", "representative",
                  "version"]  # fmt: skip


def studies_of(index: ProjectionStore, suffix: str, sop_instance_uids: Iterable[str]) -> set[str]:
    """The studies these instances are in now (before a batch moves any of them)."""
    uids = sorted(set(sop_instance_uids))
    if not uids:
        return set()
    rows = index.query(
        f"SELECT DISTINCT study_instance_uid FROM instance{suffix} FINAL"
        " WHERE sop_instance_uid IN {uids:Array(String)}",
        {"uids": uids},
    )
    return {str(row[0]) for row in rows}


def refresh(index: ProjectionStore, suffix: str, studies: Iterable[str], version: int) -> None:
    """Recompute the statistics of `studies` and of every series they hold."""
    wanted = sorted(set(studies))
    if not wanted:
        return
    params = {"studies": wanted}
    where = _IN_STUDIES.format(s=suffix)
    found = index.query(_STUDY.format(s=suffix, where=where), params)
    study_rows: list[list[Any]] = [[*row, version] for row in found]
    for gone in set(wanted) - {str(row[0]) for row in found}:
        study_rows.append([gone, 0, 0, [], [], "", version])
    series_rows: list[list[Any]] = [
        [*row, version] for row in index.query(_SERIES.format(s=suffix, where=where), params)
    ]
    live = {str(row[0]) for row in series_rows}
    known = index.query(
        f"SELECT series_instance_uid, study_instance_uid FROM series_stats{suffix} FINAL"
        " WHERE study_instance_uid IN {studies:Array(String)} AND n_instances > 0",
        params,
    )
    for series, study in known:
        if str(series) not in live:
            series_rows.append([series, study, 0, "", version])
    index.insert(f"study_stats{suffix}", study_rows, STUDY_COLUMNS)
    if series_rows:
        index.insert(f"series_stats{suffix}", series_rows, SERIES_COLUMNS)


def rebuild(index: ProjectionStore, suffix: str, version: int) -> None:
    """Both tables from the whole instance table (the end of a replay)."""
    index.command(
        f"INSERT INTO study_stats{suffix} ({', '.join(STUDY_COLUMNS)}) "
        f"SELECT *, {int(version)} FROM ({_STUDY.format(s=suffix, where='')})"
    )
    index.command(
        f"INSERT INTO series_stats{suffix} ({', '.join(SERIES_COLUMNS)}) "
        f"SELECT *, {int(version)} FROM ({_SERIES.format(s=suffix, where='')})"
    )
