"""api.render_docs: SR content trees as text and HTML, encapsulated documents, placeholders."""

from __future__ import annotations

import html
from html.parser import HTMLParser

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from api.render_docs import (
    content_tree,
    document_media_type,
    encapsulated_document,
    item_value,
    placeholder_image,
    placeholder_label,
    sr_html,
    sr_text,
)


def code(meaning: str, value: str = "X", scheme: str = "99TEST") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def content(value_type: str, name: str, relationship: str = "CONTAINS", **attrs: object) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    item.ConceptNameCodeSequence = [code(name)]
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def report() -> Dataset:
    """A small Comprehensive SR: one of each common value type, nested."""
    measured = Dataset()
    measured.NumericValue = "12.5"
    measured.MeasurementUnitsCodeSequence = [code("millimeter", "mm", "UCUM")]
    reference = Dataset()
    reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    reference.ReferencedSOPInstanceUID = "1.2.3.4.5"
    finding = content(
        "CONTAINER",
        "Finding",
        ContinuityOfContent="SEPARATE",
        ContentSequence=[
            content("NUM", "Diameter", MeasuredValueSequence=[measured]),
            content("CODE", "Site", "HAS CONCEPT MOD", ConceptCodeSequence=[code("Left lung")]),
            content("IMAGE", "Source", "INFERRED FROM", ReferencedSOPSequence=[reference]),
            content(
                "SCOORD", "Outline", "INFERRED FROM", GraphicType="POINT", GraphicData=[1.5, 2]
            ),
        ],
    )
    by_reference = Dataset()
    by_reference.RelationshipType = "INFERRED FROM"
    by_reference.ReferencedContentItemIdentifier = [1, 2, 1]
    ds = Dataset()
    ds.PatientName, ds.PatientID = "Doe^Jane", "P-1"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "VERIFIED"
    ds.ConceptNameCodeSequence = [code("Chest CT report")]
    ds.ContentSequence = [
        content("TEXT", "Impression", TextValue="Nodule <8 mm> & stable\nno change"),
        finding,
        content("PNAME", "Reader", "HAS OBS CONTEXT", PersonName="Smith^John"),
        content("DATE", "Exam date", "HAS OBS CONTEXT", Date="20240115"),
        by_reference,
    ]
    return ds


def test_plain_text_lists_every_content_item_indented() -> None:
    text = sr_text(report())
    lines = text.splitlines()
    assert lines[0] == "Chest CT report" and lines[1] == "=" * len("Chest CT report")
    assert "Patient: Doe Jane" in lines and "Verification: VERIFIED" in lines
    assert "[CONTAINS] Impression: Nodule <8 mm> & stable" in lines
    assert "[CONTAINS] Finding" in lines
    assert "  [CONTAINS] Diameter: 12.5 mm" in lines
    assert "  [HAS CONCEPT MOD] Site: Left lung" in lines
    assert "  [INFERRED FROM] Source: 1.2.3.4.5" in lines
    assert "  [INFERRED FROM] Outline: POINT (1.5, 2)" in lines
    assert "[HAS OBS CONTEXT] Reader: Smith John" in lines
    assert "[HAS OBS CONTEXT] Exam date: 20240115" in lines
    assert "[INFERRED FROM] (see content item 1.2.1)" in lines


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.depth = self.max_depth = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "ul":
            self.depth += 1
            self.max_depth = max(self.max_depth, self.depth)

    def handle_endtag(self, tag: str) -> None:
        if tag == "ul":
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_nests_lists_and_escapes_text() -> None:
    page = sr_html(report())
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "Nodule &lt;8 mm&gt; &amp; stable<br>no change" in page
    parsed = _Collect()
    parsed.feed(page)
    assert parsed.max_depth == 2 and parsed.depth == 0
    words = html.unescape(" ".join(parsed.text))
    for expected in ("Diameter: 12.5 mm", "Site: Left lung", "Reader: Smith John"):
        assert expected in words


def test_pydicom_sr_files_render_their_text_values() -> None:
    for name in ("test-SR.dcm", "reportsi.dcm"):
        path = get_testdata_file(name)
        assert isinstance(path, str)
        ds = dcmread(path)
        text = sr_text(ds)
        values = _text_values(ds)
        assert values, name
        for value in values:
            assert value.splitlines()[0].strip() in text
        assert len(content_tree(ds)) == len(ds.ContentSequence)


def _text_values(ds: Dataset) -> list[str]:
    found = []
    for item in ds.get("ContentSequence") or []:
        if "TextValue" in item:
            found.append(str(item.TextValue))
        found += _text_values(item)
    return found


def test_num_without_measurement_and_unitless_values() -> None:
    empty = content("NUM", "Size")
    empty.NumericValueQualifierCodeSequence = [code("Not a number")]
    assert item_value(empty) == "Not a number"
    measured = Dataset()
    measured.NumericValue = "3"
    measured.MeasurementUnitsCodeSequence = [code("no units", "1", "UCUM")]
    assert item_value(content("NUM", "Count", MeasuredValueSequence=[measured])) == "3"


def pdf(data: bytes, length: int | None = None) -> Dataset:
    ds = Dataset()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "Discharge summary"
    ds.EncapsulatedDocument = data
    if length is not None:
        ds.EncapsulatedDocumentLength = length
    return ds


def test_encapsulated_document_bytes_without_padding() -> None:
    body = b"%PDF-1.4\n%odd\n%%EOF"
    assert encapsulated_document(pdf(body + b"\x00", len(body))) == body
    assert encapsulated_document(pdf(body + b"\x00")) == body + b"\x00"
    assert document_media_type(pdf(body)) == "application/pdf"
    cda = pdf(b"<ClinicalDocument/>")
    cda.MIMETypeOfEncapsulatedDocument = "text/XML"
    assert document_media_type(cda) == "text/xml"


def test_placeholders_name_what_the_instance_is() -> None:
    assert placeholder_label(pdf(b"%PDF")) == ("PDF", "Discharge summary")
    assert placeholder_label(report()) == ("SR", "Chest CT report")
    kos = Dataset()
    kos.Modality = "KO"
    assert placeholder_label(kos) == ("KO", "")
    image = placeholder_image(report(), (128, 96))
    assert image.size == (128, 96) and image.mode == "RGB"
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 2, "the label is drawn"
