"""One id, one home: a check module holds its detection, advice and metric; recommend and verify
are generic (issue 13)."""

from __future__ import annotations

import ast
import inspect
import re
import types
from pathlib import Path

import pytest

import diagnose.checks as checks
from diagnose.checks import CHECKS, CheckSpec
from diagnose.checks._advice import INIT_FIX
from diagnose.fixes import FIXES
from diagnose.severity import Severity

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec", CHECKS, ids=lambda s: s.id)
def test_every_check_module_is_complete(spec):
    assert spec.missing() == []
    if spec.no_fix is None:
        assert spec.fixes and set(spec.fixes) <= set(FIXES)
    else:
        assert spec.no_fix.strip() and not spec.fixes


def test_a_module_without_advice_or_metric_is_reported():
    module = types.ModuleType("half_done")
    module.check = lambda evidence, thresholds: []
    module.THRESHOLDS = {}
    spec = CheckSpec("half-done", module, Severity.WARNING, "a check with detection only")
    assert spec.missing() == ["FIXES", "advise", "metric"]
    assert any("half-done lacks" in p for p in checks._incomplete((spec,)))
    module.NO_FIX = "nothing to do"
    assert spec.missing() == []


def test_a_fix_the_module_does_not_declare_is_refused():
    from diagnose.checks import Choice
    from diagnose.findings import Finding
    from diagnose.fixes import FixTarget

    module = types.ModuleType("stray")
    module.FIXES = ("he-init",)
    module.advise = lambda finding, context: [Choice("lower-lr", FixTarget())]
    spec = CheckSpec("stray", module, Severity.WARNING, "advises an undeclared fix")
    finding = Finding(id="stray", severity=Severity.WARNING, title="t", message="m")
    with pytest.raises(RuntimeError, match="lower-lr"):
        spec.advise(finding, None)


def _fixes_section(doc: str) -> str:
    return doc.split("## Fixes", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("spec", CHECKS, ids=lambda s: s.id)
def test_the_docs_name_only_fixes_the_check_gives(spec):
    mentioned = {m for m in re.findall(r"`([a-z0-9-]+)`", _fixes_section(spec.doc)) if m in FIXES}
    assert mentioned <= set(spec.fixes), f"{spec.id}: the doc names {sorted(mentioned - set(spec.fixes))}"


def _code_strings(module: types.ModuleType) -> set[str]:
    """String constants of the module's code, its docstring and its FIXES declaration left out."""
    tree = ast.parse(inspect.getsource(module))
    body = tree.body[1:] if ast.get_docstring(tree) else tree.body
    declared = [n for n in body if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "FIXES" for t in n.targets)]
    return {
        node.value for stmt in body if stmt not in declared for node in ast.walk(stmt)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


@pytest.mark.parametrize("spec", [s for s in CHECKS if s.no_fix is None], ids=lambda s: s.id)
def test_every_declared_fix_is_one_the_advice_can_give(spec):
    source = inspect.getsource(spec.module)
    strings = _code_strings(spec.module)
    if "choose(context, FIXES)" in source:
        return  # the advice is the declared list itself
    if "variance_trend_advice" in source:  # the variance checks' shared advice
        from diagnose.checks import _trends

        strings |= _code_strings(_trends)
    via_init = "init_choices" in source or "variance_trend_advice" in source
    never = [f for f in spec.fixes if f not in strings and not (via_init and f in INIT_FIX.values())]
    assert never == [], f"{spec.id} declares {never} but its advice never names them"


def test_recommend_and_verify_know_no_check_by_id():
    ids = {spec.id for spec in CHECKS}
    for name in ("recommend.py", "verify.py"):
        strings = {
            node.value for node in ast.walk(ast.parse((ROOT / "diagnose" / name).read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not strings & ids, f"diagnose/{name} names {sorted(strings & ids)}"


def test_the_generated_page_lists_the_declared_fixes():
    from diagnose import explain

    for spec in CHECKS:
        page = explain.render(spec.id)
        section = _fixes_section(page)
        if spec.no_fix is None:
            assert all(f"[`{fix_id}`]" in section for fix_id in spec.fixes)
        else:
            assert "No catalog fix applies" in section


@pytest.mark.parametrize("spec", CHECKS, ids=lambda s: s.id)
def test_root_causes_name_real_checks(spec):
    causes = checks.root_causes_of(spec)
    assert set(causes) <= {s.id for s in CHECKS} - {spec.id}


def test_a_check_that_stops_learning_is_a_root_cause_by_its_own_declaration():
    # lr-too-low names every check whose module declares STOPS_LEARNING, in table order: adding one
    # is a line in its own module, not an edit of a shared list
    stops = [s.id for s in CHECKS if getattr(s.module, "STOPS_LEARNING", False)]
    assert checks.root_causes_of(checks.get("lr-too-low")) == tuple(stops)
    assert {"dead-relu", "symmetric-weights", "vanishing-gradients"} <= set(stops)
