"""Extended character sets end to end, with dcmtk on the other side.

One server for the module. dcmtk storescu sends every pydicom-data charset
file (the PS3.5 Annex H/I/J examples: ISO 2022 IR 87/13/149, UTF-8, GB18030,
Latin-1, Cyrillic, Greek, Arabic, Hebrew) and synthetic studies: a Japanese
name in ISO 2022 IR 87, a Chinese name in UTF-8, a French name in Latin-1,
Latin-1 bytes with no Specific Character Set and Latin-1 bytes under a wrong
one (both must fall back to the default, ISO_IR 100). Then:

- QIDO-RS answers every name in Unicode (the projections hold Unicode);
- dcmtk findscu queries in the request's own character set (query files
  written by pydicom, or -k with Latin-1 bytes) match person names on every
  component group, and each response comes back in the request's character
  set when its values fit, else in ISO_IR 192 declared in the response;
- dcmtk's own decoder (dcm2xml +U8) reads the responses it can decode
  (its iconv build has no ISO 2022 IR 87), and the ISO 2022 IR 87 bytes equal
  the standard's example (chrH31.dcm) byte for byte.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_charset_files
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    generate_uid,
)

from api.dimse.ae import STUDY_ROOT_FIND
from tests.chronicle_server import ChronicleServer
from tests.support import dcmtk, make_ct, tool_env, write_part10, write_storescu_config

pytestmark = pytest.mark.interop

UTF8 = "ISO_IR 192"
JIS = ["", "ISO 2022 IR 87"]
#: pydicom-data's charset files that are whole instances (the chrSQ* files are fragments).
CHARSET_FILES = (
    "chrArab.dcm",
    "chrFren.dcm",
    "chrFrenMulti.dcm",
    "chrGerm.dcm",
    "chrGreek.dcm",
    "chrH31.dcm",
    "chrH32.dcm",
    "chrHbrw.dcm",
    "chrI2.dcm",
    "chrJapMulti.dcm",
    "chrJapMultiExplicitIR6.dcm",
    "chrKoreanMulti.dcm",
    "chrRuss.dcm",
    "chrX1.dcm",
    "chrX2.dcm",
)


@dataclass(frozen=True)
class Synthetic:
    """A study written by the test: its name, description and how its text is encoded."""

    patient_id: str
    name: str
    description: str
    charset: list[str] | str | None
    #: Replace the declared character set in the file's bytes (a wrong declaration).
    declared_instead: bytes | None = None


SYNTHETIC = {
    "japanese": Synthetic("JP-1", "Yamada^Tarou=山田^太郎=やまだ^たろう", "胸部単純", JIS),
    "chinese": Synthetic("CN-1", "Wang^XiaoDong=王^小东", "胸部平扫", UTF8),
    "french": Synthetic("FR-1", "Gérard^Dépardieu", "Thorax épaule", "ISO_IR 100"),
    "undeclared": Synthetic("L1-1", "Bérénice^Dupré", "Crâne", None),
    "misdeclared": Synthetic(
        "L1-2", "Noël^Françoise", "Genou", "ISO_IR 100", declared_instead=b"ISO_IR 192"
    ),
}


@dataclass(frozen=True)
class Sent:
    label: str
    path: Path
    study_uid: str
    #: The Unicode a correct decoder reads: pydicom's reading of the file, or the
    #: text written (for the undeclared and misdeclared ones, read as Latin-1).
    name: str
    description: str


# ---------------------------------------------------------------- the corpus


def _copy_with_new_uids(source: str, target: Path) -> Path:
    """A charset file under fresh study/series/instance UIDs, its text bytes untouched."""
    target.write_bytes(Path(source).read_bytes())
    argv = [dcmtk("dcmodify"), "-q", "-nb", "-gst", "-gse", "-gin", str(target)]
    subprocess.run(argv, check=True, capture_output=True, env=tool_env(), timeout=60)
    return target


def _charset_file(name: str, folder: Path) -> Sent:
    [source] = get_charset_files(name)
    path = _copy_with_new_uids(source, folder / name)
    ds = pydicom.dcmread(path)
    name_read = str(ds.PatientName)
    description = str(ds.get("StudyDescription", ""))
    return Sent(name, path, str(ds.StudyInstanceUID), name_read, description)


def _synthetic(label: str, spec: Synthetic, folder: Path) -> Sent:
    ds = make_ct(rows=8, cols=8, patient_name=spec.name, patient_id=spec.patient_id)
    ds.StudyDescription = spec.description
    if spec.charset is None:
        del ds.SpecificCharacterSet  # pydicom then writes Latin-1, undeclared
    else:
        ds.SpecificCharacterSet = spec.charset
    path = write_part10(ds, folder / f"{label}.dcm")
    if spec.declared_instead is not None:
        data = path.read_bytes()
        declared = str(spec.charset).encode("ascii")
        assert len(declared) == len(spec.declared_instead) and data.count(declared) == 1
        path.write_bytes(data.replace(declared, spec.declared_instead))
    if spec.charset != UTF8:
        assert spec.name.encode("utf-8") not in path.read_bytes(), "the name must not be UTF-8"
    return Sent(label, path, str(ds.StudyInstanceUID), spec.name, spec.description)


@pytest.fixture(scope="module")
def corpus(
    chronicle_server_module: ChronicleServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Sent]:
    folder = tmp_path_factory.mktemp("charsets")
    sent = [_charset_file(name, folder) for name in CHARSET_FILES]
    sent += [_synthetic(label, spec, folder) for label, spec in SYNTHETIC.items()]
    explicit = str(ExplicitVRLittleEndian)
    contexts = [(str(pydicom.dcmread(s.path).SOPClassUID), explicit) for s in sent]
    config = write_storescu_config(contexts, folder / "storescu.cfg")
    server = chronicle_server_module
    argv = [dcmtk("storescu"), "-v", "-xf", str(config), "Harness", "-aet", "STORESCU"]
    argv += ["-aec", server.ae_title, "-to", "10", "-ta", "30", "-td", "60"]
    argv += ["127.0.0.1", str(server.dimse_port)] + [str(s.path) for s in sent]
    result = subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=120)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert log.count("Received Store Response (Success)") == len(sent), log
    return {s.label: s for s in sent}


# ---------------------------------------------------------------- QIDO-RS


def _qido(server: ChronicleServer, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.dicomweb_url}/studies",
        params={**params, "includefield": "StudyDescription"},
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    )
    assert response.status_code in (200, 204), response.text
    return list(response.json()) if response.status_code == 200 else []


def _pn_json(name: str) -> dict[str, str]:
    groups = zip(("Alphabetic", "Ideographic", "Phonetic"), name.split("="), strict=False)
    return {group: text for group, text in groups if text}


def _study_labels(corpus: dict[str, Sent], study_uids: Sequence[str]) -> set[str]:
    by_uid = {s.study_uid: label for label, s in corpus.items()}
    return {by_uid.get(uid, uid) for uid in study_uids}


def _qido_labels(server: ChronicleServer, corpus: dict[str, Sent], **params: str) -> set[str]:
    found = _qido(server, **params)
    return _study_labels(corpus, [study["0020000D"]["Value"][0] for study in found])


@pytest.mark.parametrize("label", [*CHARSET_FILES, *SYNTHETIC])
def test_qido_answers_every_stored_name_in_unicode(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer, label: str
) -> None:
    sent = corpus[label]

    [study] = _qido(chronicle_server_module, StudyInstanceUID=sent.study_uid)

    assert study["00100010"].get("Value") == [_pn_json(sent.name)]
    if sent.description:
        assert study["00081030"].get("Value") == [sent.description]
    assert study["00080005"]["Value"] == [UTF8]


def test_text_without_or_with_a_wrong_character_set_is_read_as_the_default_latin1(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer
) -> None:
    server = chronicle_server_module

    assert _qido_labels(server, corpus, PatientName="Bérénice^Dupré") == {"undeclared"}
    assert _qido_labels(server, corpus, PatientName="Noël^Françoise") == {"misdeclared"}
    assert _qido_labels(server, corpus, StudyDescription="Crâne") == {"undeclared"}


def test_qido_matches_japanese_names_on_every_component_group(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer
) -> None:
    server = chronicle_server_module
    kanji = {"japanese", "chrH31.dcm", "chrH32.dcm"}
    hiragana = kanji | {"chrJapMulti.dcm", "chrJapMultiExplicitIR6.dcm"}

    assert _qido_labels(server, corpus, PatientName="山田^太郎") == kanji
    assert _qido_labels(server, corpus, PatientName="山田*") == kanji
    assert _qido_labels(server, corpus, PatientName="やまだ^たろう") == hiragana
    assert _qido_labels(server, corpus, PatientName="Yamada^Tarou=山田^太郎") == {
        "japanese",
        "chrH31.dcm",
    }
    assert _qido_labels(server, corpus, PatientName="ﾔﾏﾀﾞ^ﾀﾛｳ") == {"chrH32.dcm"}


def test_qido_matches_chinese_and_korean_names(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer
) -> None:
    server = chronicle_server_module

    assert _qido_labels(server, corpus, PatientName="王^小东") == {"chinese", "chrX2.dcm"}
    assert _qido_labels(server, corpus, PatientName="王^小東") == {"chrX1.dcm"}
    assert _qido_labels(server, corpus, PatientName="洪^吉洞") == {"chrI2.dcm"}
    assert _qido_labels(server, corpus, PatientName="홍*") == {"chrI2.dcm"}


def test_qido_fuzzy_matching_ignores_accents_and_case(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer
) -> None:
    server = chronicle_server_module

    assert _qido_labels(server, corpus, PatientName="gerard", fuzzymatching="true") == {"french"}
    assert _qido_labels(server, corpus, PatientName="GERARD^DEP", fuzzymatching="true") == {
        "french"
    }
    assert _qido_labels(server, corpus, PatientName="gerard*") == set()
    assert _qido_labels(server, corpus, PatientName="GÉRARD*") == {"french"}


# ---------------------------------------------------------------- dcmtk findscu


@dataclass(frozen=True)
class Answer:
    path: Path
    ds: Dataset

    @property
    def charset(self) -> list[str]:
        value = self.ds.get("SpecificCharacterSet", [])
        return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]

    def raw(self, keyword: str) -> bytes:
        """The value's bytes as sent (read afresh: pydicom converts values in place)."""
        element = pydicom.dcmread(self.path).get_item(keyword)
        assert element is not None and isinstance(element.value, bytes)
        return element.value.rstrip(b" ")


def _query_file(
    path: Path, charset: list[str] | str | None, patient_name: str, **keys: str
) -> Path:
    """A Study Root C-FIND identifier as a file, its text encoded by pydicom."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = STUDY_ROOT_FIND
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = patient_name
    ds.PatientID = ""
    ds.StudyDescription = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return write_part10(ds, path)


def _findscu(
    server: ChronicleServer, out: Path, query: Path | None, keys: Sequence[bytes] = ()
) -> list[Answer]:
    out.mkdir(parents=True, exist_ok=True)
    argv: list[bytes | str] = [dcmtk("findscu"), "-S", "-aet", "FINDSCU", "-aec", server.ae_title]
    argv += ["-to", "10", "-X", "-od", str(out)]
    for key in keys:
        argv += ["-k", key]
    argv += ["127.0.0.1", str(server.dimse_port)] + ([str(query)] if query else [])
    result = subprocess.run(argv, capture_output=True, env=tool_env(), timeout=60)
    assert result.returncode == 0, result.stdout.decode(errors="replace") + result.stderr.decode(
        errors="replace"
    )
    return [Answer(p, pydicom.dcmread(p)) for p in sorted(out.glob("rsp*.dcm"))]


def _by_label(corpus: dict[str, Sent], answers: list[Answer]) -> dict[str, Answer]:
    by_uid = {s.study_uid: label for label, s in corpus.items()}
    found = {by_uid.get(str(a.ds.StudyInstanceUID), "?"): a for a in answers}
    assert len(found) == len(answers), "one response per study"
    return found


def _dcmtk_reads(answer: Answer) -> str:
    """The response's PatientName as dcmtk decodes it (to UTF-8)."""
    result = subprocess.run(
        [dcmtk("dcm2xml"), "+U8", str(answer.path)],
        capture_output=True,
        env=tool_env(),
        timeout=30,
        check=True,
    )
    xml = result.stdout.decode("utf-8")
    match = re.search(r'name="PatientName">([^<]*)<', xml)
    assert match is not None, xml
    return match.group(1).rstrip("=")


def test_findscu_japanese_query_in_iso_2022_ir_87_matches_the_ideographic_group(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    query = _query_file(tmp_path / "q.dcm", JIS, "山田^太郎")
    assert b"\x1b$B" in query.read_bytes()

    answers = _by_label(corpus, _findscu(chronicle_server_module, tmp_path / "out", query))

    assert set(answers) == {"japanese", "chrH31.dcm", "chrH32.dcm"}
    for label, answer in answers.items():
        assert str(answer.ds.PatientName) == corpus[label].name, label
    # Every value fits ISO 2022 IR 87: the answer is in it, with its escape sequences,
    # exactly the bytes of the standard's example (PS3.5 H.3.1, chrH31.dcm).
    standard = pydicom.dcmread(corpus["chrH31.dcm"].path)
    for label in ("japanese", "chrH31.dcm"):
        assert answers[label].charset == JIS
        assert answers[label].raw("PatientName") == standard.get_item("PatientName").value.rstrip()
    assert answers["japanese"].ds.StudyDescription == "胸部単純"
    assert b"\x1b$B" in answers["japanese"].raw("StudyDescription")
    # Half-width katakana (ISO 2022 IR 13) are outside the request's repertoire.
    assert answers["chrH32.dcm"].charset == [UTF8]


def test_findscu_japanese_queries_on_the_phonetic_group_and_group_by_group(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    server = chronicle_server_module
    phonetic = _query_file(tmp_path / "phonetic.dcm", JIS, "やまだ^たろう")
    grouped = _query_file(tmp_path / "grouped.dcm", JIS, "Yamada^Tarou=山田^太郎")
    wildcard = _query_file(tmp_path / "wildcard.dcm", JIS, "=山田*")

    by_phonetic = _by_label(corpus, _findscu(server, tmp_path / "p", phonetic))
    by_groups = _by_label(corpus, _findscu(server, tmp_path / "g", grouped))
    by_wildcard = _by_label(corpus, _findscu(server, tmp_path / "w", wildcard))

    assert set(by_phonetic) == {
        "japanese",
        "chrH31.dcm",
        "chrH32.dcm",
        "chrJapMulti.dcm",
        "chrJapMultiExplicitIR6.dcm",
    }
    assert str(by_phonetic["chrJapMulti.dcm"].ds.PatientName) == "やまだ^たろう"
    assert by_phonetic["chrJapMulti.dcm"].charset == JIS
    assert set(by_groups) == {"japanese", "chrH31.dcm"}
    assert set(by_wildcard) == {"japanese", "chrH31.dcm", "chrH32.dcm"}


def test_findscu_chinese_query_in_utf8_and_gb18030(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    server = chronicle_server_module
    utf8 = _query_file(tmp_path / "utf8.dcm", UTF8, "王^小东")
    gb18030 = _query_file(tmp_path / "gb.dcm", "GB18030", "王*")

    in_utf8 = _by_label(corpus, _findscu(server, tmp_path / "u", utf8))
    in_gb18030 = _by_label(corpus, _findscu(server, tmp_path / "g", gb18030))

    assert set(in_utf8) == {"chinese", "chrX2.dcm"}
    assert set(in_gb18030) == {"chinese", "chrX1.dcm", "chrX2.dcm"}
    for answers, charset in ((in_utf8, [UTF8]), (in_gb18030, ["GB18030"])):
        for label, answer in answers.items():
            assert answer.charset == charset, label
            assert str(answer.ds.PatientName) == corpus[label].name, label
            assert _dcmtk_reads(answer) == corpus[label].name, label
    assert in_gb18030["chinese"].raw("PatientName") == "Wang^XiaoDong=王^小东".encode("gb18030")


def test_findscu_french_query_in_latin1_is_answered_in_latin1(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    keys = [b"QueryRetrieveLevel=STUDY", b"StudyInstanceUID", b"PatientID"]
    keys += [b"(0008,0005)=ISO_IR 100", "PatientName=Gérard*".encode("latin-1")]

    answers = _by_label(corpus, _findscu(chronicle_server_module, tmp_path, None, keys))

    assert set(answers) == {"french"}
    answer = answers["french"]
    assert answer.charset == ["ISO_IR 100"]
    assert answer.raw("PatientName") == "Gérard^Dépardieu".encode("latin-1")
    assert _dcmtk_reads(answer) == "Gérard^Dépardieu"


def test_findscu_query_in_the_default_repertoire_gets_non_ascii_answers_in_utf8(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    keys = [b"QueryRetrieveLevel=STUDY", b"StudyInstanceUID", b"PatientID", b"PatientName=G?rard*"]

    answers = _by_label(corpus, _findscu(chronicle_server_module, tmp_path, None, keys))

    assert set(answers) == {"french"}
    assert answers["french"].charset == [UTF8]
    assert answers["french"].raw("PatientName") == "Gérard^Dépardieu".encode()
    assert _dcmtk_reads(answers["french"]) == "Gérard^Dépardieu"


def test_findscu_query_without_character_set_is_read_as_the_default_latin1(
    corpus: dict[str, Sent], chronicle_server_module: ChronicleServer, tmp_path: Path
) -> None:
    query = _query_file(tmp_path / "q.dcm", None, "Bérénice*")
    assert "Bérénice".encode("latin-1") in query.read_bytes()

    answers = _by_label(corpus, _findscu(chronicle_server_module, tmp_path / "out", query))

    assert set(answers) == {"undeclared"}
    assert answers["undeclared"].charset == [UTF8]
    assert str(answers["undeclared"].ds.PatientName) == "Bérénice^Dupré"
