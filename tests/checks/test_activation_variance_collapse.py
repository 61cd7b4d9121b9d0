from diagnose.checks import activation_variance_collapse as check_module
from diagnose.severity import Severity

from .helpers import evidence, linear, only, zoo_report

ID = "activation-variance-collapse"


def test_relu30_with_xavier_collapses():
    finding = only(zoo_report("relu30-xavier"), ID)
    assert finding.severity is Severity.ERROR
    assert len(finding.layers) == 31
    assert finding.fixes[0].id == "he-init"


def test_shallow_default_mlp_does_not_fire():
    assert not [f for f in zoo_report("relu-mlp-default").findings if f.id == ID]


def test_normalisation_breaks_the_run():
    # std falls 10x per layer, but every layer feeds a norm: runs of one layer, no trend.
    layers = [linear(f"l{i}", 2 * i, normalized=True, out_std=10.0 ** -i) for i in range(5)]
    assert check_module.check(evidence(layers), check_module.THRESHOLDS) == []
    plain = [linear(f"l{i}", i, out_std=10.0 ** -i) for i in range(5)]
    assert only(check_module.check(evidence(plain), check_module.THRESHOLDS), ID).layers == tuple(f"l{i}" for i in range(5))
