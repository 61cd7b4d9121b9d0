"""output-loss-mismatch: squashed outputs fed to cross-entropy, through real models and at the edges."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnose
from diagnose.checks import output_loss_mismatch as check_module
from diagnose.checks.output_loss_mismatch import loss_floor
from diagnose.evidence import OutputStats
from diagnose.severity import Severity

from .helpers import activation, evidence, findings_of, linear, only

ID = "output-loss-mismatch"
CLASSES = 10


class Classifier(nn.Module):
    """Linear/ReLU/Linear classifier; `squash` picks what `forward` does to the logits."""

    def __init__(self, squash: str | None = None, zero_head: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.act = nn.ReLU()
        self.head = nn.Linear(32, CLASSES)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.squash = squash

    def forward(self, x):
        logits = self.head(self.act(self.fc1(x)))
        if self.squash == "softmax":
            return torch.softmax(logits, -1)
        if self.squash == "log_softmax":
            return torch.log_softmax(logits, -1)
        if self.squash == "sigmoid_fn":
            return torch.sigmoid(logits)
        return logits


def _seq(*tail: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, CLASSES), *tail)


def _inputs() -> torch.Tensor:
    return torch.randn(16, 20, generator=torch.Generator().manual_seed(1))


def _check(model, **options):
    return diagnose.check(model, _inputs(), **options)


def _reference_floor(classes: int, low: float, high: float) -> float:
    """F.cross_entropy of the best bounded logits: `high` on the right class, `low` elsewhere."""
    logits = torch.full((classes, classes), low, dtype=torch.float64)
    logits.fill_diagonal_(high)
    return float(F.cross_entropy(logits, torch.arange(classes)))


# --- real models ------------------------------------------------------------------------------


def test_softmax_at_the_end_of_forward_is_an_error():
    torch.manual_seed(0)
    finding = only(_check(Classifier("softmax")), ID)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["squash"] == "softmax"
    assert finding.evidence["classes"] == CLASSES
    assert finding.evidence["chance_loss"] == pytest.approx(math.log(CLASSES))
    assert finding.evidence["loss_floor"] == pytest.approx(_reference_floor(CLASSES, 0.0, 1.0), rel=1e-9)
    assert "1.46" in finding.message


def test_raw_logits_do_not_fire():
    torch.manual_seed(0)
    report = _check(Classifier())
    assert report.evidence.loss.kind == "cross-entropy"  # the check was in a position to judge
    assert findings_of(report, ID) == []


def test_log_softmax_outputs_do_not_fire():
    # log-probabilities are valid logits for cross-entropy (log_softmax is idempotent)
    torch.manual_seed(0)
    assert findings_of(_check(Classifier("log_softmax")), ID) == []


def test_zero_initialised_head_does_not_fire():
    torch.manual_seed(0)
    report = _check(Classifier(zero_head=True))
    assert report.evidence.output.min == 0.0 and report.evidence.output.max == 0.0  # bounded, yet healthy
    assert findings_of(report, ID) == []


def test_sigmoid_module_on_the_logits_is_an_error():
    finding = only(_check(_seq(nn.Sigmoid())), ID)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["squash"] == "sigmoid"
    assert finding.evidence["loss_floor"] == pytest.approx(_reference_floor(CLASSES, 0.0, 1.0), rel=1e-9)
    assert "by 3 (sigmoid" in finding.message  # names the Sigmoid module


def test_sigmoid_function_call_on_the_logits_is_an_error():
    torch.manual_seed(0)
    finding = only(_check(Classifier("sigmoid_fn")), ID)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["squash"] == "sigmoid"


def test_tanh_on_the_logits_is_an_error_with_the_tanh_floor():
    finding = only(_check(_seq(nn.Tanh())), ID)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["squash"] == "tanh"
    assert finding.evidence["loss_floor"] == pytest.approx(_reference_floor(CLASSES, -1.0, 1.0), rel=1e-9)
    assert finding.evidence["loss_floor"] == pytest.approx(0.80, abs=0.005)


def test_relu_on_the_logits_is_a_warning():
    report = _check(_seq(nn.ReLU()))
    assert report.evidence.output.zero_fraction >= check_module.ZERO_FRACTION
    finding = only(report, ID)
    assert finding.severity is Severity.WARNING
    assert finding.evidence["squash"] == "relu"
    assert finding.evidence["zero_fraction"] == pytest.approx(report.evidence.output.zero_fraction)
    assert finding.layers == ("3",)


def test_relu_with_few_zeros_does_not_fire():
    # Bias +5 on the head: nearly every logit stays positive, so the ReLU cuts almost nothing.
    model = _seq(nn.ReLU())
    with torch.no_grad():
        model[2].bias.fill_(5.0)
    report = _check(model)
    assert report.evidence.output.zero_fraction < check_module.ZERO_FRACTION
    assert findings_of(report, ID) == []


def test_sigmoid_under_mse_does_not_fire():
    report = _check(_seq(nn.Sigmoid()), loss="mse")
    assert report.evidence.loss.kind == "mse"
    assert findings_of(report, ID) == []


def test_the_short_run_stays_above_the_reported_floor():
    # What the finding promises, seen in training: Adam on the softmax classifier cannot get under it.
    torch.manual_seed(0)
    report = _check(Classifier("softmax"), steps=8, optimizer="adam", lr=0.05)
    floor = only(report, ID).evidence["loss_floor"]
    history = report.evidence.loss.history
    assert min(history) >= floor - 1e-4
    assert history[0] - min(history) > 0.05  # it did train, towards the floor


# --- the floor against an independent reference -----------------------------------------------


@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_loss_floor_matches_cross_entropy_of_the_best_bounded_logits(classes):
    assert loss_floor(classes, 0.0, 1.0) == pytest.approx(_reference_floor(classes, 0.0, 1.0), rel=1e-9)
    assert loss_floor(classes, -1.0, 1.0) == pytest.approx(_reference_floor(classes, -1.0, 1.0), rel=1e-9)


def test_loss_floor_for_ten_classes_is_log_one_plus_nine_over_e():
    assert loss_floor(10, 0.0, 1.0) == pytest.approx(math.log(1 + 9 / math.e), rel=1e-12)
    assert loss_floor(10, 0.0, 1.0) == pytest.approx(1.4612, abs=1e-4)


def test_optimising_free_logits_through_softmax_cannot_beat_the_floor():
    torch.manual_seed(0)
    targets = torch.randint(0, CLASSES, (16,))
    logits = torch.zeros(16, CLASSES, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    best = math.inf
    for _ in range(300):
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.softmax(logits, -1), targets)
        best = min(best, float(loss.detach()))
        loss.backward()
        optimizer.step()
    floor = loss_floor(CLASSES, 0.0, 1.0)
    assert best >= floor - 1e-5
    assert best < floor + 0.01  # and the floor is tight: the optimiser gets right up to it


# --- hand-built evidence: the thresholds and guards --------------------------------------------


def _output_evidence(*, last_family: str | None = None, shape=(32, 64), loss_kind="cross-entropy", **stats):
    layers = [linear("head", 0, fan_out=shape[-1], followed_by=last_family or "none")]
    if last_family is not None:
        layers.append(activation("squash", 1, last_family, units=shape[-1], batch=shape[0]))
    values = {"min": 0.01, "max": 0.2, "row_sum_error": 0.0, "zero_fraction": 0.0, **stats}
    ev = evidence(layers, num_classes=shape[-1])
    return replace(ev, output=OutputStats(shape=shape, **values), loss=replace(ev.loss, kind=loss_kind))


def _run(ev):
    return check_module.check(ev, check_module.THRESHOLDS)


def test_row_sums_within_tolerance_are_probabilities():
    finding = only(_run(_output_evidence(row_sum_error=0.9e-3)), ID)
    assert finding.evidence["squash"] == "softmax"
    assert finding.evidence["loss_floor"] == pytest.approx(_reference_floor(64, 0.0, 1.0), rel=1e-9)


def test_row_sums_past_tolerance_are_not_probabilities():
    assert _run(_output_evidence(row_sum_error=1.1e-3)) == []


def test_row_sum_tolerance_is_configurable():
    thresholds = {**check_module.THRESHOLDS, "row_sum_tolerance": 0.1}
    assert only(check_module.check(_output_evidence(row_sum_error=0.05), thresholds), ID)


def test_unit_row_sums_outside_zero_one_are_not_probabilities():
    # rows summing to 1 with negative entries: raw logits that happen to sum to one
    assert _run(_output_evidence(min=-0.5, max=0.9, row_sum_error=0.0)) == []


def test_sigmoid_layer_whose_output_is_not_the_prediction_does_not_fire():
    # the last record is a sigmoid, but of another shape (a gate inside the net, say)
    ev = _output_evidence(last_family="sigmoid", shape=(32, 64), row_sum_error=3.0)
    ev = replace(ev, output=replace(ev.output, shape=(32, 10)))
    assert _run(ev) == []


def test_sigmoid_layer_whose_values_left_its_range_does_not_fire():
    # a sigmoid last, yet the prediction reaches 1.5: something after it rescaled the output
    assert _run(_output_evidence(last_family="sigmoid", max=1.5, row_sum_error=3.0)) == []
    assert only(_run(_output_evidence(last_family="sigmoid", max=0.9, row_sum_error=3.0)), ID).severity is Severity.ERROR


@pytest.mark.parametrize(("zeros", "fires"), [(0.24, False), (0.25, True), (0.5, True)])
def test_relu_zero_fraction_bar(zeros, fires):
    ev = _output_evidence(last_family="relu", min=0.0, max=2.0, row_sum_error=5.0, zero_fraction=zeros)
    found = _run(ev)
    assert bool(found) is fires
    if fires:
        assert found[0].severity is Severity.WARNING


@pytest.mark.parametrize("loss_kind", ["mse", "model", "pkg.mod:fn"])
def test_only_cross_entropy_is_judged(loss_kind):
    assert _run(_output_evidence(loss_kind=loss_kind)) == []
    assert _run(_output_evidence(last_family="sigmoid", row_sum_error=3.0, loss_kind=loss_kind)) == []


def test_non_finite_outputs_are_left_to_non_finite():
    assert _run(_output_evidence(min=float("nan"))) == []
    assert _run(_output_evidence(last_family="sigmoid", max=float("inf"), row_sum_error=3.0)) == []


def test_no_output_description_judges_nothing():
    ev = _output_evidence()
    assert _run(replace(ev, output=None)) == []
