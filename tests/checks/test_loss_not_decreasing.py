from diagnose.checks import loss_not_decreasing as check_module

from .helpers import evidence, linear, only, zoo_report

ID = "loss-not-decreasing"
T = check_module.THRESHOLDS


def test_flat_loss_fires():
    ev = evidence([linear("fc", 0)], steps=10, history=(2.3026, 2.3025, 2.3026, 2.3024) + (2.3025,) * 6)
    assert only(check_module.check(ev, T), ID).evidence["decrease"] < 0.005


def test_too_short_or_diverging_runs_are_left_alone():
    assert check_module.check(evidence([linear("fc", 0)], steps=3, history=(2.3, 2.3, 2.3)), T) == []
    diverging = evidence([linear("fc", 0)], steps=5, history=(2.3, 2.3, 5.0, 9.0, 20.0))
    assert check_module.check(diverging, T) == []


def test_dead_network_stalls_in_a_real_run():
    assert only(zoo_report("relu-negative-bias", steps=10), ID)


def test_learning_model_is_quiet():
    assert not [f for f in zoo_report("relu-mlp-default", steps=10).findings if f.id == ID]
