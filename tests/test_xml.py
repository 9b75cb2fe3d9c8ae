"""FHIR XML read into FHIR JSON with the type definitions: arrays, numbers, primitives' extensions."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings
from service.fhir.packages import DefinitionIndex
from service.fhir.xml import FhirXmlError, XmlReader
from service.validation.service import load_index

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "fhir-test-cases-r4"


@pytest.fixture(scope="module")
def reader() -> XmlReader:
    return XmlReader(load_index(Settings()))


def test_a_patient(reader: XmlReader) -> None:
    xml = b"""<Patient xmlns="http://hl7.org/fhir">
      <id value="p1"/>
      <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Hi</p></div></text>
      <active value="true"/>
      <name><family value="Doe"/><given value="A"/><given value="B"/></name>
      <name><text value="Second"/></name>
      <birthDate id="b1" value="1990-01-02">
        <extension url="http://example.org/x"><valueInteger value="3"/></extension>
      </birthDate>
      <multipleBirthInteger value="2"/>
      <contained><Organization><id value="o1"/><name value="Org"/></Organization></contained>
    </Patient>"""
    assert reader.read(xml, "p.xml") == {
        "resourceType": "Patient",
        "id": "p1",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Hi</p></div>'},
        "active": True,
        "name": [{"family": "Doe", "given": ["A", "B"]}, {"text": "Second"}],
        "birthDate": "1990-01-02",
        "_birthDate": {"id": "b1", "extension": [{"url": "http://example.org/x", "valueInteger": 3}]},
        "multipleBirthInteger": 2,
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}],
    }


def test_a_structure_definition_from_the_conformance_suite(reader: XmlReader) -> None:
    sd = reader.read((CONFORMANCE / "patient-min-profile-none.xml").read_bytes(), "sd.xml")
    assert sd["resourceType"] == "StructureDefinition" and sd["abstract"] is False
    assert sd["differential"]["element"][0] == {"path": "Patient.identifier", "min": 0}


def test_loose_xml_definitions_are_indexed(tmp_path: Path) -> None:
    index = load_index(Settings(), extra=[CONFORMANCE / "patient-min-profile-none.xml"])
    assert index.get("http://hl7.org/fhir/test/StructureDefinition/Patient-min-profile-none") is not None


@pytest.mark.parametrize(
    ("xml", "words"),
    [
        (b"<Patient", "not well-formed"),
        (b"<Patient><active value='true'/></Patient>", "FHIR namespace"),
        (b'<Spaceship xmlns="http://hl7.org/fhir"/>', "unknown resource type"),
        (
            b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            b'<Patient xmlns="http://hl7.org/fhir"><id value="&b;"/></Patient>',
            "unsafe XML",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>',
            "unsafe XML",
        ),
    ],
)
def test_bad_xml_is_refused(reader: XmlReader, xml: bytes, words: str) -> None:
    with pytest.raises(FhirXmlError, match=words):
        reader.read(xml, "x.xml")


def test_the_reader_needs_type_definitions() -> None:
    with pytest.raises(FhirXmlError, match="unknown resource type"):
        XmlReader(DefinitionIndex()).read(b'<Patient xmlns="http://hl7.org/fhir"/>', "x.xml")
