"""Replay's rows made in SQL are the Python projector's, table by table.

projections/replay_sql.py makes the rows of "plain" InstanceStored events in
SQL and leaves every other event to the Python projector. Over random logs of
plain and unusual events (person names to fold, numbers where text belongs,
times with colons, multi-valued and empty values, request attributes, frame
tables, sidecars, strings with quotes, backslashes and control characters,
commitment requests, bytes that are no event) both replays must leave every
table equal, version for version; and plain events must go by SQL."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.factory import open_projection_store
from infra.migrations import migrate
from infra.ports import EventLog, ProjectionStore
from infra.sqlite_log import SqliteEventLog
from projections import replay_sql
from projections.replay import TABLES, replay
from schemas import codec
from schemas.events import (
    BlobRef,
    Envelope,
    InstanceStored,
    ReferencedSOP,
    Source,
    StorageCommitmentRequested,
)
from tests.unit.test_members import OnePartitionLog

SHA = "cd" * 32
MAKE_ROWS = replay_sql.make_rows


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    opened = open_projection_store(f"chdb://{tmp_path_factory.mktemp('index')}")
    migrate(opened)
    yield opened
    opened.close()


_odd_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8
)  # quotes, backslashes, control characters, accents, CJK
_ascii = st.text(st.sampled_from("ABCSMITH^ ./-'\"\\=0123"), max_size=10)
_strings = st.lists(st.one_of(_ascii, _odd_text), min_size=1, max_size=3)
#: A Value array as DICOM JSON may hold it, usual or not.
_text_value = st.one_of(
    _strings,
    st.lists(st.one_of(st.none(), st.integers(-5, 5), _ascii), max_size=3),
)
_time_value = st.one_of(
    st.lists(
        st.sampled_from(["120000", "1200", "12:00:00", "093000.25", ".", "1", "", " 12"]),
        min_size=1,
        max_size=2,
    ),  # fmt: skip
    _text_value,
)
_number = st.one_of(
    st.integers(0, 65535),
    st.integers(-(2**62), 2**62),
    st.floats(0, 1000, allow_nan=False),
    st.sampled_from(["7", "1.5", "x"]),
    st.none(),
)
_group = st.one_of(_ascii, _odd_text)
_pn = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"Alphabetic": _group, "Ideographic": _group, "Phonetic": _group}
    ),  # fmt: skip
    st.none(),
    _ascii,
)
_element = st.one_of(
    st.none(),  # absent
    st.just({"vr": "SH"}),  # no Value
    st.just({"vr": "SH", "Value": "scalar"}),
)


def _maybe(tag: str, vr: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(_element, values.map(lambda v: {"vr": vr, "Value": v}))


_UNSIGNED = {"00280010", "00280011", "00280100", "00280008"}


def _integer_element(tag: str) -> st.SearchStrategy[Any]:
    numbers = _number.filter(lambda n: not (tag in _UNSIGNED and isinstance(n, int) and n < 0))
    if tag in _UNSIGNED:  # what the Python projector can write at all
        numbers = numbers.filter(lambda n: not isinstance(n, int) or n < 65536)
        numbers = numbers.filter(lambda n: not isinstance(n, float))
    return _maybe(tag, "IS", st.lists(numbers, max_size=2))


TEXT_TAGS = ("00100030", "00100032", "00100040", "00080005", "00080020", "00080050",
             "00200010", "00081030", "00080060", "0008103E", "00400244", "00400245")  # fmt: skip


@st.composite
def _metadata(draw: st.DrawFn) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for tag in TEXT_TAGS:
        meta[tag] = draw(_maybe(tag, "LO", _text_value))
    meta["00080030"] = draw(_maybe("00080030", "TM", _time_value))
    for tag in ("00100010", "00080090"):
        meta[tag] = draw(_maybe(tag, "PN", st.lists(_pn, max_size=2)))
    for tag in ("00200011", "00200013", "00280010", "00280011", "00280100", "00280008"):
        meta[tag] = draw(_integer_element(tag))
    items = st.fixed_dictionaries({"00400009": st.just({"vr": "SH", "Value": ["SPS1"]})})
    meta["00400275"] = draw(_maybe("00400275", "SQ", st.lists(items, max_size=1)))
    return {tag: element for tag, element in meta.items() if element is not None}


PLAIN = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    "00080030": {"vr": "TM", "Value": ["101010.5"]},
    "00200013": {"vr": "IS", "Value": [3]},
}


def instance_event(n: int, meta: dict[str, Any], *, study: int, frames: bool, sidecar: bool,
                   whole_second: bool) -> bytes:  # fmt: skip
    stored = InstanceStored(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"1.3.{n % 7}",  # some SOPs stored again, some moved
        series_instance_uid=f"1.2.{study}.{n % 2}",
        study_instance_uid=f"1.2.{study}",
        patient_id=f"P{study}",
        issuer_of_patient_id="",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob=BlobRef(f"instances/cd/cd/{SHA}.dcm", SHA, 1000 + n, 300),
        source=Source("DIMSE", calling_ae="MOD\u00e9", called_ae="CHRONICLE", peer="10.0.0.1:4"),
        metadata=meta,
        frames=[[(0, 10), (10, 5)]] if frames else None,
        sidecar=BlobRef(f"sidecars/{n}.json", SHA, 10, 0) if sidecar else None,
    )
    envelope = Envelope.of(stored, key=stored.study_instance_uid)
    if whole_second:
        envelope = replace(envelope, occurred_at="2026-01-02T03:04:05Z")
    return codec.encode(envelope)


def commitment_event(n: int) -> bytes:
    request = StorageCommitmentRequested(
        transaction_uid=f"2.25.{n}",
        items=[ReferencedSOP("1.2.840.10008.5.1.4.1.1.2", f"1.3.{n}")],
        source=Source("DIMSE", calling_ae="MOD", called_ae="CHRONICLE", peer="10.0.0.1:4"),
        log_end=[(0, n)],
    )
    return codec.encode(Envelope.of(request, key=request.transaction_uid))


_event = st.one_of(
    st.tuples(
        st.just("instance"),
        _metadata(),
        st.integers(1, 3),
        st.booleans(),
        st.sampled_from([False, False, False, True]),
        st.booleans(),
    ),  # fmt: skip
    st.just(("plain",)),
    st.just(("commitment",)),
    st.just(("garbage",)),
)


def _encode(n: int, drawn: tuple[Any, ...]) -> bytes:
    kind = drawn[0]
    if kind == "instance":
        _, meta, study, frames, sidecar, whole = drawn
        return instance_event(n, meta, study=study, frames=frames, sidecar=sidecar,
                              whole_second=whole)  # fmt: skip
    if kind == "plain":
        return instance_event(n, PLAIN, study=1, frames=False, sidecar=False, whole_second=False)
    if kind == "commitment":
        return commitment_event(n)
    return b'{"type": "InstanceStored", "payload": ' + str(n).encode()


def _snapshot(store: ProjectionStore) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table in TABLES:
        columns = [
            name
            for (name,) in store.query(
                "SELECT name FROM system.columns WHERE database = currentDatabase()"
                " AND table = {t:String} ORDER BY position",
                {"t": table},
            )
            # The documents' version comes from a clock, not from the log.
            if not (table == "series_metadata" and name == "version")
        ]
        # Tombstones hide the places instances left, as far as the instance
        # table's unmerged versions still tell them: background merges decide.
        live = " WHERE hidden = 0" if table == "instance_member" else ""
        out[table] = store.query(
            f"SELECT {', '.join(columns)} FROM {table} FINAL{live} ORDER BY ALL"
        )
    return out


@contextmanager
def _log(values: list[bytes], embedded: bool) -> Iterator[EventLog | OnePartitionLog]:
    """The embedded SQLite log (chDB reads its file itself) or a log in memory
    (the records staged from Python, as from Kafka)."""
    if not embedded:
        yield OnePartitionLog(values)
        return
    with tempfile.TemporaryDirectory() as folder:
        log = SqliteEventLog(Path(folder) / "log.db")
        try:
            log.append([("k", value) for value in values])
            yield log
        finally:
            log.close()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=st.lists(_event, min_size=1, max_size=12),
    batch=st.integers(1, 8),
    embedded=st.booleans(),
)
def test_sql_rows_are_the_python_projectors(
    store: ProjectionStore, events: list[tuple[Any, ...]], batch: int, embedded: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    drawn = [("plain",), *events]
    made_in_sql = 0

    def counting(index: ProjectionStore, suffix: str) -> set[tuple[int, int]]:
        nonlocal made_in_sql
        ((staged,),) = index.query(f"SELECT count() FROM event_raw{suffix}")
        left = MAKE_ROWS(index, suffix)
        made_in_sql += int(staged) - len(left)
        return left

    monkeypatch.setattr(replay_sql, "make_rows", counting)
    with _log([_encode(n, one) for n, one in enumerate(drawn)], embedded) as log:
        replay(log, store, batch=batch, in_sql=False)  # type: ignore[arg-type]
        by_python = _snapshot(store)
        assert made_in_sql == 0
        replay(log, store, batch=batch)  # type: ignore[arg-type]
    assert _snapshot(store) == by_python
    assert made_in_sql >= sum(1 for one in drawn if one[0] == "plain")


def test_an_event_sql_cannot_make_goes_to_python(store: ProjectionStore) -> None:
    odd = dict(PLAIN, **{"00080030": {"vr": "TM", "Value": ["10:10:10"]}})
    folded = dict(PLAIN, **{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Mu\u00f1oz"}]}})
    values = [instance_event(n, meta, study=1, frames=False, sidecar=False, whole_second=False)
              for n, meta in enumerate([PLAIN, odd, folded])]  # fmt: skip
    records = OnePartitionLog(values).records
    replay_sql.prepare(store, "_t")
    try:
        for table in replay_sql.TABLES:
            store.command(f"CREATE TABLE IF NOT EXISTS {table}_t AS {table}")
            store.command(f"TRUNCATE TABLE {table}_t")
        left = replay_sql.project(store, "_t", records)
        assert [record.offset for record in left] == [1, 2]
        assert store.query("SELECT study_time FROM study_t") == [("101010.500000",)]
    finally:
        replay_sql.drop(store, "_t")
        for table in replay_sql.TABLES:
            store.command(f"DROP TABLE IF EXISTS {table}_t")


def test_the_metadata_is_followed_by_the_frames_in_every_encoded_event() -> None:
    """replay_sql copies the metadata from `"metadata":` to `,"frames":`: a field
    put between them would be copied into every instance's metadata."""
    names = [field.name for field in fields(InstanceStored)]
    at = names.index("metadata")
    assert names[at : at + 3] == ["metadata", "frames", "frames_note"]
