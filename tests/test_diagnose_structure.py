"""The shape of `diagnose/`, read from its source with `ast` (issue 13): privates stay in their
package, nothing imports back up the package face, and module-level imports form no circle.

- A private name (`_x`), or a private module (`pkg._mod`), is its package's business: another
  package imports only what a package offers (a private module's public names within its own
  package are its siblings' to share).
- `from diagnose import check` inside `diagnose/` runs back up to the package face, which imports
  most of the rest: only submodules are imported from a package (`from diagnose import progress`);
  a name for annotations under `if TYPE_CHECKING:` never runs and is allowed.
- Module-level imports form no circle. Imports inside functions (kept there so `--help`, `list` and
  `explain` never import torch) and under `if TYPE_CHECKING:` are not part of the import-time graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from import_graph import find_cycle

PACKAGE = "diagnose"
ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


TREES = {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted((ROOT / PACKAGE).rglob("*.py"))}
PACKAGES = {name for name, _ in TREES.items() if (ROOT / name.replace(".", "/") / "__init__.py").exists()}


def _package_of(module: str) -> str:
    return module if module in PACKAGES else module.rpartition(".")[0]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines |= {n.lineno for n in ast.walk(child) if hasattr(n, "lineno")}
    return lines


def _imports(module: str, *, module_level_only: bool = False) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for the imports of `module`."""
    tree = TREES[module]
    if module_level_only:
        guarded = _type_checking_blocks(tree)
        nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and n.lineno not in guarded]
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            package = _package_of(module).split(".")
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in TREES:
                found.append((submodule, None, node.lineno))
            else:
                found.append((base, alias.name, node.lineno))
    return found


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


@pytest.mark.parametrize("module", sorted(TREES))
def test_no_private_name_or_module_of_another_package(module):
    own = _package_of(module)
    offending = []
    for imported, name, line in _imports(module):
        if not _ours(imported) and not imported.startswith("probes"):
            continue
        home = _package_of(imported) if imported in TREES else imported.rpartition(".")[0]
        private_module = any(_is_private(part) for part in imported.split(".")[1:])
        if private_module and home != own:
            offending.append(f"line {line}: {imported}")
        elif name is not None and _is_private(name) and _package_of(imported) != own:
            offending.append(f"line {line}: {imported}.{name}")
    assert offending == [], f"{module} imports another package's privates: {offending}"


@pytest.mark.parametrize("module", sorted(TREES))
def test_no_import_runs_back_up_to_a_package_face(module):
    offending = []
    type_only = _type_checking_blocks(TREES[module])  # never run: a name for annotations only
    for imported, name, line in _imports(module):
        if line in type_only:
            continue
        if imported in PACKAGES and name is not None and _ours(imported) and module.startswith(imported):
            offending.append(f"line {line}: from {imported} import {name}")
        if imported == PACKAGE and name is None and module != PACKAGE:
            offending.append(f"line {line}: import {PACKAGE}")
    assert offending == [], f"{module} imports its own package's face: {offending}"


def _edges() -> dict[str, set[str]]:
    return {
        module: {imported for imported, _, _ in _imports(module, module_level_only=True) if imported in TREES}
        for module in TREES
    }


def test_module_level_imports_form_no_circle():
    # a package imports its submodules to offer them; a submodule importing a sibling goes through
    # the package only by name, so package -> submodule edges are left out of the circle search
    edges = {m: {i for i in targets if not (m in PACKAGES and i.startswith(m + "."))} for m, targets in _edges().items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_the_checks_are_shown_to_fail():
    # each rule above, on a source that breaks it
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    TREES["diagnose.checks.zz_fake"] = ast.parse(
        "from diagnose.fixes._model import Widening\nfrom diagnose.checks import CHECKS\n"
    )
    try:
        with pytest.raises(AssertionError, match="privates"):
            test_no_private_name_or_module_of_another_package("diagnose.checks.zz_fake")
        with pytest.raises(AssertionError, match="face"):
            test_no_import_runs_back_up_to_a_package_face("diagnose.checks.zz_fake")
    finally:
        del TREES["diagnose.checks.zz_fake"]
