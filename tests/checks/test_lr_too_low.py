from diagnose.checks import lr_too_low as check_module

from .helpers import activation, evidence, linear, only

ID = "lr-too-low"
T = check_module.THRESHOLDS


def test_tiny_updates_and_flat_loss_fire():
    run_layers = [linear("fc", 0, update_ratio=1e-7), linear("head", 1, update_ratio=2e-7)]
    ev = evidence([linear("fc", 0)], run_layers=run_layers, steps=10, lr=1e-7, history=(2.3,) * 10)
    finding = only(check_module.check(ev, T), ID)
    assert finding.layers == ("fc", "head")
    assert finding.evidence["max_update_ratio"] == 2e-7


def test_tiny_updates_but_falling_loss_is_fine():
    run_layers = [linear("fc", 0, update_ratio=1e-5)]
    ev = evidence([linear("fc", 0)], run_layers=run_layers, steps=3, history=(2.3, 2.0, 1.5))
    assert check_module.check(ev, T) == []


def test_dead_units_are_left_to_dead_relu():
    run_layers = [linear("fc", 0, update_ratio=0.0)]
    layers = [linear("fc", 0), activation("act", 1, dead=1.0)]
    ev = evidence(layers, run_layers=run_layers, steps=5, history=(2.3,) * 5)
    assert check_module.check(ev, T) == []
