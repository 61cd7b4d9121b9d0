import math

from diagnose.checks import poor_initialization as check_module
from diagnose.severity import Severity

from .helpers import evidence, linear, only, zoo_report

ID = "poor-initialization"


def test_xavier_under_relu_in_a_deep_stack_fires():
    finding = only(zoo_report("relu30-xavier"), ID)
    assert finding.severity is Severity.WARNING
    assert finding.evidence["direction"] == "small"
    assert abs(finding.evidence["median_std_ratio"] - math.sqrt(0.5)) < 0.05
    assert "0.std" in finding.evidence and "0.expected_std" in finding.evidence
    fix = finding.fixes[0]
    assert fix.id == "he-init" and "kaiming_normal_" in fix.snippet and "'58'" in fix.snippet


def test_standard_init_in_deep_sigmoid_fires_through_the_gradient():
    finding = only(zoo_report("deep-sigmoid-standard"), ID)
    assert finding.evidence["effect"] == "gradient_ratio_first_last"
    # the Glorot scale is offered, after ReLU + He: at the right scale the sigmoids' slope still
    # makes the gradient vanish (measured by --try-fixes), so the scale alone does not make it train
    assert [fix.id for fix in finding.fixes] == ["relu", "glorot-init"]


def test_gpt_style_small_init_feeding_layernorm_is_fine():
    for name in ("gpt-block", "hf-gpt2", "relu-mlp-default", "relu-mlp-two-layers", "transformer-encoder-gelu"):
        assert not [f for f in zoo_report(name).findings if f.id == ID], name


def test_mis_scaled_but_harmless_does_not_fire():
    # 0.5x He in every layer, but the signal is level (e.g. measured with other compensation).
    layers = [linear(f"l{i}", i, std=0.5 * math.sqrt(2 / 64)) for i in range(4)]
    assert check_module.check(evidence(layers), check_module.THRESHOLDS) == []
    shrinking = [linear(f"l{i}", i, std=0.5 * math.sqrt(2 / 64), out_std=0.05 ** i) for i in range(4)]
    assert only(check_module.check(evidence(shrinking), check_module.THRESHOLDS), ID).layers == ("l0", "l1", "l2", "l3")
