import math

from diagnose.checks import non_finite as check_module

from .helpers import evidence, linear, only, real_input, zoo_report

ID = "non-finite"


def test_nan_weight_is_located():
    finding = only(zoo_report("nan-weight"), ID)
    assert finding.layers[0] == "2"
    assert finding.evidence["first_source"] == "weights of 2"


def test_nan_input_is_located():
    finding = only(zoo_report("nan-inputs"), ID)
    assert finding.evidence["first_source"].startswith("input")
    assert finding.fixes[0].id == "normalize-inputs"


def test_finite_model_is_quiet():
    assert not [f for f in zoo_report("relu-mlp-default").findings if f.id == ID]


def test_nan_loss_alone_fires():
    found = check_module.check(evidence([linear("fc", 0)], initial=math.nan), check_module.THRESHOLDS)
    assert only(found, ID).evidence["first_source"] == "the initial loss"


def test_nan_input_stats():
    found = check_module.check(evidence([linear("fc", 0)], inputs=(real_input(math.nan, math.nan),)), {})
    assert only(found, ID).layers == ()
