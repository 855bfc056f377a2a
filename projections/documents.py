"""Each series' /metadata as one prepared document (series_metadata, migration 008).

A viewer asks for a series' /metadata once it is complete. Built per request
from instance_member that is a key range of ~100 rows and a Python row each;
here it is one row and one column. Documents are built in SQL from
instance_member's live rows, in the order /metadata answers (instance number,
absent last, then SOP Instance UID), with every relative BulkDataURI made
absolute under the instance's URL except for the base, left as BASE_MARK.

Freshness rests on stale marks: a batch that writes member rows of a series
(an instance stored there, or a tombstone for one that left) writes a row with
an empty document and a newer version in the same batch, so readers fall
back to instance_member at once. A series already waiting for its document
needs no second mark (nothing was built since the first), so a series
receiving instances batch after batch is marked once. The live projector builds the document again
once the series has been quiet for QUIET_SECONDS (`QuietSeries`): a series
still receiving instances is not rebuilt per batch. Versions come from one
projector's clock (`DocumentClock`), taken before a build reads its rows, so a
mark written after the read always wins over that document.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from infra.ports import ProjectionStore
from projections.rows import Row

#: Stands for the request's base URL (…/dicomweb) in a stored document.
BASE_MARK = "\x00"
#: A series is rebuilt once no batch has touched it for this long.
QUIET_SECONDS = 0.5
#: Series remembered as waiting for a document (least recently touched dropped:
#: such a series keeps its stale mark and is read from instance_member).
QUIET_MAX = 4096
#: Series per build statement.
BUILD_MAX = 64
#: Studies per statement when replay builds every document.
REPLAY_STUDIES = 500

#: (Study Instance UID, Series Instance UID)
Series = tuple[str, str]

_RELATIVE = '"BulkDataURI":"bulkdata/'
_PART = (
    "if(metadata = '', '{}', replaceAll(metadata, '" + _RELATIVE + "', concat("
    "'\"BulkDataURI\":\"\\0/studies/', study_instance_uid, '/series/', series_instance_uid,"
    " '/instances/', sop_instance_uid, '/bulkdata/')))"
)
#: A row a document cannot hold: metadata in a sidecar blob, a NUL, or a
#: BulkDataURI that is not relative (api.wado.absolute_metadata rewrites those).
_UNFIT = (
    "sidecar_key != '' OR position(metadata, '\\0') > 0"
    " OR countSubstrings(metadata, '\"BulkDataURI\"')"
    " != countSubstrings(metadata, '" + _RELATIVE + "')"
)


def build_sql(suffix: str, where: str) -> str:
    """INSERT every live series matching `where` (over instance_member) as a document."""
    ordered = (
        "arrayMap(x -> x.4, arraySort(x -> (x.1, x.2, x.3), groupArray("
        f"(isNull(instance_number), ifNull(instance_number, 0), sop_instance_uid, {_PART}))))"
    )
    return (
        f"INSERT INTO series_metadata{suffix}"
        " (study_instance_uid, series_instance_uid, version, document)"
        " SELECT study_instance_uid, series_instance_uid, {version:UInt64},"
        f" concat('[', arrayStringConcat({ordered}, ','), ']')"
        f" FROM instance_member{suffix} FINAL WHERE hidden = 0 AND ({where})"
        f" GROUP BY study_instance_uid, series_instance_uid HAVING countIf({_UNFIT}) = 0"
    )


def series_of(member_rows: Iterable[Row]) -> list[Series]:
    """The series these instance_member rows (live or tombstones) are in."""
    return sorted(
        {(str(r["study_instance_uid"]), str(r["series_instance_uid"])) for r in member_rows}
    )


def stale_marks(series: Iterable[Series], version: int) -> list[Row]:
    """One mark per series: its document, if any, no longer holds."""
    return [
        {"study_instance_uid": study, "series_instance_uid": uid, "version": version,
         "document": ""}
        for study, uid in series
    ]  # fmt: skip


def build(index: ProjectionStore, suffix: str, series: Iterable[Series], version: int) -> None:
    """Documents for these series, from their live rows now (none for an empty one)."""
    wanted = sorted(set(series))
    # Studies narrow the key range; the series pairs are a superset, and an
    # extra document built from current rows is as right as any.
    sql = build_sql(
        suffix,
        "study_instance_uid IN {studies:Array(String)}"
        " AND series_instance_uid IN {series:Array(String)}",
    )
    for start in range(0, len(wanted), BUILD_MAX):
        chunk = wanted[start : start + BUILD_MAX]
        index.command(
            sql,
            {
                "version": version,
                "studies": sorted({study for study, _ in chunk}),
                "series": sorted({uid for _, uid in chunk}),
            },
        )


def build_all(index: ProjectionStore, suffix: str, version: int) -> None:
    """Every series' document (replay), a few hundred studies per statement so
    no statement holds a large share of the archive's metadata at once."""
    studies = [
        str(row[0])
        for row in index.query(
            f"SELECT DISTINCT study_instance_uid FROM instance_member{suffix}"
            " ORDER BY study_instance_uid"
        )
    ]
    sql = build_sql(suffix, "study_instance_uid BETWEEN {low:String} AND {high:String}")
    for start in range(0, len(studies), REPLAY_STUDIES):
        chunk = studies[start : start + REPLAY_STUDIES]
        index.command(sql, {"version": version, "low": chunk[0], "high": chunk[-1]})


class DocumentClock:
    """Versions for marks and documents: nanoseconds, strictly increasing, and
    above every version the table holds (`at_least`), so a wall clock stepped
    back between two processes cannot let an old document outrank a new mark."""

    def __init__(self) -> None:
        self._last = 0

    def at_least(self, floor: int) -> None:
        self._last = max(self._last, floor)

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns())
        return self._last


def newest_version(index: ProjectionStore, suffix: str) -> int:
    rows = index.query(f"SELECT max(version) FROM series_metadata{suffix}")
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


class QuietSeries:
    """Series touched since their document was last built, by when."""

    def __init__(self, quiet: float = QUIET_SECONDS, bound: int = QUIET_MAX) -> None:
        self._quiet = quiet
        self._bound = bound
        self._touched: OrderedDict[Series, float] = OrderedDict()
        #: Waiting again after a failed build, which may have written their documents.
        self._unmarked: set[Series] = set()

    def touch(self, series: Iterable[Series], now: float | None = None) -> None:
        """These series were touched by a batch, which wrote their marks if needed."""
        self._add(series, now, unmarked=False)

    def retry(self, series: Iterable[Series], now: float | None = None) -> None:
        """A build of these failed part-way: build them again, mark them when touched."""
        self._add(series, now, unmarked=True)

    def _add(self, series: Iterable[Series], now: float | None, *, unmarked: bool) -> None:
        at = time.monotonic() if now is None else now
        for one in series:
            self._touched[one] = at
            self._touched.move_to_end(one)
            if unmarked:
                self._unmarked.add(one)
            else:
                self._unmarked.discard(one)
        while len(self._touched) > self._bound:
            self._unmarked.discard(self._touched.popitem(last=False)[0])

    def waiting(self, series: Series) -> bool:
        """Marked and not built since: a batch touching it needs no new mark."""
        return series in self._touched and series not in self._unmarked

    def due(self, now: float | None = None) -> list[Series]:
        """Series quiet long enough, taken out (put them back if their build fails)."""
        at = time.monotonic() if now is None else now
        ready = [one for one, touched in self._touched.items() if at - touched >= self._quiet]
        for one in ready:
            del self._touched[one]
            self._unmarked.discard(one)
        return ready

    def next_due(self, now: float | None = None) -> float | None:
        """Seconds until the next series is due; None when none waits."""
        if not self._touched:
            return None
        at = time.monotonic() if now is None else now
        oldest = next(iter(self._touched.values()))
        return max(0.0, oldest + self._quiet - at)

    def forget(self) -> None:
        self._touched.clear()
        self._unmarked.clear()
