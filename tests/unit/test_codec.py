import json
from importlib import resources

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.events import BlobRef, Envelope, InstanceStored, Source

SHA = "ab" * 32
uids = st.from_regex(r"\A[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,6}\Z")


def instance(**overrides: object) -> InstanceStored:
    fields: dict[str, object] = dict(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4",
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
        patient_id="P1",
        issuer_of_patient_id="",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob=BlobRef(f"instances/ab/ab/{SHA}.dcm", SHA, 1000, 300),
        source=Source("DIMSE", calling_ae="MOD", called_ae="CHRONICLE", peer="127.0.0.1:4000"),
        metadata={"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Zeta^Jo"}]}},
        frames=[[(1000, 512)]],
    )
    fields.update(overrides)
    return InstanceStored(**fields)  # type: ignore[arg-type]


def schema() -> dict[str, object]:
    text = resources.files("schemas").joinpath("jsonschema/InstanceStored.v1.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@settings(deadline=None)  # validating against the JSON Schema is slow on a loaded machine
@given(study=uids, sop=uids, pid=st.text(max_size=64), ae=st.text(max_size=16))
def test_round_trip_and_published_schema(study: str, sop: str, pid: str, ae: str) -> None:
    event = instance(
        study_instance_uid=study,
        sop_instance_uid=sop,
        patient_id=pid,
        source=Source("STOW", calling_ae=ae),
    )
    envelope = Envelope.of(event, key=study, site="site-a", node="n1")
    data = codec.encode(envelope)
    assert codec.decode(data) == envelope
    jsonschema.validate(json.loads(data), schema())


def test_sidecar_and_no_frames_round_trip() -> None:
    event = instance(
        frames=None,
        frames_note="deflated",
        metadata={},
        sidecar=BlobRef("sidecars/x.json", SHA, 10, 0),
    )
    envelope = Envelope.of(event, key="1.2")
    assert codec.decode(codec.encode(envelope)) == envelope
    jsonschema.validate(json.loads(codec.encode(envelope)), schema())


def test_frames_sidecar_round_trips_and_older_events_lack_it() -> None:
    event = instance(frames=None, frames_sidecar=BlobRef("sidecars/f.json", SHA, 99, 0))
    envelope = Envelope.of(event, key="1.2")
    data = codec.encode(envelope)
    assert codec.decode(data) == envelope
    jsonschema.validate(json.loads(data), schema())
    older = json.loads(codec.encode(Envelope.of(instance(), key="1.2")))
    del older["payload"]["frames_sidecar"]  # written before the field existed
    jsonschema.validate(older, schema())
    decoded = codec.decode(json.dumps(older).encode()).payload
    assert isinstance(decoded, InstanceStored) and decoded.frames_sidecar is None


def test_upcasters_run_for_older_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    envelope = Envelope.of(instance(), key="1.2")
    raw = json.loads(codec.encode(envelope))
    raw["schema_version"] = 0
    del raw["payload"]["frames_note"]
    monkeypatch.setitem(
        codec.UPCASTERS, ("InstanceStored", 0), lambda p: {**p, "frames_note": "upcast"}
    )
    decoded = codec.decode(json.dumps(raw).encode())
    assert decoded.payload.frames_note == "upcast"
    assert decoded.schema_version == 1


@pytest.mark.parametrize("data", [b"", b"{}", b"not json", b'{"type": "Nope"}'])
def test_garbage_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode(data)
