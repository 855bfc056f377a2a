"""The query model shared by QIDO-RS and C-FIND: pure types and rules, no I/O.

Levels, the attribute registry (what can be matched, where each attribute is
stored, what each level returns), `Match` and `Query`, and the rules that give
match values their meaning (dates, times, UID lists, wildcards). `api.matching`
builds queries and answers from these; `api.query_sql` turns them into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import Enum, StrEnum, auto

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from infra.errors import Invalid
from schemas.uids import check_uid

#: Largest QIDO-RS page, also the page size when the request gives no limit.
MAX_LIMIT = 1000
#: Largest C-FIND answer (C-FIND has no paging).
CFIND_MAX_MATCHES = 10_000


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def rank(self) -> int:
        return list(Level).index(self)


class Kind(Enum):
    UID = auto()
    TEXT = auto()
    PN = auto()
    DATE = auto()
    TIME = auto()
    NUMBER = auto()
    ANY_OF = auto()  # an aggregated array matched against a list (ModalitiesInStudy)
    UID_ANY_OF = auto()
    SEQUENCE = auto()
    RETURN = auto()  # returned, never matched


@dataclass(frozen=True, slots=True)
class Attr:
    keyword: str
    level: Level
    kind: Kind
    column: str  # column of the level's table, or of the aggregate "a"
    aggregate: bool = False


# level keyword kind column [agg]: every key that is matched or read from a column.
_REGISTRY = """
PATIENT PatientName PN patient_name
PATIENT PatientID TEXT patient_id
PATIENT IssuerOfPatientID TEXT issuer_of_patient_id
PATIENT PatientBirthDate DATE patient_birth_date
PATIENT PatientBirthTime TIME patient_birth_time
PATIENT PatientSex TEXT patient_sex
PATIENT SpecificCharacterSet RETURN specific_character_set
PATIENT NumberOfPatientRelatedStudies RETURN n_studies agg
PATIENT NumberOfPatientRelatedSeries RETURN n_series agg
PATIENT NumberOfPatientRelatedInstances RETURN n_instances agg
STUDY StudyInstanceUID UID study_instance_uid
STUDY StudyDate DATE study_date
STUDY StudyTime TIME study_time
STUDY AccessionNumber TEXT accession_number
STUDY StudyID TEXT study_id
STUDY ReferringPhysicianName PN referring_physician_name
STUDY StudyDescription TEXT study_description
STUDY ModalitiesInStudy ANY_OF modalities agg
STUDY SOPClassesInStudy UID_ANY_OF sop_classes agg
STUDY NumberOfStudyRelatedSeries RETURN n_series agg
STUDY NumberOfStudyRelatedInstances RETURN n_instances agg
SERIES SeriesInstanceUID UID series_instance_uid
SERIES Modality TEXT modality
SERIES SeriesNumber NUMBER series_number
SERIES SeriesDescription TEXT series_description
SERIES PerformedProcedureStepStartDate DATE performed_procedure_step_start_date
SERIES PerformedProcedureStepStartTime TIME performed_procedure_step_start_time
SERIES RequestAttributesSequence SEQUENCE request_attributes
SERIES NumberOfSeriesRelatedInstances RETURN n_instances agg
IMAGE SOPInstanceUID UID sop_instance_uid
IMAGE SOPClassUID UID sop_class_uid
IMAGE InstanceNumber NUMBER instance_number
IMAGE Rows NUMBER rows
IMAGE Columns NUMBER columns
IMAGE BitsAllocated NUMBER bits_allocated
IMAGE NumberOfFrames NUMBER number_of_frames
"""
ATTRS: dict[str, Attr] = {
    f[1]: Attr(f[1], Level(f[0]), Kind[f[2]], f[3], len(f) > 4)
    for f in (line.split() for line in _REGISTRY.strip().splitlines())
}
#: Item keys of each sequence that sequence matching understands.
SEQUENCE_ITEM_KEYS = {
    "RequestAttributesSequence": ("ScheduledProcedureStepID", "RequestedProcedureID")
}
#: Date/time pairs matched as one DT range when both are given (combined matching).
DATE_TIME_PAIRS = {
    "StudyDate": "StudyTime",
    "PatientBirthDate": "PatientBirthTime",
    "PerformedProcedureStepStartDate": "PerformedProcedureStepStartTime",
}


@dataclass(frozen=True, slots=True)
class Match:
    """One non-universal match key; `items` holds the item keys of sequence matching."""

    keyword: str
    value: str = ""
    items: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Query:
    level: Level
    matches: tuple[Match, ...] = ()
    study_uid: str | None = None
    series_uid: str | None = None
    #: Return keys beyond the level's defaults, as 8-hex-digit tags.
    include: tuple[str, ...] = ()
    include_all: bool = False
    limit: int = MAX_LIMIT
    offset: int = 0
    fuzzy: bool = False
    #: "STUDY" (Study Root; QIDO-RS) or "PATIENT" (Patient Root).
    model: str = "STUDY"
    relational: bool = False
    combined_datetime: bool = True
    #: C-FIND answers with exactly the requested keys; QIDO-RS adds its defaults.
    dimse: bool = False


#: Key columns of each level.
KEYS = {
    Level.PATIENT: ("patient_id", "issuer_of_patient_id"),
    Level.STUDY: ("study_instance_uid",),
    Level.SERIES: ("series_instance_uid",),
    Level.IMAGE: ("sop_instance_uid",),
}


# ---------------------------------------------------------------- return keys

#: Returned attributes that are not columns of the attribute registry.
SPECIAL_KEYS = frozenset({"InstanceAvailability", "RetrieveURL", "QueryRetrieveLevel"})
#: The unique key of each level, the patient's first.
_UNIQUE = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: Study attributes answered from columns: returned by a study query, and by lower
#: levels when the query is not within one study (PS3.18 10.6.3.3).
_STUDY_COLUMNS = (
    "StudyDate StudyTime AccessionNumber ReferringPhysicianName PatientName PatientID "
    "PatientBirthDate PatientSex StudyInstanceUID StudyID StudyDescription"
)
#: Series attributes answered from columns: returned by a series query, and by an
#: instance query not within one series.
_SERIES_COLUMNS = (
    "Modality SeriesDescription SeriesNumber SeriesInstanceUID PerformedProcedureStepStartDate "
    "PerformedProcedureStepStartTime RequestAttributesSequence"
)
#: QIDO-RS defaults (PS3.18 tables 10.6.3-3 to -5); Patient Root C-FIND for PATIENT.
_DEFAULTS = {
    Level.PATIENT: "SpecificCharacterSet PatientName PatientID IssuerOfPatientID "
    "PatientBirthDate PatientSex NumberOfPatientRelatedStudies NumberOfPatientRelatedSeries "
    "NumberOfPatientRelatedInstances",
    Level.STUDY: f"SpecificCharacterSet {_STUDY_COLUMNS} InstanceAvailability ModalitiesInStudy "
    "SOPClassesInStudy NumberOfStudyRelatedSeries NumberOfStudyRelatedInstances RetrieveURL",
    Level.SERIES: f"SpecificCharacterSet StudyInstanceUID {_SERIES_COLUMNS} "
    "NumberOfSeriesRelatedInstances RetrieveURL",
    Level.IMAGE: "SpecificCharacterSet StudyInstanceUID SeriesInstanceUID SOPClassUID "
    "SOPInstanceUID InstanceAvailability InstanceNumber Rows Columns BitsAllocated "
    "NumberOfFrames RetrieveURL",
}
# Attributes kept per level when includefield=all reads the stored metadata
# (besides group 0010, the patient's): General Study, Patient Study, General
# Series and Equipment modules. Instance level keeps every non-bulk attribute.
_STUDY_EXTRA = (
    "StudyDate StudyTime AccessionNumber IssuerOfAccessionNumberSequence ReferringPhysicianName "
    "ReferringPhysicianIdentificationSequence StudyDescription ProcedureCodeSequence "
    "PhysiciansOfRecord NameOfPhysiciansReadingStudy AdmittingDiagnosesDescription "
    "StudyInstanceUID StudyID RequestingPhysician RequestedProcedureDescription AdmissionID "
    "TimezoneOffsetFromUTC ReasonForPerformedProcedureCodeSequence"
)
_SERIES_EXTRA = (
    "Modality SeriesDate SeriesTime SeriesDescription SeriesDescriptionCodeSequence "
    "SeriesInstanceUID SeriesNumber Laterality BodyPartExamined ProtocolName OperatorsName "
    "PerformingPhysicianName PerformedProcedureStepStartDate PerformedProcedureStepStartTime "
    "PerformedProcedureStepID PerformedProcedureStepDescription RequestAttributesSequence "
    "PatientPosition FrameOfReferenceUID Manufacturer InstitutionName StationName "
    "InstitutionalDepartmentName ManufacturerModelName DeviceSerialNumber SoftwareVersions"
)


def _tags(keywords: str) -> frozenset[str]:
    return frozenset(f"{tag_for_keyword(k):08X}" for k in keywords.split())


#: includefield=all at study and series level: the stored tags that belong there.
LEVEL_TAGS = {Level.STUDY: _tags(_STUDY_EXTRA), Level.SERIES: _tags(_SERIES_EXTRA)}


def return_keys(query: Query) -> tuple[list[str], list[str]]:
    """(keywords answered from columns, tags answered from the stored metadata)."""
    level = query.level
    if query.dimse:
        # The unique keys of the query level and those above always come back (PS3.4 C.4.1.2).
        unique = _UNIQUE[1 if query.model == "STUDY" else 0 : level.rank + 1]
        wanted = ["SpecificCharacterSet", "QueryRetrieveLevel", *unique]
    else:
        wanted = _DEFAULTS[level].split()
        if level.rank > Level.STUDY.rank and not query.study_uid:
            wanted += _STUDY_COLUMNS.split()
        if level is Level.IMAGE and not query.series_uid:
            wanted += _SERIES_COLUMNS.split()
        wanted += [m.keyword for m in query.matches]
    if query.include_all:
        wanted += [k for k, a in ATTRS.items() if _has_column(a.keyword, level)]
    tags: list[str] = []
    for tag in query.include:
        keyword = keyword_for_tag(int(tag, 16)) or ""
        if _has_column(keyword, level):
            wanted.append(keyword)
        else:
            tags.append(tag)
    return list(dict.fromkeys(k for k in wanted if _has_column(k, level))), tags


def _has_column(keyword: str, level: Level) -> bool:
    """Whether a query at `level` answers `keyword` from its columns (or a constant)."""
    if keyword in SPECIAL_KEYS:
        return keyword != "RetrieveURL" or level is not Level.PATIENT
    attr = ATTRS.get(keyword)
    if attr is None or attr.level.rank > level.rank:
        return False
    return not attr.aggregate or attr.level is level


def tag_of(name: str) -> str:
    """A keyword or 8-hex-digit tag as the tag's JSON key ('00100010')."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise Invalid(f"{name!r} is neither a DICOM keyword nor a tag")
    return f"{tag:08X}"


def keyword_of(name: str) -> str:
    keyword = keyword_for_tag(int(tag_of(name), 16))
    if not keyword:
        raise Invalid(f"{name!r} is not an attribute this archive can match")
    return str(keyword)


# ---------------------------------------------------------------- value rules

_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
#: A day's first and last instants as 'HHMMSS.FFFFFF', the padding of partial times.
TIME_FLOOR, TIME_CEIL = "000000.000000", "235959.999999"


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def date_range(keyword: str, value: str) -> tuple[str | None, str | None]:
    """'D', 'D1-D2', '-D', 'D-' -> inclusive bounds (None = open)."""
    lo, sep, hi = value.partition("-")
    bounds = (lo, hi) if sep else (lo, lo)
    if not any(bounds) or not all(_valid_date(b) for b in bounds if b):
        raise Invalid(f"{keyword} {value!r} is not a date (YYYYMMDD) or date range")
    return bounds[0] or None, bounds[1] or None


def _valid_date(text: str) -> bool:
    try:
        return bool(_DATE.match(text)) and bool(date(int(text[:4]), int(text[4:6]), int(text[6:])))
    except ValueError:
        return False


def time_range(keyword: str, value: str) -> tuple[str | None, str | None]:
    """TM value or range -> 'HHMMSS.FFFFFF' bounds. A value covers its precision:
    '1010' is 10:10:00.000000 to 10:10:59.999999, as a single value or a bound."""
    lo, sep, hi = value.replace(":", "").partition("-")
    hi = hi if sep else lo
    if not (lo or hi):
        raise Invalid(f"{keyword} {value!r} is not a time or time range")
    return (
        _time_bound(keyword, value, lo, TIME_FLOOR) if lo else None,
        _time_bound(keyword, value, hi, TIME_CEIL) if hi else None,
    )


def _time_bound(keyword: str, value: str, text: str, pad: str) -> str:
    m = _TIME.match(text)
    valid = m is not None and not (m.group(4) and not m.group(3))
    if not m or not valid or int(m[1]) > 23 or int(m[2] or 0) > 59 or int(m[3] or 0) > 60:
        raise Invalid(f"{keyword} {value!r} is not a time (HHMMSS.FFFFFF) or time range")
    whole, _, frac = text.partition(".")
    return whole + pad[len(whole) : 6] + "." + frac + pad[7 + len(frac) :]


def universal(values: list[str]) -> bool:
    """'*' among the values, or no value at all (only spaces and separators: DICOM
    pads with spaces, so '  ' is an empty value, which is universal matching)."""
    return not values or any(set(v) == {"*"} for v in values)


def split_values(value: str, *, commas: bool) -> list[str]:
    """Backslash separates values (C-FIND, QIDO); commas too where QIDO allows lists."""
    parts = re.split(r"[\\,]" if commas else r"\\", value)
    return [p.strip() for p in parts if p.strip()]


def uid_list(keyword: str, value: str, *, commas: bool) -> list[str]:
    values = split_values(value, commas=commas)
    if any(has_wildcard(v) for v in values):
        raise Invalid(f"{keyword} takes a UID or a list of UIDs, not wildcards")
    return [check_uid(v, keyword) for v in values]
