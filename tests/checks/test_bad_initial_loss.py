import math

from diagnose.checks import bad_initial_loss as check_module

from .helpers import evidence, linear, only, zoo_report

ID = "bad-initial-loss"


def test_overconfident_head_fires():
    finding = only(zoo_report("overconfident-head"), ID)
    assert finding.layers == ("4",)
    assert finding.fixes[0].id == "fix-bias-init"
    assert "'4'" in finding.fixes[0].snippet


def test_default_classifiers_start_at_chance():
    for name in ("relu-mlp-default", "resnet-cnn", "hf-gpt2", "transformer-encoder-relu"):
        assert not [f for f in zoo_report(name).findings if f.id == ID], name


def test_only_judged_with_a_chance_level():
    layers = [linear("fc", 0)]
    assert check_module.check(evidence(layers, initial=50.0, expected_initial=None), check_module.THRESHOLDS) == []
    assert check_module.check(evidence(layers, initial=math.nan), check_module.THRESHOLDS) == []
    assert only(check_module.check(evidence(layers, initial=5.0), check_module.THRESHOLDS), ID)
