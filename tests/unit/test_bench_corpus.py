"""The scale suite's corpus has the shape issue 6 asks for, and its query keys miss the cache."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.query import COMMON, MODALITIES
from bench.scale_corpus import Shape, instances, stored_record, studies
from bench.scale_queries import KINDS, QueryKeys, could_match
from bench.work_lock import only_run_in
from schemas import codec
from schemas.events import InstanceStored

Study = dict[str, Any]


@pytest.fixture(scope="module")
def million() -> list[Study]:
    """The study-level attributes of the 1M corpus (10k studies), made once."""
    return list(studies(Shape.of(1_000_000)))


def test_one_million_is_10k_studies_of_two_50_instance_series_over_5k_patients(
    million: list[Study],
) -> None:
    shape = Shape.of(1_000_000)
    assert (shape.studies, shape.series_per_study, shape.instances_per_series) == (10_000, 2, 50)
    assert shape.patients == 5_000
    every = million
    assert len(every) == 10_000
    assert len({s["PatientID"] for s in every}) == 5_000
    assert len({s["StudyInstanceUID"] for s in every}) == 10_000
    assert len({s["AccessionNumber"] for s in every}) == 10_000


def test_family_names_are_skewed_modalities_several_dates_five_years(
    million: list[Study],
) -> None:
    every = million
    families = Counter(s["PatientName"].split("^")[0] for s in every)
    common = sum(families[name] for name in COMMON)
    assert 0.4 < common / len(every) < 0.6  # half the patients share eight names
    rare = [name for name, count in families.items() if name not in COMMON]
    assert len(rare) > 2_000  # and the other half are spread thin
    assert max(families[name] for name in rare) < families.most_common(1)[0][1] / 10
    assert set(Counter(s["Modality"] for s in every)) == set(MODALITIES)
    years = {s["StudyDate"][:4] for s in every}
    assert years == {"2020", "2021", "2022", "2023", "2024"}


def test_a_patient_keeps_one_name_across_studies() -> None:
    names: dict[str, set[str]] = {}
    for study in studies(Shape.of(100_000)):
        names.setdefault(study["PatientID"], set()).add(study["PatientName"])
    assert all(len(found) == 1 for found in names.values())


def test_smaller_sizes_are_prefixes_and_ranges_generate_alone(million: list[Study]) -> None:
    small, large = Shape.of(10_000), Shape.of(1_000_000)
    assert list(studies(small)) == million[: small.studies]
    assert list(studies(large, 5000, 5010)) == million[5000:5010]


def test_instances_fill_each_series_in_order() -> None:
    shape = Shape.of(300)
    every = list(instances(shape))
    assert len(every) == 300
    assert len({i["SOPInstanceUID"] for i in every}) == 300
    per_series = Counter(i["SeriesInstanceUID"] for i in every)
    assert set(per_series.values()) == {50} and len(per_series) == 6
    assert [i["InstanceNumber"] for i in every[:50]] == list(range(1, 51))


def test_a_record_is_an_instance_stored_event_keyed_by_study() -> None:
    attrs = next(instances(Shape.of(100)))
    key, value = stored_record(attrs)
    envelope = codec.decode(value)
    assert key == attrs["StudyInstanceUID"] == envelope.key
    assert isinstance(envelope.payload, InstanceStored)
    assert envelope.payload.sop_instance_uid == attrs["SOPInstanceUID"]
    assert envelope.payload.metadata["00100010"]["Value"][0]["Alphabetic"] == attrs["PatientName"]


@pytest.mark.parametrize("size", [100, 1_000_000])
def test_distinct_keys_never_repeat_and_repeated_keys_always_do(size: int) -> None:
    keys = QueryKeys(Shape.of(size))
    for kind in KINDS:
        drawn = [tuple(sorted(keys.distinct(kind).items())) for _ in range(300)]
        assert len(set(drawn)) == 300
        assert keys.repeated(kind) == keys.repeated(kind)


def test_there_are_fresh_keys_enough_for_a_ten_minute_soak() -> None:
    keys = QueryKeys(Shape.of(10_000))
    for kind in KINDS:  # 20 searches a second for 600 s, the kinds in turn: 3,000 each
        assert len({tuple(sorted(keys.distinct(kind).items())) for _ in range(3_500)}) == 3_500


def test_the_same_seed_gives_both_archives_the_same_keys() -> None:
    first, second = QueryKeys(Shape.of(10_000)), QueryKeys(Shape.of(10_000))
    assert [first.distinct(k) for k in KINDS * 20] == [second.distinct(k) for k in KINDS * 20]


def test_sizes_must_be_whole_studies() -> None:
    with pytest.raises(ValueError):
        Shape.of(150)


def test_a_second_scale_run_on_one_work_folder_is_refused(tmp_path: Path) -> None:
    refused = pytest.raises(SystemExit, match="another scale run")
    with only_run_in(tmp_path), refused, only_run_in(tmp_path):
        pass
    with only_run_in(tmp_path):  # free again once the first run ends
        pass


def test_the_soak_tells_the_searches_its_studies_could_match() -> None:
    stored = could_match("20240115", "CT", "Soak^Bench", "ACC0001")
    assert stored({"StudyDate": "20240101-20240131"})
    assert not stored({"StudyDate": "20240116-20240131"})
    assert stored({"StudyDate": "20240115"}) and not stored({"StudyDate": "20240114"})
    assert stored({"ModalitiesInStudy": "CT", "StudyDate": "20230501-20240501"})
    assert not stored({"ModalitiesInStudy": "MR", "StudyDate": "20230501-20240501"})
    assert stored({"PatientName": "SO*"}) and stored({"PatientName": "SOAK^B*"})
    assert not stored({"PatientName": "SMITH*"})
    assert not stored({"AccessionNumber": "A00000042"})
    # The date and modality searches the soak asks are told apart some of the time.
    keys = QueryKeys(Shape.of(1_000_000))
    for kind in KINDS[1:3]:
        drawn = [keys.distinct(kind) for _ in range(3000)]
        assert any(stored(k) for k in drawn) and not all(stored(k) for k in drawn), kind
