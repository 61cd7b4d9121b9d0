"""The whole zoo end to end: healthy models stay silent, broken ones trigger their checks."""

from __future__ import annotations

import pytest

import models
from diagnose.severity import Severity

from .helpers import zoo_report


@pytest.mark.parametrize("case", models.HEALTHY, ids=lambda c: c.name)
def test_healthy_model_has_no_warning_or_error(case):
    report = zoo_report(case.name)
    loud = [(f.id, f.message) for f in report.findings if f.severity >= Severity.WARNING]
    assert loud == []
    assert report.status == "healthy"


@pytest.mark.parametrize("case", models.SICK, ids=lambda c: c.name)
def test_sick_model_triggers_expected_checks(case):
    report = zoo_report(case.name)
    assert set(case.expected) <= {f.id for f in report.findings}


# Dense healthy models are cheap enough to also train for a few steps: the dynamics checks must
# stay quiet on a model that learns (SGD, lr=0.01, the contract's defaults). The LSTM learns the
# slowest of the zoo under plain SGD (1.5 % in 20 steps): the tightest case for loss-not-decreasing.
@pytest.mark.parametrize("name", ["relu-mlp-default", "lstm-classifier"])
def test_healthy_model_short_run_is_quiet(name):
    report = zoo_report(name, steps=10)
    assert [f.id for f in report.findings if f.severity >= Severity.WARNING] == []
