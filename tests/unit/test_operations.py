"""An OperationDefinition against the Parameters profiles its inputProfile and outputProfile name (cardinality,
types and target profiles of each parameter), and opd-3 as the reference validator corrects it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.validation.issues import Issue
from casebridge.validation.operations import opd_3
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Validator

IN_PROFILE = "http://example.org/fhir/StructureDefinition/op-in"
OUT_PROFILE = "http://example.org/fhir/StructureDefinition/op-out"
QR_PROFILE = "http://example.org/fhir/StructureDefinition/my-qr"


def parameters_profile(url: str, *slices: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A Parameters profile with one slice of parameter per (name, extra differential elements)."""
    elements: list[dict[str, Any]] = [
        {"id": "Parameters", "path": "Parameters"},
        {
            "id": "Parameters.parameter",
            "path": "Parameters.parameter",
            "slicing": {"discriminator": [{"type": "value", "path": "name"}], "rules": "open"},
        },
    ]
    for name, extra in slices:
        elements.append(
            {"id": f"Parameters.parameter:{name}", "path": "Parameters.parameter", "sliceName": name, "min": 1}
        )
        elements.append(
            {"id": f"Parameters.parameter:{name}.name", "path": "Parameters.parameter.name", "fixedString": name}
        )
        elements.extend({**e, "id": e["id"].replace("SLICE", name)} for e in extra)
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "version": "1.0.0",
        "name": url.rsplit("/", 1)[1].replace("-", ""),
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Parameters",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Parameters",
        "derivation": "constraint",
        "differential": {"element": elements},
    }


RESOURCE_ONLY = [
    {"id": "Parameters.parameter:SLICE.value[x]", "path": "Parameters.parameter.value[x]", "max": "0"},
    {
        "id": "Parameters.parameter:SLICE.resource",
        "path": "Parameters.parameter.resource",
        "type": [{"code": "QuestionnaireResponse", "profile": [QR_PROFILE]}],
    },
    {"id": "Parameters.parameter:SLICE.part", "path": "Parameters.parameter.part", "max": "0"},
]
REFERENCE_ONLY = [
    {
        "id": "Parameters.parameter:SLICE.value[x]",
        "path": "Parameters.parameter.value[x]",
        "type": [{"code": "Reference", "targetProfile": [QR_PROFILE]}],
    },
    # A max given as a JSON number is read as its text.
    {"id": "Parameters.parameter:SLICE.resource", "path": "Parameters.parameter.resource", "max": 0},
    {"id": "Parameters.parameter:SLICE.part", "path": "Parameters.parameter.part", "max": "0"},
]


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    folder = tmp_path_factory.mktemp("operation-definitions")
    (folder / "in.json").write_text(json.dumps(parameters_profile(IN_PROFILE, ("response", RESOURCE_ONLY))))
    out = parameters_profile(OUT_PROFILE, ("response", RESOURCE_ONLY), ("link", REFERENCE_ONLY))
    out["differential"]["element"][2]["max"] = "1"  # response: 1..1
    (folder / "out.json").write_text(json.dumps(out))
    return load_validator(Settings(), [folder])


def parameter(name: str, use: str, kind: str, min_: int = 1, max_: str = "1", **more: Any) -> dict[str, Any]:
    return {"name": name, "use": use, "min": min_, "max": max_, "documentation": name, "type": kind, **more}


def operation(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "OperationDefinition",
        "url": "http://example.org/fhir/OperationDefinition/next",
        "name": "Next",
        "status": "active",
        "kind": "operation",
        "code": "next",
        "system": False,
        "type": True,
        "instance": False,
        "resource": ["Questionnaire"],
        "inputProfile": IN_PROFILE,
        "outputProfile": OUT_PROFILE,
        "parameter": list(parameters),
    }


def errors(issues: list[Issue]) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in issues if i.severity in ("error", "fatal")]


def test_parameters_that_say_what_the_profiles_say(validator: Validator) -> None:
    resource = operation(
        parameter("response", "in", "QuestionnaireResponse", max_="*"),
        parameter("response", "out", "QuestionnaireResponse"),
        parameter("link", "out", "Reference", max_="*", targetProfile=[QR_PROFILE]),
    )
    issues = validator.validate(resource)
    assert errors(issues) == []
    # The in profile's slice may repeat (max * from the base), the parameter too: nothing to warn of either.
    assert not [i for i in issues if "profile" in i.message and i.severity == "warning"]


def test_cardinality_that_differs_from_the_profile(validator: Validator) -> None:
    resource = operation(
        parameter("response", "in", "QuestionnaireResponse", min_=0, max_="*"),
        parameter("response", "out", "QuestionnaireResponse", max_="*"),
        parameter("link", "out", "Reference", max_="*", targetProfile=[QR_PROFILE]),
    )
    assert errors(validator.validate(resource)) == [
        (
            "OperationDefinition.inputProfile.parameter[0]",
            "The parameter 'response' has a value for 'min' of '1' in the 'in' profile 1 that is different to '0' "
            "which is the value in the parameter definition in the operation definition",
        ),
        (
            "OperationDefinition.outputProfile.parameter[1]",
            "The parameter 'response' has a value for 'max' of '1' in the 'out' profile 1 that is different to '*' "
            "which is the value in the parameter definition in the operation definition",
        ),
    ]


def test_types_and_target_profiles_that_differ_from_the_profile(validator: Validator) -> None:
    resource = operation(
        parameter("response", "in", "QuestionnaireResponse", max_="*", targetProfile=[QR_PROFILE]),
        parameter("response", "out", "Questionnaire"),
        parameter("link", "out", "Reference", max_="*"),
    )
    out = f"{OUT_PROFILE}|1.0.0"
    assert errors(validator.validate(resource)) == [
        (
            "OperationDefinition.inputProfile.parameter[0]",
            f"The target profile '{QR_PROFILE}' is not allowed for the parameter 'response' in the 'in' profile but "
            "is in the list of target profiles for the parameter in the operation definition (profile target "
            "profiles = (none))",
        ),
        (
            "OperationDefinition.outputProfile.parameter[1]",
            f"The type 'QuestionnaireResponse' is allowed for the parameter 'response' in the 'out' profile {out} "
            "but is not in the list of allowed types for the parameter in the operation definition: Questionnaire",
        ),
        (
            "OperationDefinition.outputProfile.parameter[1]",
            f"The type 'Questionnaire' is not allowed for the parameter 'response' in the 'out' profile {out} but is "
            "in the list of allowed types for the parameter in the operation definition (allowed types = "
            "QuestionnaireResponse)",
        ),
        (
            "OperationDefinition.outputProfile.parameter[2]",
            f"The target profile '{QR_PROFILE}' is allowed for the parameter 'link' in the 'out' profile {out} but is "
            "not in the list of target profiles for the parameter in the operation definition: (none)",
        ),
    ]


def test_parameters_and_slices_without_a_counterpart_are_warnings(validator: Validator) -> None:
    resource = operation(
        parameter("other", "in", "string"),
        parameter("response", "out", "QuestionnaireResponse"),
        parameter("link", "out", "Reference", max_="*", targetProfile=[QR_PROFILE]),
    )
    issues = validator.validate(resource)
    assert errors(issues) == []
    warnings = [(i.expression, i.message) for i in issues if i.severity == "warning"]
    assert (
        "OperationDefinition.inputProfile",
        f"The 'in' profile {IN_PROFILE}|1.0.0 defines a parameter 'response' but this is not in the parameters list "
        "in the operation definition",
    ) in warnings
    assert (
        "OperationDefinition.inputProfile.parameter[0]",
        "The 'in' profile does not have a parameter 'other' but it is in the parameters list in the operation "
        "definition",
    ) in warnings


def test_a_resource_parameter_may_have_target_profiles() -> None:
    # opd-3 as R4 published it allows targetProfile on Reference and canonical only; R5 and the reference
    # validator allow it on a resource type too.
    assert opd_3({"type": "QuestionnaireResponse", "targetProfile": [QR_PROFILE]})
    assert opd_3({"type": "Reference", "targetProfile": [QR_PROFILE]})
    assert opd_3({"type": "string"})
    assert not opd_3({"type": "string", "targetProfile": [QR_PROFILE]})


def test_opd_3_is_not_reported_on_a_resource_parameter(validator: Validator) -> None:
    resource = operation(parameter("response", "in", "QuestionnaireResponse", max_="*", targetProfile=[QR_PROFILE]))
    resource.pop("inputProfile")
    resource.pop("outputProfile")
    assert not [i for i in validator.validate(resource) if "opd-3" in i.message]
    resource["parameter"][0]["type"] = "string"
    assert [i.expression for i in validator.validate(resource) if "opd-3" in i.message] == [
        "OperationDefinition.parameter[0]"
    ]
