from diagnose.checks import adagrad_deep_network as check_module

from .helpers import evidence, linear, only, relu_stack

ID = "adagrad-deep-network"
T = check_module.THRESHOLDS


def test_adagrad_on_deep_net_fires_with_decay_evidence():
    layers = relu_stack(6)
    run_layers = [linear("net.0", 0, update_ratio=1e-3, update_ratios=(2e-3, 1e-3, 5e-4))]
    ev = evidence(layers, run_layers=run_layers, steps=3, optimizer="adagrad", history=(2.3, 2.2, 2.1))
    finding = only(check_module.check(ev, T), ID)
    assert finding.evidence["weighted_layers"] == 6
    assert abs(finding.evidence["update_ratio_last_over_first"] - 0.25) < 1e-9


def test_shallow_or_other_optimizer_is_quiet():
    assert check_module.check(evidence(relu_stack(3), steps=3, optimizer="adagrad"), T) == []
    assert check_module.check(evidence(relu_stack(6), steps=3, optimizer="adam"), T) == []
    assert check_module.check(evidence(relu_stack(6), steps=0, optimizer="adagrad"), T) == []
