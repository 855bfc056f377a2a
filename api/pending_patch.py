"""The rows pending events give the studies they change, without waiting for the projector.

A study search that pending events could change used to wait for the
projector (a batch and a half, ~80 ms under a steady C-STORE load) and then
refresh its process's study memory (~30-150 ms through the owner): during the
soak those ~1.5% of searches made the QIDO p99 ten times its isolated value.
Here such a search computes the rows of those few studies as the projector
will, from what the index holds now and the pending events, and answers from
the memory's rows with those in place of theirs.

The projector's own rule (`projections.stats`): a study's live instances are
the instances whose newest version (the highest log offset) names the study
and is not hidden; its attributes are those of its newest `study` row. The
index is read for the instances that ever were in these studies
(`instance_member`, a key range) and for every pending SOP Instance UID,
newest version each (FINAL); each pending event is then one more version of
its instance. The newest of the two wins, so an event the projector has
written meanwhile counts once, and whatever the index holds past the
pending events is a later log end's state (`pending_studies`' promise).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from api.study_memory import DERIVED_COLUMNS, PN_COLUMNS, TM_COLUMNS
from api.study_snapshot import Snapshot
from infra.ports import ProjectionStore
from projections.stats import STUDY_ATTRIBUTES, answer_of


class Pending(NamedTuple):
    """One pending InstanceStored, as the patch reads it."""

    study: str
    series: str
    sop: str
    modality: str
    sop_class: str
    version: int
    attributes: dict[str, Any]  # its study row (projections.rows)
    #: `attributes` less the version, as bytes: the events of one study nearly
    #: always carry the same, checked once per search (api.pending_studies).
    attributes_key: bytes


class Version(NamedTuple):
    """An instance's newest version as the patch counts it."""

    version: int
    study: str
    series: str
    modality: str
    sop_class: str
    hidden: bool


#: A study's newest attributes: their version (-1: none), and the row with
#: the values SQL derives (None: none, or not derivable here).
Attributes = tuple[int, "dict[str, Any] | None"]
NO_ATTRIBUTES: Attributes = (-1, None)

_INSTANCES_SQL = (
    "SELECT sop_instance_uid, version, study_instance_uid, series_instance_uid, modality,"
    " sop_class_uid, hidden FROM instance FINAL WHERE sop_instance_uid IN"
    " (SELECT sop_instance_uid FROM instance_member"
    " WHERE study_instance_uid IN {studies:Array(String)}"
    " UNION ALL SELECT arrayJoin({sops:Array(String)}))"
)
_STUDIES_SQL = (
    f"SELECT study_instance_uid, version, {', '.join([*STUDY_ATTRIBUTES, *DERIVED_COLUMNS])}"
    " FROM study FINAL WHERE study_instance_uid IN {studies:Array(String)}"
)
Known = tuple[dict[str, Version], dict[str, Attributes]]


def patched(
    index: ProjectionStore,
    snapshot: Snapshot,
    pending: Sequence[Pending],
    studies: Iterable[str],
    known: Known | None = None,
) -> Snapshot | None:
    """`snapshot` with the rows of `studies` as the projector will write them
    once `pending` (every pending event, in log order) is projected; None when
    a value is one Python cannot derive as ClickHouse does (non-ASCII).
    `known`: their instances and attributes with `pending` counted
    (api.pending_tally), else read from the index here."""
    wanted = sorted(set(studies))
    versions, attributes = known if known is not None else from_index(index, wanted, pending)
    rows: list[dict[str, Any]] = []
    for study in wanted:
        _, row = attributes.get(study, NO_ATTRIBUTES)
        if row is None:
            return None
        rows.append(_row(study, row, [v for v in versions.values() if v.study == study]))
    return snapshot.patched(rows)


def from_index(index: ProjectionStore, studies: list[str], pending: Sequence[Pending]) -> Known:
    """What the index holds of `studies` and of the pending SOP Instance UIDs,
    with the pending events counted (the newest version wins)."""
    versions = index_versions(index, studies, sorted({event.sop for event in pending}))
    attributes = index_attributes(index, studies)
    wanted = set(studies)
    for event in pending:
        _count_version(versions, event)
        if event.study in wanted:
            held = attributes.get(event.study, NO_ATTRIBUTES)
            attributes[event.study] = _newer_attributes(held, event)
    return versions, attributes


def count_event(
    study: str, versions: dict[str, Version], attributes: Attributes, event: Pending
) -> Attributes:
    """Count `event` in one study's tally (`versions`, changed in place): its
    instance when it stores into the study or moves one of its instances
    away; its attributes, returned, when it stores into the study."""
    if event.study == study or event.sop in versions:
        _count_version(versions, event)
    return _newer_attributes(attributes, event) if event.study == study else attributes


def index_versions(
    index: ProjectionStore, studies: list[str], sops: list[str]
) -> dict[str, Version]:
    """The index's newest version of every instance `studies` ever held and of `sops`."""
    return {  # FINAL: one row, the newest version, per SOP Instance UID
        str(sop): Version(
            int(version), str(study), str(series), str(modality), str(sop_class), bool(hidden)
        )
        for sop, version, study, series, modality, sop_class, hidden in index.query(
            _INSTANCES_SQL, {"studies": studies, "sops": sops}
        )
    }


def index_attributes(index: ProjectionStore, studies: list[str]) -> dict[str, Attributes]:
    """Each study's newest attributes in the index, with the values SQL derives."""
    return {
        str(row["study_instance_uid"]): (int(row["version"]), row)
        for row in index.query_dicts(_STUDIES_SQL, {"studies": studies})
    }


def _count_version(versions: dict[str, Version], event: Pending) -> None:
    held = versions.get(event.sop)
    if held is None or event.version > held.version:
        versions[event.sop] = Version(
            event.version, event.study, event.series, event.modality, event.sop_class, False
        )


def _newer_attributes(held: Attributes, event: Pending) -> Attributes:
    """A pending event's attributes are the study's when they are newer."""
    if event.version > held[0]:
        return event.version, derived(event.attributes)
    return held


def derived(attributes: dict[str, Any]) -> dict[str, Any] | None:
    """A pending event's study row with the values SQL derives (lowered names,
    normal-form times), or None when they are not ASCII (ClickHouse lowers
    and cuts UTF-8 as Python might not)."""
    extra: dict[str, Any] = {}
    for pn in PN_COLUMNS:
        value = str(attributes.get(pn, ""))
        if not value.isascii():
            return None
        extra[f"{pn}_lower"] = value.lower()
    for tm in TM_COLUMNS:
        value = str(attributes.get(tm, ""))
        if not value.isascii():
            return None
        extra[f"{tm}_tm"] = normal_time(value)
    return {**attributes, **extra}


def normal_time(stored: str) -> str:
    """api.query_sql._tm_sql in Python, for ASCII: 'HHMMSS.FFFFFF'."""
    t = stored.replace(":", "")
    return t[:6].ljust(6, "0") + "." + t[7:13].ljust(6, "0")


def _row(study: str, attributes: dict[str, Any], live: list[Version]) -> dict[str, Any]:
    """study_stats' row for the study's newest `attributes` and `live` instances."""
    live = [v for v in live if not v.hidden]
    modalities = sorted({v.modality for v in live})
    sop_classes = sorted({v.sop_class for v in live})
    n_series, n_instances = len({v.series for v in live}), len(live)
    # Kept answers are keyed by packed attributes and version (api.study_answers):
    # a version of its own per tally, below every real one, keeps them apart.
    tally = (n_series, n_instances, tuple(modalities), tuple(sop_classes))
    return {
        **attributes,
        "study_instance_uid": study,
        "version": -1 - (hash(tally) & (2**62 - 1)),
        "answer": answer_of(study, [attributes[c] for c in STUDY_ATTRIBUTES]),
        "n_series": n_series,
        "n_instances": n_instances,
        "modalities": modalities,
        "sop_classes": sop_classes,
    }
