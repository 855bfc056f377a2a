"""Where each instance is: instance_member, ordered by study and series.

Series and study /metadata read `instance_member FINAL WHERE hidden = 0` by
one key range (schemas/ddl/007). That holds only the live instances if every
place an instance has left carries a tombstone: a row at the old place with
hidden = 1 and the version of the event that moved it, which ReplacingMergeTree
keeps over the older row there. The live projector writes them from the
places receipt_by_sop remembers (`tombstones`). Replay fills the whole table
from its instance table once that is full and then writes every tombstone at
once (`FILL_SQL`, `TOMBSTONES_SQL`: migration 007's last two statements).
"""

from __future__ import annotations

from collections.abc import Iterable

from infra.ports import ProjectionStore
from projections.rows import Row

#: (SOP Instance UID, Study Instance UID, Series Instance UID)
Place = tuple[str, str, str]

#: Tombstones for every place an instance has left, by its newest version.
TOMBSTONES_SQL = (
    "INSERT INTO instance_member{s}"
    " (study_instance_uid, series_instance_uid, sop_instance_uid, version, hidden)"
    " SELECT m.study_instance_uid, m.series_instance_uid, m.sop_instance_uid, i.version, 1"
    " FROM (SELECT DISTINCT study_instance_uid, series_instance_uid, sop_instance_uid"
    " FROM instance_member{s}) AS m"
    " INNER JOIN (SELECT sop_instance_uid, study_instance_uid, series_instance_uid, version"
    " FROM instance{s} FINAL) AS i ON m.sop_instance_uid = i.sop_instance_uid"
    " WHERE m.study_instance_uid != i.study_instance_uid"
    " OR m.series_instance_uid != i.series_instance_uid"
)


#: Every version the instance table holds, with what /metadata returns: replay
#: fills the table this way once its instance table is full (SQL, not a
#: Python row per event), then runs TOMBSTONES_SQL.
FILL_SQL = (
    "INSERT INTO instance_member{s}"
    " (study_instance_uid, series_instance_uid, sop_instance_uid, version,"
    " instance_number, metadata, sidecar_key, hidden)"
    " SELECT study_instance_uid, series_instance_uid, sop_instance_uid, version,"
    " instance_number, metadata, sidecar_key, hidden FROM instance{s}"
)


def places_of(index: ProjectionStore, suffix: str, sop_instance_uids: Iterable[str]) -> set[Place]:
    """Every place these instances have been stored at, from receipt_by_sop
    (ordered by SOP Instance UID, small granules, no FINAL needed)."""
    uids = sorted(set(sop_instance_uids))
    if not uids:
        return set()
    rows = index.query(
        "SELECT DISTINCT sop_instance_uid, study_instance_uid, series_instance_uid"
        f" FROM receipt_by_sop{suffix} WHERE sop_instance_uid IN {{uids:Array(String)}}",
        {"uids": uids},
    )
    return {(str(sop), str(study), str(series)) for sop, study, series in rows}


def tombstones(
    newest: Iterable[Row], members: Iterable[Row], earlier: Iterable[Place]
) -> list[Row]:
    """Member rows hiding every place an instance of the batch has left.

    `newest`: the batch's instance rows, one per SOP (its newest version);
    `members`: the batch's member rows (an instance may move within a batch);
    `earlier`: places_of the batch's SOPs before it."""
    now = {
        str(row["sop_instance_uid"]): (
            str(row["study_instance_uid"]),
            str(row["series_instance_uid"]),
            int(row["version"]),
        )
        for row in newest
    }
    left: set[Place] = set(earlier)
    left.update(
        (str(m["sop_instance_uid"]), str(m["study_instance_uid"]), str(m["series_instance_uid"]))
        for m in members
    )
    out: list[Row] = []
    for sop, study, series in sorted(left):
        current = now.get(sop)
        if current is None or (study, series) == current[:2]:
            continue
        out.append(
            {
                "study_instance_uid": study,
                "series_instance_uid": series,
                "sop_instance_uid": sop,
                "instance_number": None,
                "metadata": "",
                "sidecar_key": "",
                "hidden": 1,
                "version": current[2],
            }
        )
    return out
