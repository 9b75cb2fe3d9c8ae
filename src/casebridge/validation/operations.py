"""An OperationDefinition's own consistency (operationdefinition.html).

inputProfile and outputProfile name a Parameters profile that must say what the ``parameter`` list says. As the
reference validator (OperationDefinitionValidator), each slice of ``Parameters.parameter`` is matched by its fixed
(or pattern) ``name`` to the parameter of that name and use (in / out):

* a slice without such a parameter, or a parameter of that use without a slice, is a warning;
* min and max that differ between the slice and the parameter are errors;
* the types of the slice's ``value[x]`` or ``resource`` (whichever the slice uses: not limited to max 0, the
  others not required) and the parameter's type (or its allowed-type extensions) must be the same set, each
  type missing on one side an error;
* so must the target profiles of those types and the parameter's ``targetProfile``.

A profile that is not loaded, not a Parameters profile, or unusable is not judged here.

opd-3 as R4 published it allows a targetProfile only on Reference and canonical parameters; R5 (and the
reference validator on R4, which corrects the expression) allows one on a resource type too: ``opd_3`` is that
corrected rule, run by the invariants module in place of the R4 expression.

Apart from the walk because it reads other definitions (the Parameters profiles); called for
OperationDefinition resources only.
"""

from __future__ import annotations

from typing import Any

from casebridge.definitions.snapshot import generate_snapshot, needs_snapshot
from casebridge.definitions.structure import DefinitionError, Definitions, ElementNode, StructureTree, compile_structure
from casebridge.validation.issues import Run, as_list, as_obj

ALLOWED_TYPE = "http://hl7.org/fhir/StructureDefinition/operationdefinition-allowed-type"

# The R4 resource-types code system (the value set opd-3's correction names).
R4_RESOURCE_TYPES = frozenset(
    """Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic
    Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry
    ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication
    CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage
    CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric
    DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference DomainResource
    EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition
    Evidence EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition
    Group GuidanceResponse HealthcareService ImagingStudy Immunization ImmunizationEvaluation
    ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice Library Linkage List Location Measure
    MeasureReport Media Medication MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication
    MedicinalProductIndication MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured
    MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition
    MessageHeader MolecularSequence NamingSystem NutritionOrder Observation ObservationDefinition
    OperationDefinition OperationOutcome Organization OrganizationAffiliation Parameters Patient PaymentNotice
    PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire
    QuestionnaireResponse RelatedPerson RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy
    ResearchSubject Resource RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot
    Specimen SpecimenDefinition StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid
    SubstancePolymer SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification
    SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet VerificationResult
    VisionPrescription""".split()
)

# opd-3 as published in R4 (checked by ``opd_3`` instead).
OPD_3_R4 = "targetProfile.exists() implies (type = 'Reference' or type = 'canonical')"


def opd_3(item: Any, root: Any = None) -> bool:
    """opd-3 corrected: targetProfile.exists() implies (type = 'Reference' or type = 'canonical' or
    type.memberOf('http://hl7.org/fhir/ValueSet/resource-types'))."""
    if not isinstance(item, dict) or not as_list(item.get("targetProfile")):
        return True
    kind = item.get("type")
    return kind in ("Reference", "canonical") or kind in R4_RESOURCE_TYPES


def check_operation_definition(opdef: dict[str, Any], definitions: Definitions, run: Run, expr: str) -> None:
    for key, use in (("inputProfile", "in"), ("outputProfile", "out")):
        url = opdef.get(key)
        if isinstance(url, str):
            tree = _parameters_profile(definitions, url)
            if tree is not None:
                _check_profile(opdef, tree, use, run, f"{expr}.{key}")


def _parameters_profile(definitions: Definitions, url: str) -> StructureTree | None:
    sd = definitions.get(url)
    if sd is None or sd.get("resourceType") != "StructureDefinition" or sd.get("type") != "Parameters":
        return None
    # A max given as a JSON number is read as its text, as the reference validator's parser does.
    sd = dict(sd)
    for part in ("differential", "snapshot"):
        holder = sd.get(part)
        if isinstance(holder, dict) and isinstance(holder.get("element"), list):
            elements = [dict(e) if isinstance(e, dict) else e for e in holder["element"]]
            for e in elements:
                if isinstance(e, dict) and isinstance(e.get("max"), int) and not isinstance(e.get("max"), bool):
                    e["max"] = str(e["max"])
            sd[part] = {**holder, "element": elements}
    try:
        return compile_structure(generate_snapshot(sd, definitions) if needs_snapshot(sd) else sd)
    except DefinitionError:
        return None


def _check_profile(opdef: dict[str, Any], tree: StructureTree, use: str, run: Run, expr: str) -> None:
    params = [as_obj(p) for p in as_list(opdef.get("parameter"))]
    matched: set[int] = set()
    sliced = tree.root.children.get("parameter")
    for slice_node in sliced.slices.values() if sliced is not None else ():
        name_node = slice_node.children.get("name")
        name = None if name_node is None else (name_node.fixed if name_node.fixed is not None else name_node.pattern)
        if not isinstance(name, str):
            continue
        index = next((i for i, p in enumerate(params) if p.get("name") == name and p.get("use") == use), None)
        if index is None:
            message = (
                f"The '{use}' profile {tree.label} defines a parameter '{name}' but this is not in the parameters "
                "list in the operation definition"
            )
            run.add("warning", "unknown", message, expr)
            continue
        matched.add(index)
        _compare(params[index], slice_node, tree, use, name, run, f"{expr}.parameter[{index}]")
    for i, param in enumerate(params):
        if i not in matched and param.get("use") == use:
            message = (
                f"The '{use}' profile does not have a parameter '{param.get('name')}' but it is in the parameters "
                "list in the operation definition"
            )
            run.add("warning", "unknown", message, f"{expr}.parameter[{i}]")


def _compare(
    param: dict[str, Any], slice_node: ElementNode, tree: StructureTree, use: str, name: str, run: Run, expr: str
) -> None:
    """A parameter against the slice that profiles it: cardinality, types and target profiles."""
    profile_max = "*" if slice_node.max is None else str(slice_node.max)
    for prop, mine, theirs in (("min", param.get("min"), str(slice_node.min)), ("max", param.get("max"), profile_max)):
        if not isinstance(mine, (int, str)) or isinstance(mine, bool) or str(mine) == theirs:
            continue
        if prop == "max" and not (str(mine) == "*" or str(mine).isdigit()):
            continue  # an unreadable max is not compared
        message = (
            f"The parameter '{name}' has a value for '{prop}' of '{theirs}' in the '{use}' profile {theirs} that is "
            f"different to '{mine}' which is the value in the parameter definition in the operation definition"
        )
        run.add("error", "unknown", message, expr)

    allowed_types: list[str] = [
        str(as_obj(e).get("valueUri"))
        for e in as_list(param.get("extension"))
        if as_obj(e).get("url") == ALLOWED_TYPE and isinstance(as_obj(e).get("valueUri"), str)
    ]
    if not allowed_types and isinstance(param.get("type"), str):
        allowed_types = [str(param["type"])]
    allowed_targets = [t for t in as_list(param.get("targetProfile")) if isinstance(t, str)]

    value, resource, part = (slice_node.children.get(n) for n in ("value[x]", "resource", "part"))
    profile_types: list[str] = []
    profile_targets: list[str] = []
    for focus, others in ((value, (resource, part)), (resource, (value, part))):
        if focus is None or not _used(focus, others):
            continue
        for type_ref in focus.types:
            profile_types.append(type_ref.code)
            # A resource's own profiles are not target profiles: only targetProfile counts.
            profile_targets.extend(type_ref.target_profiles)
            if type_ref.code not in allowed_types:
                message = (
                    f"The type '{type_ref.code}' is allowed for the parameter '{name}' in the '{use}' profile "
                    f"{tree.label} but is not in the list of allowed types for the parameter in the operation "
                    f"definition: {_join(allowed_types)}"
                )
                run.add("error", "invalid", message, expr)
    for t in allowed_types:
        if t not in profile_types:
            message = (
                f"The type '{t}' is not allowed for the parameter '{name}' in the '{use}' profile {tree.label} but is "
                f"in the list of allowed types for the parameter in the operation definition (allowed types = "
                f"{_join(profile_types)})"
            )
            run.add("error", "invalid", message, expr)
    for t in allowed_targets:
        if t not in profile_targets:
            message = (
                f"The target profile '{t}' is not allowed for the parameter '{name}' in the '{use}' profile but is in "
                f"the list of target profiles for the parameter in the operation definition (profile target "
                f"profiles = {_join(profile_targets)})"
            )
            run.add("error", "invalid", message, expr)
    for t in profile_targets:
        if t not in allowed_targets:
            message = (
                f"The target profile '{t}' is allowed for the parameter '{name}' in the '{use}' profile {tree.label} "
                f"but is not in the list of target profiles for the parameter in the operation definition: "
                f"{_join(allowed_targets)}"
            )
            run.add("error", "invalid", message, expr)


def _used(focus: ElementNode, others: tuple[ElementNode | None, ...]) -> bool:
    """Whether a slice carries its value in ``focus``: not prohibited there, and not required elsewhere."""
    return focus.max != 0 and not any(other is not None and other.min > 0 for other in others)


def _join(items: list[str]) -> str:
    """As the reference validator lists them: "a,b and c"; "(none)" for none."""
    if not items:
        return "(none)"
    return items[0] if len(items) == 1 else ",".join(items[:-1]) + " and " + items[-1]
