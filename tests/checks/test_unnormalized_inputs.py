from diagnose.checks import unnormalized_inputs as check_module

from .helpers import evidence, linear, only, real_input, zoo_report

ID = "unnormalized-inputs"
T = check_module.THRESHOLDS


def test_raw_pixel_scale_fires():
    finding = only(zoo_report("relu-unstandardized"), ID)
    assert finding.evidence["std"] > 50
    assert finding.fixes[0].id == "normalize-inputs"


def test_synthetic_and_token_inputs_are_never_judged():
    assert check_module.check(evidence([linear("fc", 0)], inputs=(real_input(120, 60, synthetic=True),)), T) == []
    assert check_module.check(evidence([linear("fc", 0)], inputs=(real_input(0, 0, integer=True),)), T) == []


def test_standardised_and_unit_range_inputs_are_fine():
    for mean, std in ((0.0, 1.0), (0.45, 0.3), (-0.1, 2.0)):
        assert check_module.check(evidence([linear("fc", 0)], inputs=(real_input(mean, std),)), T) == []


def test_large_offset_fires():
    assert only(check_module.check(evidence([linear("fc", 0)], inputs=(real_input(1000.0, 1.0),)), T), ID)
