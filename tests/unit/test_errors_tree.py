"""The exception tree drawn in casebridge.errors is the package's: every CasebridgeError subclass, wherever it is
defined, appears there under its parent, with the module it lives in."""

from __future__ import annotations

import importlib
import pkgutil
import re

import casebridge
import casebridge.errors
from casebridge.errors import CasebridgeError

# "    │   ├── DefinitionShapeError   [definitions.structure] a definition's JSON ..."
_BRANCH = re.compile(r"^(?P<indent>[ │]*)[├└]── (?P<name>\w+)(?:\s+\[(?P<module>[\w.]+)\])?")


def drawn() -> dict[str, tuple[str, str]]:
    """name -> (parent's name, module) as the docstring of casebridge.errors draws them."""
    doc = casebridge.errors.__doc__ or ""
    lines = doc.splitlines()
    root = next(i for i, line in enumerate(lines) if line.strip() == "CasebridgeError")
    margin = len(lines[root]) - len(lines[root].lstrip())
    parents = ["CasebridgeError"]  # parents[depth]: the class last drawn at that depth
    tree: dict[str, tuple[str, str]] = {}
    for line in lines[root + 1 :]:
        if not line.strip():
            break
        found = _BRANCH.match(line[margin:])
        if found is None:
            continue  # a description's second line
        depth = len(found["indent"]) // 4 + 1
        name = found["name"]
        assert name not in tree, f"{name} is drawn twice"
        tree[name] = (parents[depth - 1], f"casebridge.{found['module'] or 'errors'}")
        del parents[depth:]
        parents.append(name)
    return tree


def defined() -> dict[str, type[CasebridgeError]]:
    """Every subclass of CasebridgeError in the package, after importing each of its modules."""
    for module in pkgutil.walk_packages(casebridge.__path__, "casebridge."):
        if module.name != "casebridge.__main__":  # it runs the command line
            importlib.import_module(module.name)
    found: dict[str, type[CasebridgeError]] = {}
    stack = [CasebridgeError]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__.startswith("casebridge."):
                assert found.get(sub.__name__, sub) is sub, f"two exception classes are named {sub.__name__}"
                found[sub.__name__] = sub
            stack.append(sub)
    return found


def test_every_error_class_is_drawn_under_its_parent_with_its_module() -> None:
    tree = drawn()
    classes = defined()
    assert len(classes) > 30, sorted(classes)  # the walk reached the subsystems' modules
    assert sorted(set(classes) - set(tree)) == [], "not drawn in casebridge.errors"
    assert sorted(set(tree) - set(classes)) == [], "drawn in casebridge.errors, but no such class"
    for name, cls in classes.items():
        assert tree[name] == (cls.__bases__[0].__name__, cls.__module__), name


def test_the_drawing_is_read_as_drawn() -> None:
    tree = drawn()
    assert tree["InputError"] == ("CasebridgeError", "casebridge.errors")
    assert tree["RowError"] == ("InputError", "casebridge.ingest.registry_csv")
    assert tree["SnapshotPathError"] == ("DefinitionError", "casebridge.definitions.structure")
    assert tree["FhirError"] == ("CasebridgeError", "casebridge.errors")
    assert tree["TooManyRequests"] == ("FhirClientError", "casebridge.errors")
    assert tree["FhirServerError"] == ("FhirHttpError", "casebridge.errors")
