"""The seed's STOW-RS request: an encapsulated PDF as XML metadata plus a bulk data part.

The seed (the DICOMweb overview with dcm4chee examples, /work/shared/SEEDS.md)
lists "STOW of an encapsulated PDF as XML metadata plus a bulk data part linked
by Content-Location" among the worked examples a client will try. It describes
the request without quoting its bytes, so this is that request as a client
puts it on the wire: root type application/dicom+xml, one NativeDicomModel
part whose Encapsulated Document is a BulkData uri, and one application/pdf
part whose Content-Location is that uri.
"""

from __future__ import annotations

STUDY = "1.2.826.0.1.3680043.8.498.77001"
SERIES = "1.2.826.0.1.3680043.8.498.77001.1"
PDF_INSTANCE = "1.2.826.0.1.3680043.8.498.77001.1.1"


def report_pdf() -> bytes:
    """A valid one-page PDF, over the 1 KiB inline limit and of even length (no pad byte)."""
    lines = [f"(Finding {n}: no acute abnormality in region {n}) Tj T*" for n in range(1, 25)]
    stream = ("BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(lines) + " ET").encode("ascii")
    stream += b" " * (len(stream) % 2)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out + b"\n" * (len(out) % 2)


PDF = report_pdf()
SEED_LOCATION = "http://localhost:8080/dcm4chee-arc/aets/DCM4CHEE/rs/bulk/report.pdf"

SEED_CONTENT_TYPE = 'multipart/related; type="application/dicom+xml"; boundary=myboundary'
SEED_METADATA = f"""<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00080005" vr="CS" keyword="SpecificCharacterSet">
    <Value number="1">ISO_IR 192</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080016" vr="UI" keyword="SOPClassUID">
    <Value number="1">1.2.840.10008.5.1.4.1.1.104.1</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080018" vr="UI" keyword="SOPInstanceUID">
    <Value number="1">{PDF_INSTANCE}</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080020" vr="DA" keyword="StudyDate">
    <Value number="1">20240115</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080023" vr="DA" keyword="ContentDate">
    <Value number="1">20240115</Value>
  </DicomAttribute>
  <DicomAttribute tag="0008002A" vr="DT" keyword="AcquisitionDateTime">
    <Value number="1">20240115093000</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080033" vr="TM" keyword="ContentTime">
    <Value number="1">093000</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080050" vr="SH" keyword="AccessionNumber">
    <Value number="1">ACC-PDF-1</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080060" vr="CS" keyword="Modality">
    <Value number="1">DOC</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080064" vr="CS" keyword="ConversionType">
    <Value number="1">WSD</Value>
  </DicomAttribute>
  <DicomAttribute tag="00100010" vr="PN" keyword="PatientName">
    <PersonName number="1">
      <Alphabetic><FamilyName>Zeta</FamilyName><GivenName>Zoë</GivenName></Alphabetic>
    </PersonName>
  </DicomAttribute>
  <DicomAttribute tag="00100020" vr="LO" keyword="PatientID">
    <Value number="1">PDF-SEED-1</Value>
  </DicomAttribute>
  <DicomAttribute tag="00100030" vr="DA" keyword="PatientBirthDate">
    <Value number="1">19700101</Value>
  </DicomAttribute>
  <DicomAttribute tag="00100040" vr="CS" keyword="PatientSex">
    <Value number="1">O</Value>
  </DicomAttribute>
  <DicomAttribute tag="0020000D" vr="UI" keyword="StudyInstanceUID">
    <Value number="1">{STUDY}</Value>
  </DicomAttribute>
  <DicomAttribute tag="0020000E" vr="UI" keyword="SeriesInstanceUID">
    <Value number="1">{SERIES}</Value>
  </DicomAttribute>
  <DicomAttribute tag="00200011" vr="IS" keyword="SeriesNumber">
    <Value number="1">1</Value>
  </DicomAttribute>
  <DicomAttribute tag="00200013" vr="IS" keyword="InstanceNumber">
    <Value number="1">1</Value>
  </DicomAttribute>
  <DicomAttribute tag="00280301" vr="CS" keyword="BurnedInAnnotation">
    <Value number="1">YES</Value>
  </DicomAttribute>
  <DicomAttribute tag="00420010" vr="ST" keyword="DocumentTitle">
    <Value number="1">Radiology report</Value>
  </DicomAttribute>
  <DicomAttribute tag="00420011" vr="OB" keyword="EncapsulatedDocument">
    <BulkData uri="{SEED_LOCATION}"/>
  </DicomAttribute>
  <DicomAttribute tag="00420012" vr="LO" keyword="MIMETypeOfEncapsulatedDocument">
    <Value number="1">application/pdf</Value>
  </DicomAttribute>
</NativeDicomModel>
"""
SEED_BODY = (
    b"--myboundary\r\n"
    b"Content-Type: application/dicom+xml\r\n"
    b"\r\n" + SEED_METADATA.encode("utf-8") + b"\r\n"
    b"--myboundary\r\n"
    b"Content-Type: application/pdf\r\n"
    b"Content-Location: " + SEED_LOCATION.encode() + b"\r\n"
    b"\r\n" + PDF + b"\r\n"
    b"--myboundary--\r\n"
)
