from hypothesis import given
from hypothesis import strategies as st

from infra.ports import LogRecord
from projections.rows import normalise_name, normalise_time, rows_for
from schemas import codec
from schemas.events import Envelope
from tests.unit.test_codec import instance


def record_of(envelope: Envelope, offset: int = 7) -> LogRecord:
    return LogRecord(0, offset, envelope.key, codec.encode(envelope))


def test_rows_are_pure_and_repeatable() -> None:
    envelope = Envelope.of(instance(), key="1.2")
    record = record_of(envelope)
    decoded = codec.decode(record.value)
    first = rows_for(record, decoded, None).tables
    second = rows_for(record, decoded, None).tables
    assert first == second
    assert set(first) == {"patient", "study", "series", "instance", "instance_member", "receipt"}
    assert all(row["version"] == 7 for rows in first.values() for row in rows)
    assert first["study"][0]["patient_name"] == "Zeta^Jo"
    assert first["instance"][0]["frames"] == "[[[1000,512]]]"


def test_person_name_groups_and_normalisation() -> None:
    meta = {
        "00100010": {
            "vr": "PN",
            "Value": [
                {
                    "Alphabetic": "Yamada^Tarou",
                    "Ideographic": "山田^太郎",
                    "Phonetic": "やまだ^たろう",
                }
            ],
        },
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Gérard^Dépardieu"}]},
        "00080030": {"vr": "TM", "Value": ["0930"]},
    }
    envelope = Envelope.of(instance(metadata=meta), key="1.2")
    study = rows_for(record_of(envelope), envelope, None).tables["study"][0]
    assert study["patient_name"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert study["referring_physician_name_norm"] == "gerard^depardieu"
    assert study["study_time"] == "093000.000000"


def test_sidecar_metadata_is_used_for_levels_not_inlined() -> None:
    from schemas.events import BlobRef

    event = instance(metadata={}, sidecar=BlobRef("sidecars/a.json", "cd" * 32, 5, 0))
    envelope = Envelope.of(event, key="1.2")
    meta = {"00080060": {"vr": "CS", "Value": ["MR"]}}
    tables = rows_for(record_of(envelope), envelope, meta).tables
    assert tables["series"][0]["modality"] == "MR"
    assert tables["instance"][0]["metadata"] == ""
    assert tables["instance"][0]["sidecar_key"] == "sidecars/a.json"


@given(st.from_regex(r"\A([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?\Z"))
def test_time_normalisation_preserves_order_and_shape(tm: str) -> None:
    out = normalise_time(tm)
    assert len(out) == 13 and out[6] == "."
    assert out.replace(".", "").startswith(tm.replace(".", "")[:6])


@given(st.text())
def test_name_normalisation_is_idempotent(name: str) -> None:
    once = normalise_name(name)
    assert normalise_name(once) == once
