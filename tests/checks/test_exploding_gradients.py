from diagnose.checks import exploding_gradients as check_module
from diagnose.severity import Severity

from .helpers import evidence, linear, only, zoo_report

ID = "exploding-gradients"


def test_relu_at_three_times_he_fires():
    finding = only(zoo_report("relu-exploding"), ID)
    assert finding.severity is Severity.ERROR
    assert finding.layers[0] == "0"
    assert finding.evidence["ratio_first_last"] > 1e3


def test_healthy_models_do_not_fire():
    for name in ("relu-mlp-default", "hf-gpt2", "lstm-classifier"):
        assert not [f for f in zoo_report(name).findings if f.id == ID]


def test_huge_absolute_gradient_fires():
    layers = [linear("a", 0, grad_rms=1e7), linear("b", 1)]
    finding = only(check_module.check(evidence(layers), check_module.THRESHOLDS), ID)
    assert finding.layers == ("a",)


def test_threshold_override_is_used():
    layers = [linear(f"l{i}", i, grad_out_rms=10.0 ** (2 - i)) for i in range(3)]  # 100x over 3 layers
    assert check_module.check(evidence(layers), check_module.THRESHOLDS)
    assert check_module.check(evidence(layers), {**check_module.THRESHOLDS, "ratio": 1000.0}) == []
