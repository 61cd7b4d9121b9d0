"""The CHECKS table and run_checks: selection, thresholds, per-layer ignores, ordering."""

import subprocess
import sys

import pytest

from diagnose.checks import CHECK_IDS, CHECKS, run_checks
from diagnose.errors import DiagnoseError
from diagnose.severity import Severity

from .helpers import activation, evidence, linear

CONTRACT_IDS = {
    "vanishing-gradients", "exploding-gradients", "dead-relu", "saturated-activations",
    "activation-variance-collapse", "activation-variance-explosion", "poor-initialization",
    "selu-misconfigured", "non-finite", "no-gradient", "lr-too-high", "lr-too-low",
    "loss-not-decreasing", "bad-initial-loss", "unnormalized-inputs", "bottleneck-layer",
}


def _dead_and_flat():
    layers = [linear("net.0", 0), activation("net.1", 1, dead=0.95), linear("net.2", 2, followed_by="relu"),
              activation("net.3", 3, dead=0.7), linear("net.4", 4, followed_by="none")]
    return evidence(layers, initial=9.0)


def test_table_covers_the_contract_and_names_modules_after_ids():
    assert CONTRACT_IDS <= set(CHECK_IDS)
    for spec in CHECKS:
        assert spec.module.ID == spec.id
        assert spec.module.__name__.rsplit(".", 1)[1] == spec.id.replace("-", "_")
        assert spec.summary and "\n" not in spec.summary


def test_sorted_by_severity_then_table_order():
    findings, ran = run_checks(_dead_and_flat())
    assert [f.id for f in findings] == ["dead-relu", "bad-initial-loss"]
    assert ran == CHECK_IDS


def test_select_and_ignore():
    findings, ran = run_checks(_dead_and_flat(), select=["bad-initial-loss", "dead-relu"], ignore=["dead-relu"])
    assert ran == ("bad-initial-loss",) and [f.id for f in findings] == ["bad-initial-loss"]


def test_dynamics_checks_are_listed_but_silent_without_a_run():
    findings, ran = run_checks(evidence([linear("a", 0)], history=(2.3, 9.0, 50.0)))
    assert "lr-too-high" in ran and findings == []


def test_unknown_ids_are_refused_with_the_valid_list():
    with pytest.raises(DiagnoseError, match="dead-relu"):
        run_checks(_dead_and_flat(), select=["dead-relus"])
    with pytest.raises(DiagnoseError):
        run_checks(_dead_and_flat(), per_layer_ignores={"net.*": ["nope"]})
    with pytest.raises(DiagnoseError, match="dead_fraction"):
        run_checks(_dead_and_flat(), thresholds={"dead-relu": {"dead_fractio": 0.1}})


def test_threshold_override_changes_the_verdict():
    findings, _ = run_checks(_dead_and_flat(), thresholds={"dead-relu": {"dead_fraction": 0.99}})
    assert "dead-relu" not in {f.id for f in findings}
    findings, _ = run_checks(_dead_and_flat(), thresholds={"dead-relu": {"dead-fraction-error": 0.5}})
    assert next(f for f in findings if f.id == "dead-relu").severity is Severity.ERROR


def test_per_layer_ignores_drop_layers_then_findings():
    findings, _ = run_checks(_dead_and_flat(), per_layer_ignores={"net.1": ["dead-relu"]})
    assert next(f for f in findings if f.id == "dead-relu").layers == ("net.3",)
    findings, _ = run_checks(_dead_and_flat(), per_layer_ignores={"net.[13]": ["dead-relu"]})
    assert "dead-relu" not in {f.id for f in findings}
    findings, _ = run_checks(_dead_and_flat(), per_layer_ignores={"net.1": "dead-relu"})
    assert next(f for f in findings if f.id == "dead-relu").layers == ("net.3",)
    findings, _ = run_checks(_dead_and_flat(), per_layer_ignores={"net.*": ["no-gradient"]})
    assert "dead-relu" in {f.id for f in findings}


def test_checks_and_explain_do_not_import_torch():
    code = "import sys, diagnose.checks, diagnose.fixes, diagnose.recommend, diagnose.explain; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
