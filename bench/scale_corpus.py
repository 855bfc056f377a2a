"""The scale suite's corpus: a realistic shape, generated study by study.

1M instances = 10,000 studies x 2 series x 50 instances over 5,000 patients
(two studies each); smaller sizes keep the per-study shape and take the
first studies, so every size is a prefix of the next and the event log of
one size is extended, never rebuilt. Family names come from bench/query.py's
skewed list (half the patients share eight common names, the rest are rare),
modalities are weighted (CT most common), dates cover five years.

Each study draws from its own seeded generator, so any range of studies is
generated alone and identically for Chronicle's log and Orthanc's REST fill.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from bench.query import MODALITIES, family_name, stored_record
from infra.factory import open_event_log

FIRST_DAY = date(2020, 1, 1)
DAYS = 5 * 365
GIVEN_NAMES = ("ANNA", "JOHN", "YUKI", "LEA", "OMAR", "INES", "KOFI")
#: CT most common, then MR; the same order as bench/query.py's MODALITIES.
MODALITY_WEIGHTS = (35, 25, 15, 15, 10)
STUDY_ROOT = "1.2.826.0.1.3680043.9.7433.2"
APPEND_BATCH = 5000


@dataclass(frozen=True)
class Shape:
    """How many studies, and the fixed shape of each."""

    studies: int
    series_per_study: int = 2
    instances_per_series: int = 50
    studies_per_patient: int = 2

    @classmethod
    def of(cls, instances: int) -> Shape:
        """The shape holding `instances` (a multiple of 100) instances."""
        shape = cls(studies=instances // 100)
        if shape.studies < 1 or shape.instances != instances:
            raise ValueError(f"{instances} is not a positive multiple of 100 instances")
        return shape

    @property
    def instances_per_study(self) -> int:
        return self.series_per_study * self.instances_per_series

    @property
    def instances(self) -> int:
        return self.studies * self.instances_per_study

    @property
    def patients(self) -> int:
        return -(-self.studies // self.studies_per_patient)


def accession(study_index: int) -> str:
    return f"A{study_index:08d}"


def study_date(day: int) -> str:
    return (FIRST_DAY + timedelta(days=day)).strftime("%Y%m%d")


def study_attrs(study_index: int, shape: Shape, seed: int = 7) -> dict[str, Any]:
    """Study- and patient-level attributes of one study, plus its Modality."""
    rng = random.Random(seed * 1_000_003 + study_index)
    patient = study_index // shape.studies_per_patient
    rng_p = random.Random(patient)  # a patient's name and birth date never change
    return {
        "PatientName": f"{family_name(rng_p)}^{rng_p.choice(GIVEN_NAMES)}",
        "PatientID": f"P{patient:07d}",
        "PatientBirthDate": f"{rng_p.randint(1930, 2020)}{rng_p.randint(1, 12):02d}01",
        "PatientSex": rng_p.choice("MF"),
        "StudyInstanceUID": f"{STUDY_ROOT}.{study_index}",
        "StudyDate": study_date(rng.randrange(DAYS)),
        "StudyTime": f"{rng.randrange(24):02d}{rng.randrange(60):02d}00",
        "AccessionNumber": accession(study_index),
        "StudyID": str(study_index % 100_000),
        "StudyDescription": "SCALE",
        "Modality": rng.choices(MODALITIES, MODALITY_WEIGHTS)[0],
    }


def studies(shape: Shape, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    for study_index in range(start, shape.studies if stop is None else stop):
        yield study_attrs(study_index, shape)


def instances(shape: Shape, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Instance attribute dicts (bench/query.py's keywords) of studies [start, stop)."""
    for study in studies(shape, start, stop):
        for series_number in range(1, shape.series_per_study + 1):
            series_uid = f"{study['StudyInstanceUID']}.{series_number}"
            for number in range(1, shape.instances_per_series + 1):
                yield {
                    **study,
                    "SeriesInstanceUID": series_uid,
                    "SeriesNumber": series_number,
                    "SOPInstanceUID": f"{series_uid}.{number}",
                    "InstanceNumber": number,
                }


def append_studies(log_url: str, shape: Shape, start: int, stop: int) -> int:
    """Append InstanceStored events for studies [start, stop) to the log; events appended."""
    log = open_event_log(log_url)
    appended = 0
    batch: list[tuple[str, bytes]] = []
    try:
        for attrs in instances(shape, start, stop):
            batch.append(stored_record(attrs))
            if len(batch) == APPEND_BATCH:
                log.append(batch)
                appended += len(batch)
                batch = []
        if batch:
            log.append(batch)
            appended += len(batch)
    finally:
        log.close()
    return appended
