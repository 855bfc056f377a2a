"""Replay's rows for plain InstanceStored events, made in SQL.

A replay spent ~140 us of Python per event (decode, rows, the Native
encoding), one core busy and the other idle: 6,000 events/s. ClickHouse turns
the same JSON into the same rows in C++ on every core. Per chunk of the log,
replay stages the raw events (`event_raw`), parses each once (`event_parsed`)
and inserts every level table, the receipt and receipt_by_sop from it.

Only events whose rows SQL is certain to make exactly as projections/rows.py
does are made here ("plain"); every other event (another type or schema
version, a sidecar, a value of a type or form these expressions do not take
— a number where text belongs, a non-ASCII person name to fold, a time with a
colon, request attributes) is left to the Python projector, which the tests
compare with this table by table. The event's metadata and frame table are
copied as the log holds them: the codec writes the envelope with orjson, whose
output orjson reads and writes back unchanged, and `"metadata":`, `,"frames":`
and `,"frames_note":` cannot occur inside a JSON string (a quote there is
escaped) nor as a DICOM JSON key.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infra.ports import LogRecord, ProjectionStore
from projections import rows as r
from schemas.events import InstanceStored

#: Blocks a chunk is staged in (event_raw's readers share them out).
BLOCKS = 4

#: Statements run side by side where they are independent (two cores here).
PARALLEL = 2

#: Staging tables, dropped at the end of a replay.
STAGING = ("event_raw", "event_parsed")

RAW_DDL = (
    "CREATE TABLE IF NOT EXISTS event_raw{s} (partition UInt32, offset UInt64, value String)"
    " ENGINE = Memory"
)

_ENVELOPE = (
    "Tuple(type String, schema_version Int64, site String, node String, event_id String,"
    " occurred_at String, payload Tuple(sop_class_uid String, sop_instance_uid String,"
    " series_instance_uid String, study_instance_uid String, patient_id String,"
    " issuer_of_patient_id String, transfer_syntax_uid String,"
    " blob Tuple(key String, sha256 String, size UInt64, dataset_offset UInt64),"
    " source Tuple(protocol String, calling_ae String, called_ae String, peer String,"
    " user String), frames_note String, sidecar String, frames_sidecar String))"
)

#: column -> tag, read as rows.text reads it.
_TEXT = {
    "patient_birth_date": r._BIRTH_DATE,
    "patient_birth_time": r._BIRTH_TIME,
    "patient_sex": r._SEX,
    "specific_character_set": r._CHARSET,
    "study_date": r._STUDY_DATE,
    "study_time_text": r._STUDY_TIME,
    "accession_number": r._ACCESSION,
    "study_id": r._STUDY_ID,
    "study_description": r._STUDY_DESCRIPTION,
    "modality": r._MODALITY,
    "series_description": r._SERIES_DESCRIPTION,
    "performed_procedure_step_start_date": r._PPS_START_DATE,
    "performed_procedure_step_start_time": r._PPS_START_TIME,
}
#: column -> (tag, digits a plain value may have, signed): rows.integer.
_INTEGER = {
    "series_number": (r._SERIES_NUMBER, 15, True),
    "instance_number": (r._INSTANCE_NUMBER, 15, True),
    "rows": (r._ROWS, 9, False),
    "columns": (r._COLUMNS, 9, False),
    "bits_allocated": (r._BITS_ALLOCATED, 4, False),
    "number_of_frames": (r._NUMBER_OF_FRAMES, 9, False),
}
#: column -> tag: rows.person_name, then rows.normalise_name.
_NAMES = {
    "patient_name": r._PATIENT_NAME,
    "referring_physician_name": r._REFERRING,
}
#: The patient's columns, in the patient and the study table.
_PATIENT = (
    "patient_id", "issuer_of_patient_id", "patient_name", "patient_name_norm",
    "patient_birth_date", "patient_birth_time", "patient_sex", "specific_character_set",
)  # fmt: skip
_TAGS = sorted({*_TEXT.values(), *(t for t, _, _ in _INTEGER.values()), *_NAMES.values(),
                r._REQUEST_ATTRIBUTES})  # fmt: skip

_STRING = r'"(?:[^"\\]|\\.)*"'
#: A Value array of strings only (what rows.text joins with backslashes).
_STRINGS = rf"^\[{_STRING}(?:,{_STRING})*\]$"
#: A Value array whose first item is a person name of string groups only.
_PN = rf'^\[\{{(?:"(?:Alphabetic|Ideographic|Phonetic)":{_STRING},?)*\}}(?:,.*)?\]$'
_TIME = r"^[0-9]*(?:\.[0-9]*)?$"
_ASCII = r"^[\x00-\x7F]*$"
_OCCURRED = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|\+00:00)$"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _value(tag: str) -> str:
    """The tag's Value array as JSON text ('' when absent)."""
    return f"m.`{tag}`.Value"


def _text(tag: str) -> tuple[str, str]:
    v = _value(tag)
    strings = f"JSONExtract({v}, 'Array(String)')"
    joined = f"if({v} IN ('', '[]'), '', arrayStringConcat({strings}, '\\\\'))"
    return joined, f"({v} IN ('', '[]') OR match({v}, {_literal(_STRINGS)}))"


def _integer(tag: str, digits: int, signed: bool) -> tuple[str, str]:
    v = _value(tag)
    number = rf"^\[{'-?' if signed else ''}[0-9]{{1,{digits}}}[,\]]"
    value = f"if(match({v}, {_literal(number)}), toInt64(extract({v}, '^\\\\[(-?[0-9]+)')), NULL)"
    empty = f"({v} IN ('', '[]') OR match({v}, '^\\\\[null[,\\\\]]'))"
    plain = f"({empty} OR match({v}, {_literal(number)}))"
    return value, plain


def _name(tag: str) -> tuple[str, str]:
    v = _value(tag)
    groups = f"JSONExtract({v}, 1, 'Tuple(Alphabetic String, Ideographic String, Phonetic String)')"
    name = f"if({v} IN ('', '[]'), '', replaceRegexpOne(arrayStringConcat([{groups}.1, {groups}.2, {groups}.3], '='), '=+$', ''))"  # noqa: E501
    return name, f"({v} IN ('', '[]') OR match({v}, {_literal(_PN)}))"


def parse_sql(suffix: str) -> str:
    """event_raw -> event_parsed: every column the tables take, and `plain`."""
    columns: list[str] = []
    plain: list[str] = [
        "e.type = 'InstanceStored'",
        f"e.schema_version = {InstanceStored.VERSION}",
        "e.payload.sidecar = ''",
        "e.payload.frames_sidecar = ''",
        "m_at > 0 AND f_at > m_at AND n_at > f_at",
        f"match(e.occurred_at, {_literal(_OCCURRED)})",
        f"{_value(r._REQUEST_ATTRIBUTES)} IN ('', '[]')",
    ]
    for column, tag in _TEXT.items():
        value, ok = _text(tag)
        columns.append(f"{value} AS {column}")
        plain.append(ok)
    for column, (tag, digits, signed) in _INTEGER.items():
        value, ok = _integer(tag, digits, signed)
        columns.append(f"{value} AS {column}")
        plain.append(ok)
    for column, tag in _NAMES.items():
        value, ok = _name(tag)
        columns.append(f"{value} AS {column}")
        plain.append(ok)
        plain.append(f"match({column}, {_literal(_ASCII)})")  # folding ASCII is lower()
    plain.append(f"match(study_time_text, {_literal(_TIME)})")
    metadata_type = ", ".join(f"`{tag}` Tuple(Value String)" for tag in _TAGS)
    return f"""
INSERT INTO event_parsed{suffix}
SELECT partition, offset, {" AND ".join(plain)} AS plain,
    e.event_id AS event_id,
    if(match(e.occurred_at, {_literal(_OCCURRED)}),
       parseDateTime64BestEffort(e.occurred_at, 6, 'UTC'), toDateTime64(0, 6, 'UTC'))
      AS occurred_at,
    e.site AS site, e.node AS node,
    e.payload.sop_class_uid AS sop_class_uid, e.payload.sop_instance_uid AS sop_instance_uid,
    e.payload.series_instance_uid AS series_instance_uid,
    e.payload.study_instance_uid AS study_instance_uid,
    e.payload.patient_id AS patient_id, e.payload.issuer_of_patient_id AS issuer_of_patient_id,
    e.payload.transfer_syntax_uid AS transfer_syntax_uid,
    e.payload.blob.key AS blob_key, e.payload.blob.sha256 AS dataset_sha256,
    e.payload.blob.size AS blob_size, e.payload.blob.dataset_offset AS dataset_offset,
    e.payload.source.protocol AS protocol, e.payload.source.calling_ae AS calling_ae,
    e.payload.source.called_ae AS called_ae, e.payload.source.peer AS peer,
    e.payload.source.user AS user, e.payload.frames_note AS frames_note,
    metadata, if(frames_raw = 'null', '', frames_raw) AS frames,
    {", ".join(columns)},
    lower(patient_name) AS patient_name_norm,
    lower(referring_physician_name) AS referring_physician_name_norm,
    if(study_time_text = '', '', concat(
        substring(concat(extract(study_time_text, '^([0-9]*)'), '000000'), 1, 6), '.',
        substring(concat(extract(study_time_text, '\\\\.([0-9]*)$'), '000000'), 1, 6)))
      AS study_time
FROM (
    SELECT partition, offset,
        JSONExtract(value, '{_ENVELOPE}') AS e,
        position(value, '"metadata":') AS m_at,
        position(value, ',"frames":') AS f_at,
        position(value, ',"frames_note":') AS n_at,
        if(m_at > 0 AND f_at > m_at, substring(value, m_at + 11, f_at - m_at - 11), '')
          AS metadata,
        if(f_at > 0 AND n_at > f_at, substring(value, f_at + 10, n_at - f_at - 10), '')
          AS frames_raw,
        JSONExtract(metadata, 'Tuple({metadata_type})') AS m
    FROM event_raw{suffix}
)
"""


def _columns(*same: str, **made: str) -> dict[str, str]:
    """A table's columns: those event_parsed has by the same name, those made
    here from an expression, and the version (the log offset)."""
    return {**{column: column for column in same}, **made, "version": "offset"}


#: table -> its columns and the event_parsed expression of each.
_TABLES = {
    "patient": _columns(*_PATIENT),
    "study": _columns(
        "study_instance_uid", *_PATIENT, "study_date", "study_time", "accession_number",
        "study_id", "referring_physician_name", "referring_physician_name_norm",
        "study_description",
    ),
    "series": _columns(
        "series_instance_uid", "study_instance_uid", "modality", "series_number",
        "series_description", "performed_procedure_step_start_date",
        "performed_procedure_step_start_time", request_attributes="''",
    ),
    "instance": _columns(
        "sop_instance_uid", "sop_class_uid", "series_instance_uid", "study_instance_uid",
        "patient_id", "issuer_of_patient_id", "modality", "instance_number", "rows", "columns",
        "bits_allocated", "number_of_frames", "transfer_syntax_uid", "blob_key", "blob_size",
        "dataset_sha256", "dataset_offset", "frames", "frames_note", "metadata",
        sidecar_key="''", received_at="occurred_at", hidden="0",
    ),
    "receipt": _columns(
        "partition", "offset", "event_id", "occurred_at", "site", "node", "protocol",
        "calling_ae", "called_ae", "peer", "user", "sop_instance_uid", "study_instance_uid",
        "dataset_sha256", "blob_key",
    ),
    "receipt_by_sop": _columns(
        "sop_instance_uid", "dataset_sha256", "partition", "offset", "study_instance_uid",
        "series_instance_uid", "sop_class_uid", "blob_key", "site", "node", "protocol",
        "calling_ae", "called_ae", "peer", "occurred_at",
    ),
}  # fmt: skip

TABLES = tuple(_TABLES)


def insert_sql(table: str, suffix: str) -> str:
    columns = _TABLES[table]
    return (
        f"INSERT INTO {table}{suffix} ({', '.join(columns)}) "
        f"SELECT {', '.join(columns.values())} FROM event_parsed{suffix} WHERE plain"
    )


def prepare(index: ProjectionStore, suffix: str) -> None:
    """Create the staging tables (empty)."""
    for table in STAGING:
        index.command(f"DROP TABLE IF EXISTS {table}{suffix}")
    index.command(RAW_DDL.format(s=suffix))
    select = parse_sql(suffix).split("\n", 2)[2]  # the SELECT, without its INSERT
    index.command(f"CREATE TABLE event_parsed{suffix} ENGINE = Memory AS {select} LIMIT 0")


def drop(index: ProjectionStore, suffix: str) -> None:
    for table in STAGING:
        index.command(f"DROP TABLE IF EXISTS {table}{suffix}")


def stage(index: ProjectionStore, suffix: str, records: Sequence[LogRecord]) -> None:
    """Put these records in event_raw, alone."""
    for table in STAGING:
        index.command(f"TRUNCATE TABLE {table}{suffix}")
    # One block per insert, and a Memory table's blocks are what its readers
    # share out: a few blocks let the parse use every core.
    step = -(-len(records) // BLOCKS)
    for first in range(0, len(records), step):
        index.insert(
            f"event_raw{suffix}",
            [(one.partition, one.offset, one.value) for one in records[first : first + step]],
            ("partition", "offset", "value"),
        )


def stage_sqlite(index: ProjectionStore, suffix: str, path: Path, first: int, stop: int) -> int:
    """Put the events at offsets [first, stop) of the embedded SQLite log in
    event_raw, alone, read by chDB itself; return how many there are. (Python
    reading and encoding them again was a fifth of a replay.)"""
    for table in STAGING:
        index.command(f"TRUNCATE TABLE {table}{suffix}")
    block = max(1, (stop - first) // BLOCKS)
    index.command(
        f"INSERT INTO event_raw{suffix} (partition, offset, value)"
        f" SELECT 0, assumeNotNull(log_offset), assumeNotNull(value)"
        f" FROM sqlite({_literal(str(path))}, 'event_log')"
        f" WHERE log_offset >= {int(first)} AND log_offset < {int(stop)}"
        f" SETTINGS max_block_size = {block}, min_insert_block_size_rows = 0,"
        " min_insert_block_size_bytes = 0"
    )
    ((count,),) = index.query(f"SELECT count() FROM event_raw{suffix}")
    return int(count)


def make_rows(index: ProjectionStore, suffix: str) -> set[tuple[int, int]]:
    """Insert the rows of the plain events staged; return (partition, offset)
    of the others, for the Python projector."""
    index.command(parse_sql(suffix))
    # Each insert sorts and writes its part on one thread: two at a time.
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="replay-insert") as pool:
        list(pool.map(index.command, [insert_sql(table, suffix) for table in TABLES]))
    return {
        (int(p), int(o))
        for p, o in index.query(
            f"SELECT partition, offset FROM event_parsed{suffix} WHERE NOT plain"
        )
    }


def project(index: ProjectionStore, suffix: str, records: Sequence[LogRecord]) -> list[LogRecord]:
    """Insert the rows of the plain events among `records`; return the others,
    in log order, for the Python projector."""
    if not records:
        return []
    stage(index, suffix, records)
    left = make_rows(index, suffix)
    return [record for record in records if (record.partition, record.offset) in left]
