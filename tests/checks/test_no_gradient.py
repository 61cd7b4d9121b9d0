from diagnose.checks import no_gradient as check_module

from .helpers import activation, evidence, linear, only, zoo_report

ID = "no-gradient"


def test_detached_and_unused_layers_fire():
    finding = only(zoo_report("detached-branch"), ID)
    assert finding.layers == ("encoder.0", "unused_side")
    assert finding.fixes == ()


def test_connected_model_is_quiet():
    assert not [f for f in zoo_report("relu-mlp-default").findings if f.id == ID]


def test_dead_units_are_left_to_dead_relu():
    assert not [f for f in zoo_report("relu-negative-bias").findings if f.id == ID]


def test_bias_before_a_norm_is_not_reported():
    layers = [linear("fc", 0, normalized=True, params_without_gradient=("bias",))]
    assert check_module.check(evidence(layers), {}) == []
    layers = [linear("fc", 0, normalized=True, grad_out_rms=None, params_without_gradient=("weight", "bias"))]
    assert only(check_module.check(evidence(layers), {}), ID).evidence["parameters_without_gradient"] == 1


def test_detached_layer_next_to_dead_units_is_still_reported():
    layers = [
        linear("fc", 0, grad_out_rms=None, params_without_gradient=("weight",)),
        activation("act", 1, dead=1.0),
    ]
    assert only(check_module.check(evidence(layers), {}), ID).layers == ("fc",)
