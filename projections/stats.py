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

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from infra.ports import ProjectionStore

_STUDY = (
    "SELECT study_instance_uid, uniqExact(series_instance_uid) AS n_series,"
    " count() AS n_instances, arraySort(groupUniqArray(modality)) AS modalities,"
    " arraySort(groupUniqArray(sop_class_uid)) AS sop_classes,"
    " argMax(sop_instance_uid, (version, sop_instance_uid)) AS representative"
    " FROM instance{s} FINAL WHERE hidden = 0 GROUP BY study_instance_uid"
)
_SERIES = (
    "SELECT series_instance_uid,"
    " argMax(study_instance_uid, (version, sop_instance_uid)) AS parent_study,"
    " count() AS n_instances,"
    " argMax(sop_instance_uid, (version, sop_instance_uid)) AS representative"
    " FROM instance{s} FINAL WHERE hidden = 0 GROUP BY series_instance_uid"
)
# The live instances of the touched studies, by primary key: their SOP Instance
# UIDs from instance_member (ordered by study: a key range; migration 005) and
# then FINAL over those keys only; the outer filter decides on each instance's
# newest version, so a stale member row cannot change the answer. FINAL reads
# past skip indexes, and the instance table is ordered by SOP Instance UID: at
# 150k instances filtering it whole cost ~100 ms per projector batch.
_LIVE_IN_STUDIES = (
    "SELECT study_instance_uid, series_instance_uid, sop_instance_uid, modality,"
    " sop_class_uid, version FROM instance{s} FINAL"
    " WHERE hidden = 0 AND study_instance_uid IN {{studies:Array(String)}}"
    " AND sop_instance_uid IN (SELECT sop_instance_uid FROM instance_member{s}"
    " WHERE study_instance_uid IN {{studies:Array(String)}})"
)
#: The study's own attributes, copied from the study table beside its statistics
#: (migration 006) so a study search reads one table in one statement.
STUDY_ATTRIBUTES = ["patient_id", "issuer_of_patient_id", "patient_name", "patient_name_norm",
                    "patient_birth_date", "patient_birth_time", "patient_sex", "study_date",
                    "study_time", "accession_number", "study_id", "referring_physician_name",
                    "referring_physician_name_norm", "study_description",
                    "specific_character_set"]  # fmt: skip
#: What a study answer returns, packed in this order into `answer`: a JSON array
#: of strings (one column returned instead of fourteen; migration 006).
ANSWER_ATTRIBUTES = ["study_instance_uid", "patient_id", "issuer_of_patient_id", "patient_name",
                     "patient_birth_date", "patient_birth_time", "patient_sex", "study_date",
                     "study_time", "accession_number", "study_id", "referring_physician_name",
                     "study_description", "specific_character_set"]  # fmt: skip
STUDY_COLUMNS = ["study_instance_uid", "n_series", "n_instances", "modalities", "sop_classes",
                 "representative", "version", *STUDY_ATTRIBUTES, "answer"]  # fmt: skip
_PACKED = [STUDY_ATTRIBUTES.index(c) for c in ANSWER_ATTRIBUTES[1:]]
# The same text orjson writes (ClickHouse escapes '/' by default).
_AS_JSON = "SETTINGS output_format_json_escape_forward_slashes = 0"
SERIES_COLUMNS = ["series_instance_uid", "study_instance_uid", "n_instances", "representative",
                  "version"]  # fmt: skip


def refresh(
    index: ProjectionStore,
    suffix: str,
    studies: Iterable[str],
    version: int,
    run: Callable[[Callable[[], None], Callable[[], None]], None] | None = None,
) -> None:
    """Recompute the statistics of `studies` and of every series they hold."""
    wanted = sorted(set(studies))
    if not wanted:
        return
    params = {"studies": wanted}
    live = index.query(_LIVE_IN_STUDIES.format(s=suffix), params)
    study_rows, series_rows = aggregate(live, version)
    found = {str(row[0]) for row in study_rows}
    for gone in set(wanted) - found:
        study_rows.append([gone, 0, 0, [], [], "", version])
    attributes = {
        str(row[0]): list(row[1:])
        for row in index.query(
            f"SELECT study_instance_uid, {', '.join(STUDY_ATTRIBUTES)} FROM study{suffix} FINAL"
            " WHERE study_instance_uid IN {studies:Array(String)}",
            params,
        )
    }
    blank = [""] * len(STUDY_ATTRIBUTES)
    for row in study_rows:
        row += _with_answer(str(row[0]), attributes.get(str(row[0]), blank))
    kept = {str(row[0]) for row in series_rows}
    known = index.query(
        f"SELECT series_instance_uid, study_instance_uid FROM series_stats{suffix} FINAL"
        " WHERE study_instance_uid IN {studies:Array(String)} AND n_instances > 0",
        params,
    )
    for series, study in known:
        if str(series) not in kept:
            series_rows.append([series, study, 0, "", version])
    write(index, suffix, study_rows, series_rows, run)


def aggregate(
    live: Iterable[Sequence[Any]], version: int
) -> tuple[list[list[Any]], list[list[Any]]]:
    """Study and series rows from live instances (study, series, SOP Instance UID,
    modality, SOP class, version): what `_STUDY` and `_SERIES` compute for the
    whole table at the end of a replay, for the few studies of one batch."""
    studies: dict[str, _Tally] = {}
    series: dict[str, _Tally] = {}
    for study, serie, sop, modality, sop_class, row_version in live:
        newest = (int(row_version), str(sop))
        for tallies, key in ((studies, str(study)), (series, str(serie))):
            tallies.setdefault(key, _Tally()).add(newest, study, serie, modality, sop_class)
    study_rows = [
        [uid, len(t.series), t.count, sorted(t.modalities), sorted(t.sop_classes), t.best, version]
        for uid, t in studies.items()
    ]
    series_rows = [[uid, t.parent, t.count, t.best, version] for uid, t in series.items()]
    return study_rows, series_rows


class _Tally:
    """One study's or series' live instances: how many, which series, modalities
    and SOP classes, and the newest by (version, SOP Instance UID) with its study."""

    __slots__ = ("count", "newest", "best", "parent", "series", "modalities", "sop_classes")

    def __init__(self) -> None:
        self.count, self.newest, self.best, self.parent = 0, (-1, ""), "", ""
        self.series: set[str] = set()
        self.modalities: set[str] = set()
        self.sop_classes: set[str] = set()

    def add(
        self, newest: tuple[int, str], study: Any, series: Any, modality: Any, sop_class: Any
    ) -> None:
        self.count += 1
        if newest > self.newest:
            self.newest, self.best, self.parent = newest, newest[1], str(study)
        self.series.add(str(series))
        self.modalities.add(str(modality))
        self.sop_classes.add(str(sop_class))


def rebuild(index: ProjectionStore, suffix: str, version: int) -> None:
    """Both tables from the whole instance table (the end of a replay)."""
    attributes = ", ".join(f"st.{c}" for c in STUDY_ATTRIBUTES)
    packed = ", ".join(f"st.{c}" for c in ANSWER_ATTRIBUTES[1:])
    index.command(
        f"INSERT INTO study_stats{suffix} ({', '.join(STUDY_COLUMNS)}) "
        f"SELECT s.*, {int(version)}, {attributes},"
        f" toJSONString([s.study_instance_uid, {packed}])"
        f" FROM ({_STUDY.format(s=suffix)}) AS s"
        f" LEFT JOIN (SELECT * FROM study{suffix} FINAL) AS st"
        f" ON st.study_instance_uid = s.study_instance_uid {_AS_JSON}"
    )
    index.command(
        f"INSERT INTO series_stats{suffix} ({', '.join(SERIES_COLUMNS)}) "
        f"SELECT *, {int(version)} FROM ({_SERIES.format(s=suffix)})"
    )


def write(
    index: ProjectionStore,
    suffix: str,
    study_rows: list[list[Any]],
    series_rows: list[list[Any]],
    run: Callable[[Callable[[], None], Callable[[], None]], None] | None = None,
) -> None:
    """Insert statistics rows; `run` may run the two inserts side by side."""

    def studies() -> None:
        index.insert(f"study_stats{suffix}", study_rows, STUDY_COLUMNS)

    def series() -> None:
        if series_rows:
            index.insert(f"series_stats{suffix}", series_rows, SERIES_COLUMNS)

    if run is None:
        studies()
        series()
    else:
        run(studies, series)


def fresh_rows(
    index: ProjectionStore,
    suffix: str,
    instances: Sequence[Mapping[str, Any]],
    studies: Sequence[Mapping[str, Any]],
    version: int,
) -> tuple[list[list[Any]], list[list[Any]]] | None:
    """The statistics of a batch whose instances are all first versions and live,
    from the touched studies' and series' current rows plus the batch: no read
    of the instance table (what `refresh` spends most of a batch on). Reads
    only rows the batch does not write, so it may run beside the batch's inserts.

    The caller guarantees the SOP Instance UIDs are new (none in receipt_by_sop,
    none twice in the batch) and newer than every stored version of their study
    (one partition), and passes one row per study (the newest, as inserted:
    `written.newest_per_key`). None when the batch is not that simple (a series
    known under another study, a study without its row in the batch): then
    `refresh`.
    """
    parent: dict[str, str] = {}
    for row in instances:
        study, series = str(row["study_instance_uid"]), str(row["series_instance_uid"])
        if parent.setdefault(series, study) != study:
            return None
    attributes = {
        str(row["study_instance_uid"]): [row[c] for c in STUDY_ATTRIBUTES] for row in studies
    }
    if not set(parent.values()) <= set(attributes):
        return None
    known = _known_series(index, suffix, sorted(parent))
    if any(known.get(series, (study, 0))[0] != study for series, study in parent.items()):
        return None
    old_studies = _study_rows(index, suffix, sorted(attributes))
    live = ((r["study_instance_uid"], r["series_instance_uid"], r["sop_instance_uid"],
             r["modality"], r["sop_class_uid"], r["version"]) for r in instances)  # fmt: skip
    added_studies, added_series = aggregate(live, version)
    study_rows = []
    for uid, _, count, modalities, sop_classes, best, _ in added_studies:
        old = old_studies.get(uid)
        new_series = sum(1 for s, p in parent.items() if p == uid and known.get(s, ("", 0))[1] == 0)
        if old is not None and old["n_instances"] > 0:
            count += old["n_instances"]
            new_series += old["n_series"]
            modalities = sorted(set(old["modalities"]) | set(modalities))
            sop_classes = sorted(set(old["sop_classes"]) | set(sop_classes))
        tally = [uid, new_series, count, modalities, sop_classes, best, version]
        study_rows.append(tally + _with_answer(uid, attributes[uid]))
    series_rows = []
    for uid, study, count, best, _ in added_series:
        series_rows.append([uid, study, count + known.get(uid, ("", 0))[1], best, version])
    return study_rows, series_rows


def _known_series(
    index: ProjectionStore, suffix: str, series: list[str]
) -> dict[str, tuple[str, int]]:
    """Series with a live instance: their (study, number of live instances)."""
    rows = index.query(
        f"SELECT series_instance_uid, study_instance_uid, n_instances FROM series_stats{suffix}"
        " FINAL WHERE series_instance_uid IN {series:Array(String)} AND n_instances > 0",
        {"series": series},
    )
    return {str(uid): (str(study), int(n)) for uid, study, n in rows}


def _study_rows(
    index: ProjectionStore, suffix: str, studies: list[str]
) -> dict[str, dict[str, Any]]:
    rows = index.query(
        f"SELECT study_instance_uid, n_series, n_instances, modalities, sop_classes"
        f" FROM study_stats{suffix} FINAL WHERE study_instance_uid IN {{studies:Array(String)}}",
        {"studies": studies},
    )
    return {
        str(uid): {"n_series": int(ns), "n_instances": int(n), "modalities": m, "sop_classes": c}
        for uid, ns, n, m, c in rows
    }


def _with_answer(uid: str, values: list[Any]) -> list[Any]:
    """STUDY_ATTRIBUTES' values and the packed answer, as the row's last columns."""
    return [*values, answer_of(uid, values)]


def answer_of(uid: str, values: Sequence[Any]) -> str:
    """The packed answer (`answer`) of a study with STUDY_ATTRIBUTES' `values`."""
    return orjson.dumps([uid, *(str(values[i]) for i in _PACKED)]).decode()
