"""A small, hand-checked archive for the query engine's tests, as projection rows.

Rows go straight into the level tables (what the projector would write), each
table written in its own insert per version so FINAL really has to pick the
newest row. Shared by tests/unit/test_matching.py and tests/integration/test_qido.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from infra.factory import open_projection_store
from infra.ports import ProjectionStore
from projections import members, stats
from schemas.names import fold

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US = "1.2.840.10008.5.1.4.1.1.6.1"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
OT = "1.2.840.10008.5.1.4.1.1.7"

S1, S2, S3, S4, S5, S6, S7, S8 = (f"1.2.826.0.1.{n}" for n in range(1, 9))


@dataclass
class Inst:
    study: str
    series: str
    sop: str
    version: int
    patient_id: str = "P1"
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession: str = ""
    study_id: str = ""
    referring: str = ""
    description: str = ""
    charset: str = "ISO_IR 100"
    modality: str = "CT"
    series_number: int | None = 1
    series_description: str = ""
    pps_date: str = ""
    pps_time: str = ""
    request_attributes: str = ""
    sop_class: str = CT
    instance_number: int | None = 1
    rows: int | None = 512
    columns: int | None = 512
    bits: int | None = 16
    frames: int | None = None
    hidden: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


def _pixel_metadata(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "00080080": {"vr": "LO", "Value": ["Chronicle Hospital"]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "bulkdata/1000-524288"},
        **extra,
    }


def corpus() -> list[Inst]:
    """The archive, in log order (version = log offset)."""
    # fmt: off
    zeta_alpha: dict[str, Any] = dict(
        study=S1, patient_id="P1", patient_name="Zeta^Alpha", birth_date="19750312", sex="F",
        study_date="20200105", study_time="101500.000000", accession="ACC1", study_id="S1",
        referring="Ref^One", description="CT CHEST",
    )
    sps = orjson.dumps([{"ScheduledProcedureStepID": "SPS1", "RequestedProcedureID": "RP1"}])
    s1_ct: dict[str, Any] = dict(zeta_alpha, series="1.2.826.0.1.1.1", series_description="AXIAL",
                 request_attributes=sps.decode(), pps_date="20200105", pps_time="1014")
    # fmt: on
    age = {"00101010": {"vr": "AS", "Value": ["044Y"]}}
    newer_age = {"00101010": {"vr": "AS", "Value": ["045Y"]}}
    return [
        Inst(
            **s1_ct,
            sop="1.2.826.0.1.1.1.3",
            version=1,
            instance_number=3,
            metadata=_pixel_metadata(age),
        ),
        Inst(
            **s1_ct,
            sop="1.2.826.0.1.1.1.1",
            version=2,
            instance_number=1,
            metadata=_pixel_metadata(age),
        ),
        Inst(
            **s1_ct,
            sop="1.2.826.0.1.1.1.2",
            version=3,
            instance_number=2,
            frames=2,
            metadata=_pixel_metadata(newer_age),
        ),
        Inst(
            **s1_ct,
            sop="1.2.826.0.1.1.1.9",
            version=4,
            instance_number=None,
            metadata=_pixel_metadata(age),
        ),
        Inst(
            **dict(zeta_alpha, series="1.2.826.0.1.1.2"),
            sop="1.2.826.0.1.1.2.1",
            version=5,
            modality="SR",
            series_number=2,
            sop_class=SR,
            rows=None,
            columns=None,
            bits=None,
            metadata=newer_age,
        ),
        *(
            Inst(
                S2,
                f"1.2.826.0.1.2.{se}",
                f"1.2.826.0.1.2.{se}.{n}",
                10 + 2 * se + n,
                patient_id="P2",
                patient_name="Zeta^Beta",
                study_date="20200110",
                study_time="083000.000000",
                accession="ACC2",
                modality="MR",
                sop_class=MR,
                series_number=se,
                instance_number=n,
                sex="M",
            )
            for se, n in ((1, 1), (1, 2), (2, 1))
        ),
        Inst(
            S3,
            "1.2.826.0.1.3.1",
            "1.2.826.0.1.3.1.1",
            20,
            patient_id="P3",
            patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう",
            study_date="20191231",
            study_time="235900.000000",
            accession="ACC_3%",
            charset="ISO 2022 IR 6\\ISO 2022 IR 87",
            referring="Sato^Hanako=佐藤^花子",
        ),
        Inst(
            S4,
            "1.2.826.0.1.4.1",
            "1.2.826.0.1.4.1.1",
            21,
            patient_id="P4",
            patient_name="Zéta^Gamma",
            study_date="20200105",
            study_time="080000.000000",
            accession="ACC4",
            modality="US",
            sop_class=US,
            description="ÉCHO",
        ),
        # S5: every instance hidden by a later event -> never answered.
        Inst(
            S5,
            "1.2.826.0.1.5.1",
            "1.2.826.0.1.5.1.1",
            22,
            patient_id="P5",
            patient_name="Omega^Hidden",
            study_date="20200101",
        ),
        Inst(
            S5,
            "1.2.826.0.1.5.1",
            "1.2.826.0.1.5.1.1",
            40,
            patient_id="P5",
            patient_name="Omega^Hidden",
            study_date="20200101",
            hidden=1,
        ),
        # S6: a later event corrected the patient's name.
        Inst(
            S6,
            "1.2.826.0.1.6.1",
            "1.2.826.0.1.6.1.1",
            23,
            patient_id="P6",
            patient_name="Wrong^Name",
            study_date="20180101",
        ),
        Inst(
            S6,
            "1.2.826.0.1.6.1",
            "1.2.826.0.1.6.1.1",
            41,
            patient_id="P6",
            patient_name="Older^Version",
            study_date="20180101",
        ),
        Inst(
            S7,
            "1.2.826.0.1.7.1",
            "1.2.826.0.1.7.1.1",
            24,
            patient_id="P7",
            patient_name="Nodate^Patient",
            modality="OT",
            sop_class=OT,
        ),
        # S8: re-projected as MR; its first row said CT (an old version must never match).
        *(
            Inst(
                S8,
                "1.2.826.0.1.8.1",
                "1.2.826.0.1.8.1.1",
                version,
                patient_id="P1",
                patient_name="Zeta^Alpha",
                study_date="20210301",
                study_time="0900",
                modality=modality,
                sop_class=sop_class,
            )
            for version, modality, sop_class in ((25, "CT", CT), (42, "MR", MR))
        ),
    ]


def rows(inst: Inst) -> dict[str, tuple[list[str], list[Any]]]:
    """The rows one instance's event writes: table -> (columns, values)."""
    # fmt: off
    patient = {
        "patient_id": inst.patient_id, "issuer_of_patient_id": "",
        "patient_name": inst.patient_name, "patient_name_norm": fold(inst.patient_name),
        "patient_birth_date": inst.birth_date, "patient_birth_time": "",
        "patient_sex": inst.sex, "specific_character_set": inst.charset,
    }
    study = {
        **patient, "study_instance_uid": inst.study, "study_date": inst.study_date,
        "study_time": inst.study_time, "accession_number": inst.accession,
        "study_id": inst.study_id, "referring_physician_name": inst.referring,
        "referring_physician_name_norm": fold(inst.referring),
        "study_description": inst.description,
    }
    series = {
        "series_instance_uid": inst.series, "study_instance_uid": inst.study,
        "modality": inst.modality, "series_number": inst.series_number,
        "series_description": inst.series_description,
        "performed_procedure_step_start_date": inst.pps_date,
        "performed_procedure_step_start_time": inst.pps_time,
        "request_attributes": inst.request_attributes,
    }
    instance = {
        "sop_instance_uid": inst.sop, "sop_class_uid": inst.sop_class,
        "series_instance_uid": inst.series, "study_instance_uid": inst.study,
        "patient_id": inst.patient_id, "issuer_of_patient_id": "", "modality": inst.modality,
        "instance_number": inst.instance_number, "rows": inst.rows, "columns": inst.columns,
        "bits_allocated": inst.bits, "number_of_frames": inst.frames,
        "transfer_syntax_uid": "1.2.840.10008.1.2.1", "blob_key": f"blob/{inst.sop}",
        "blob_size": 1000, "dataset_sha256": "0" * 64, "dataset_offset": 132, "frames": "",
        "frames_note": "", "metadata": orjson.dumps(inst.metadata).decode(),
        "sidecar_key": "", "received_at": datetime(2024, 1, 1, tzinfo=UTC),
        "hidden": inst.hidden,
    }
    # fmt: on
    tables: dict[str, dict[str, Any]] = {
        "patient": patient,
        "study": study,
        "series": series,
        "instance": instance,
        "instance_member": {
            "study_instance_uid": inst.study,
            "series_instance_uid": inst.series,
            "sop_instance_uid": inst.sop,
        },
        # What the refresh learns an instance's earlier studies from.
        "receipt_by_sop": {
            "sop_instance_uid": inst.sop,
            "partition": 0,
            "offset": inst.version,
            "study_instance_uid": inst.study,
            "series_instance_uid": inst.series,
        },
    }
    return {
        name: ([*row, "version"], [*row.values(), inst.version]) for name, row in tables.items()
    }


def insert(store: ProjectionStore, instances: list[Inst]) -> None:
    """One insert per table (one part each): what a projector batch writes."""
    batches: dict[str, tuple[list[str], list[list[Any]]]] = {}
    for inst in instances:
        for table, (columns, values) in rows(inst).items():
            batches.setdefault(table, (columns, []))[1].append(values)
    columns, instance_rows = batches.get("instance", ([], []))
    at = {name: n for n, name in enumerate(columns)}
    earlier = members.places_of(store, "", (str(r[at["sop_instance_uid"]]) for r in instance_rows))
    touched = {str(r[at["study_instance_uid"]]) for r in instance_rows} | {
        study for _, study, _ in earlier
    }
    for table, (columns, batch) in batches.items():
        store.insert(table, batch, columns)
    # What the projector does after each batch (projections.stats).
    stats.refresh(store, "", touched, version=max(i.version for i in instances))


def open_corpus_store(folder: Path) -> Iterator[ProjectionStore]:
    """A chDB store with the corpus loaded (one per test module: chDB takes ~1 s)."""
    store = open_projection_store(f"chdb://{folder}")
    instances = corpus()
    # Later events in a later batch, so FINAL must merge across parts.
    insert(store, [i for i in instances if i.version < 40])
    insert(store, [i for i in instances if i.version >= 40])
    yield store
    store.close()
