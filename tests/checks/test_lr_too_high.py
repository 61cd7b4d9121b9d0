from diagnose.checks import lr_too_high as check_module
from diagnose.severity import Severity

from .helpers import evidence, linear, only

ID = "lr-too-high"
T = check_module.THRESHOLDS


def test_nan_during_run_is_an_error():
    ev = evidence([linear("fc", 0)], steps=5, history=(2.3, 5.0, float("nan")), nonfinite_loss_step=2)
    finding = only(check_module.check(ev, T), ID)
    assert finding.severity is Severity.ERROR and finding.evidence["nonfinite_step"] == 2


def test_nan_already_at_init_is_not_blamed_on_the_lr():
    ev = evidence([linear("fc", 0)], steps=5, history=(float("nan"),) * 5, nonfinite_loss_step=0)
    assert check_module.check(ev, T) == []


def test_divergence_is_an_error():
    ev = evidence([linear("fc", 0)], steps=5, history=(2.3, 1.9, 2.5, 4.0, 6.0))
    assert only(check_module.check(ev, T), ID).severity is Severity.ERROR


def test_large_updates_warn():
    run_layers = [linear("fc", 0, update_ratio=0.3), linear("head", 1, update_ratio=0.01)]
    ev = evidence([linear("fc", 0)], run_layers=run_layers, steps=5, history=(2.3, 2.29, 2.28, 2.27, 2.26))
    finding = only(check_module.check(ev, T), ID)
    assert finding.severity is Severity.WARNING and finding.layers == ("fc",)


def test_large_updates_that_training_takes_in_its_stride_are_info():
    # the loss falls 17 % and below chance (ln 10): the large steps are not hurting
    run_layers = [linear("fc", 0, update_ratio=0.3), linear("head", 1, update_ratio=0.01)]
    ev = evidence([linear("fc", 0)], run_layers=run_layers, steps=5, history=(2.3, 2.2, 2.1, 2.0, 1.9))
    finding = only(check_module.check(ev, T), ID)
    assert finding.severity is Severity.INFO and "still trained" in finding.message


def test_no_run_no_finding():
    assert check_module.check(evidence([linear("fc", 0)], history=(2.3, 9.0, 50.0)), T) == []


def test_steady_training_is_quiet():
    run_layers = [linear("fc", 0, update_ratio=1e-3)]
    ev = evidence([linear("fc", 0)], run_layers=run_layers, steps=4, history=(2.3, 2.1, 1.9, 1.8))
    assert check_module.check(ev, T) == []
