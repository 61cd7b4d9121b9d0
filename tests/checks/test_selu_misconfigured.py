from diagnose.checks import selu_misconfigured as check_module

from .helpers import activation, evidence, linear, only, real_input, zoo_report

ID = "selu-misconfigured"


def test_default_init_fires_with_lecun_fix():
    finding = only(zoo_report("selu-default-init"), ID)
    assert finding.layers[:2] == ("0", "2")
    assert finding.fixes[0].id == "lecun-init"


def test_batchnorm_fires():
    finding = only(zoo_report("selu-batchnorm"), ID)
    assert finding.evidence["norm_layers"] == 6
    assert finding.fixes[0].id == "selu"


def test_unstandardized_inputs_fire():
    finding = only(zoo_report("selu-unstandardized"), ID)
    assert "input_std" in finding.evidence
    assert finding.fixes[0].id == "normalize-inputs"


def test_correct_selu_stack_is_quiet():
    assert not [f for f in zoo_report("selu-lecun").findings if f.id == ID]


def test_not_selu_is_never_judged():
    layers = [linear("fc", 0, std=1.0, followed_by="relu"), activation("act", 1)]
    assert check_module.check(evidence(layers, inputs=(real_input(100.0, 50.0),)), check_module.THRESHOLDS) == []


def test_plain_dropout_fires():
    from .helpers import module_record

    layers = [
        linear("fc", 0, followed_by="selu", expected_std=0.125, std=0.125),
        activation("act", 1, "selu"),
        module_record("drop", 2, "other", "Dropout"),
    ]
    assert only(check_module.check(evidence(layers), check_module.THRESHOLDS), ID).layers == ("drop",)


def test_batchnorm_alone_is_info_when_the_short_run_trains():
    """SELU + BatchNorm is redundant, not harmful: the run judges it (the pure recipe trains no better)."""
    assert only(zoo_report("selu-batchnorm"), ID).severity.value == "warning"  # no run: nothing to judge by
    finding = only(zoo_report("selu-batchnorm", steps=20), ID)
    assert finding.severity.value == "info" and finding.evidence["short_run_trained"]


def test_an_init_off_lecun_stays_a_warning_when_the_run_trains():
    finding = only(zoo_report("selu-default-init", steps=20), ID)
    assert finding.severity.value == "warning"


def test_unstandardized_inputs_alone_are_info_when_the_short_run_trains():
    """The inputs' scale is unnormalized-inputs' finding; SELU's stack fits its batch through it."""
    finding = only(zoo_report("selu-unstandardized", steps=20), ID)
    assert finding.severity.value == "info"
    assert only(zoo_report("selu-unstandardized", steps=20), "unnormalized-inputs").severity.value == "warning"
