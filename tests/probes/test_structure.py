"""The shape of `probes/`, read from its source with `ast`: imports flow one way, privates stay home.

`probes` measures and knows nothing of `diagnose`; no module imports one that (directly or not)
imports it back; none imports a private name of another module or reaches into a private member
of another module's class (the functional mode once drove the session through six of them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from import_graph import find_cycle

PACKAGE = "probes"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def _module_name(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


TREES = {_module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(ROOT.glob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(tree: ast.Module, module: str) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every import anywhere in `tree`:
    module level, inside functions and under `if TYPE_CHECKING:` alike."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module if module == PACKAGE else module.rpartition(".")[0]
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in TREES:  # `from probes import stats`: the module, not a name
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return found


def _edges() -> dict[str, set[str]]:
    return {
        module: {imported for imported, _, _ in _imports(tree, module) if imported in TREES}
        for module, tree in TREES.items()
    }


def _private_members(tree: ast.Module) -> set[str]:
    """Private names a module gives its classes or their instances: methods, class attributes,
    slots, and `obj._x = ...` assignments."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    for target in item.targets:
                        if isinstance(target, ast.Name):
                            names.add(target.id)
                            if target.id == "__slots__" and isinstance(item.value, (ast.Tuple, ast.List)):
                                names |= {e.value for e in item.value.elts if isinstance(e, ast.Constant)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.attr for t in targets if isinstance(t, ast.Attribute)}
    return {name for name in names if _is_private(name)}


def _foreign_private_uses(module: str) -> list[str]:
    """`obj._x` in `module` where `_x` is a private member of a class of another probes module.

    `self._x` and `cls._x` are a class's own business and not counted.
    """
    own = _private_members(TREES[module])
    others = {
        name: other for other, tree in TREES.items() if other != module for name in _private_members(tree)
    }
    found = []
    for node in ast.walk(TREES[module]):
        if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if node.attr in others and node.attr not in own:
            found.append(f"{module}:{node.lineno} .{node.attr} (defined in {others[node.attr]})")
    return found


def test_the_sources_are_found():
    assert {"probes", "probes.session", "probes.functional", "probes.records"} <= set(TREES)


def test_probes_has_no_import_circle():
    assert find_cycle(_edges()) is None, " -> ".join(find_cycle(_edges()) or ())


def test_no_module_of_probes_imports_diagnose():
    offending = [
        f"{module}:{line} imports {imported}"
        for module, tree in TREES.items()
        for imported, _, line in _imports(tree, module)
        if imported == "diagnose" or imported.startswith("diagnose.")
    ]
    assert offending == []


def test_no_module_imports_the_package_face():
    """Submodules import from the module that defines a name, never back up from `probes`."""
    offending = [
        f"{module}:{line} imports {name} from {PACKAGE}"
        for module, tree in TREES.items() if module != PACKAGE
        for imported, name, line in _imports(tree, module)
        if imported == PACKAGE
    ]
    assert offending == []


def test_no_module_imports_a_private_name_of_another():
    """A private module of the package may be imported (`from probes._forward import ...`); a
    private name inside another module may not (`from probes.session import _Param`)."""
    offending = [
        f"{module}:{line} imports {name} from {imported}"
        for module, tree in TREES.items()
        for imported, name, line in _imports(tree, module)
        if name is not None and _is_private(name) and imported != "__future__"
    ]
    assert offending == []


@pytest.mark.parametrize("module", sorted(TREES))
def test_no_module_reaches_into_a_private_member_of_another_modules_class(module):
    assert _foreign_private_uses(module) == []


def test_the_checks_catch_what_they_are_for():
    """Each check fails on a small offending source: a circle, a private import, a private member."""
    saved = dict(TREES)
    try:
        TREES["probes.circle_a"] = ast.parse("from probes.circle_b import x\n")
        TREES["probes.circle_b"] = ast.parse("def f():\n    from probes import circle_a\n")
        assert find_cycle(_edges()) is not None
        TREES.pop("probes.circle_b")
        TREES["probes.circle_a"] = ast.parse("from probes.session import _Hidden\n")
        names = [name for imported, name, _ in _imports(TREES["probes.circle_a"], "probes.circle_a")]
        assert names == ["_Hidden"]
        TREES["probes.owner"] = ast.parse("class Owner:\n    def _secret(self):\n        pass\n")
        TREES["probes.user"] = ast.parse("def use(owner):\n    return owner._secret()\n")
        assert _foreign_private_uses("probes.user") == ["probes.user:2 ._secret (defined in probes.owner)"]
    finally:
        TREES.clear()
        TREES.update(saved)
