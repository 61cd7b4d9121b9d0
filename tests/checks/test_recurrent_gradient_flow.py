"""recurrent-gradient-flow and diagnose/recurrent.py: how far back in time the gradient reaches."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnose
from diagnose.checks import recurrent_gradient_flow as check_module
from diagnose.checks.recurrent_gradient_flow import memory_horizon
from diagnose.evidence import RecurrentFlow
from diagnose.recurrent import track_recurrent_gradients
from diagnose.severity import Severity

from .helpers import evidence, findings_of, only

ID = "recurrent-gradient-flow"
HIDDEN = 64


class Recurrent(nn.Module):
    """A recurrent encoder over (batch, time, 16) and a Linear(64, 10) head on its last step."""

    def __init__(self, kind: str = "lstm", forget_bias: float | None = None, batch_first: bool = True):
        super().__init__()
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](16, HIDDEN, batch_first=batch_first)
        self.head = nn.Linear(HIDDEN, 10)
        self.batch_first = batch_first
        if forget_bias is not None:
            with torch.no_grad():
                self.rnn.bias_ih_l0[HIDDEN:2 * HIDDEN].fill_(forget_bias)
                self.rnn.bias_hh_l0[HIDDEN:2 * HIDDEN].fill_(forget_bias)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1] if self.batch_first else out[-1])


def _build(*args, **kwargs) -> Recurrent:
    torch.manual_seed(0)
    return Recurrent(*args, **kwargs)


def _inputs(steps: int = 24, batch: int = 8) -> torch.Tensor:
    return torch.randn(batch, steps, 16, generator=torch.Generator().manual_seed(0))


def _targets(batch: int = 8) -> torch.Tensor:
    return torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(3))


def _reference_step_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, time_dim: int = 1) -> torch.Tensor:
    """||dLoss/dx_t|| over the batch per step, from a plain run with nothing attached."""
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    reduce = tuple(d for d in range(3) if d != time_dim)
    return x.grad.norm(dim=reduce)


# --- real models ------------------------------------------------------------------------------


def test_negative_forget_bias_fires_an_error():
    finding = only(diagnose.check(_build(forget_bias=-2.5), _inputs()), ID)
    assert finding.severity is Severity.ERROR
    assert finding.layers == ("rnn",)
    assert finding.evidence["forget_bias"] == pytest.approx(-5.0)
    assert finding.evidence["memory_horizon"] <= check_module.HORIZON
    assert finding.evidence["type"] == "LSTM"
    assert finding.evidence["steps"] == 24
    assert "forget-gate bias is -5" in finding.message


def test_negative_forget_bias_recommends_fix_bias_init_for_the_forget_gate():
    finding = only(diagnose.check(_build(forget_bias=-2.5), _inputs()), ID)
    fix = finding.fixes[0]
    assert fix.id == "fix-bias-init"
    assert "forget" in fix.snippet
    # and the snippet does what it says: once applied, the LSTM remembers and the check is quiet
    model = _build(forget_bias=-2.5)
    exec(fix.snippet, {"model": model})
    forget = model.rnn.bias_ih_l0[HIDDEN:2 * HIDDEN] + model.rnn.bias_hh_l0[HIDDEN:2 * HIDDEN]
    assert torch.all(forget == 1.0)
    assert findings_of(diagnose.check(model, _inputs()), ID) == []


@pytest.mark.parametrize(("kind", "forget_bias"), [("lstm", None), ("gru", None), ("rnn", None), ("lstm", 0.5)])
def test_healthy_recurrent_nets_do_not_fire(kind, forget_bias):
    report = diagnose.check(_build(kind, forget_bias=forget_bias), _inputs())
    (flow,) = report.evidence.recurrent  # measured, so the silence is a judgement
    assert flow.steps == 24
    assert flow.type == {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[kind]
    assert findings_of(report, ID) == []


def test_forget_bias_is_read_as_the_sum_over_the_forget_slice():
    report = diagnose.check(_build(forget_bias=0.5), _inputs())
    assert report.evidence.recurrent[0].forget_bias == pytest.approx(1.0)
    model = _build()
    expected = float((model.rnn.bias_ih_l0[HIDDEN:2 * HIDDEN] + model.rnn.bias_hh_l0[HIDDEN:2 * HIDDEN]).mean().detach())
    assert diagnose.check(model, _inputs()).evidence.recurrent[0].forget_bias == pytest.approx(expected, rel=1e-6)


def test_gru_and_rnn_have_no_forget_bias():
    assert diagnose.check(_build("gru"), _inputs()).evidence.recurrent[0].forget_bias is None


def test_sequences_shorter_than_twice_the_horizon_are_not_judged():
    report = diagnose.check(_build(forget_bias=-2.5), _inputs(steps=15))
    (flow,) = report.evidence.recurrent
    assert flow.steps == 15
    assert memory_horizon(flow, check_module.GRADIENT_FLOOR) <= check_module.HORIZON  # it would fire
    assert findings_of(report, ID) == []
    assert only(diagnose.check(_build(forget_bias=-2.5), _inputs(steps=16)), ID)


def test_report_step_norms_match_an_independent_computation():
    model, x, y = _build(forget_bias=-2.5), _inputs(), _targets()
    report = diagnose.check(model, x, targets=y)
    measured = torch.tensor(report.evidence.recurrent[0].step_gradient_norms, dtype=torch.float64)
    reference = _reference_step_norms(_build(forget_bias=-2.5), x, y).double()
    torch.testing.assert_close(measured, reference, rtol=1e-5, atol=1e-30)


# --- the tracker --------------------------------------------------------------------------------


def test_tracker_norms_match_the_input_gradient_of_a_plain_run():
    model, x, y = _build(), _inputs(), _targets()
    with track_recurrent_gradients(model) as read:
        F.cross_entropy(model(x), y).backward()
        (flow,) = read()
    assert x.grad is None and not x.requires_grad  # the caller's tensor is left alone
    reference = _reference_step_norms(_build(), x, y)
    assert flow.name == "rnn" and flow.type == "LSTM" and flow.steps == 24
    torch.testing.assert_close(torch.tensor(flow.step_gradient_norms), reference, rtol=1e-5, atol=0.0)
    assert flow.step_gradient_norms[-1] > flow.step_gradient_norms[0]  # oldest step first


def test_tracker_reads_time_major_inputs_along_dim_zero():
    model = _build(batch_first=False)
    x, y = _inputs().transpose(0, 1).contiguous(), _targets()  # (24, 8, 16)
    with track_recurrent_gradients(model) as read:
        F.cross_entropy(model(x), y).backward()
        (flow,) = read()
    reference = _reference_step_norms(_build(batch_first=False), x, y, time_dim=0)
    assert flow.steps == 24
    torch.testing.assert_close(torch.tensor(flow.step_gradient_norms), reference, rtol=1e-5, atol=0.0)


class Front(nn.Module):
    """A Linear in front of the LSTM: the recurrent input already requires grad."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 16)
        self.rec = Recurrent()
        self.keep = False

    def forward(self, x):
        h = self.embed(x)
        if self.keep:
            h.retain_grad()
            self.h = h
        return self.rec(h)


def test_tracker_reads_an_input_that_already_requires_grad():
    torch.manual_seed(0)
    model = Front()
    x, y = _inputs(), _targets()
    with track_recurrent_gradients(model) as read:
        F.cross_entropy(model(x), y).backward()
        (flow,) = read()
    assert flow.name == "rec.rnn"
    tracked_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.keep = True
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(torch.tensor(flow.step_gradient_norms), model.h.grad.norm(dim=(0, 2)),
                               rtol=1e-5, atol=0.0)
    for tracked, plain in zip(tracked_grads, model.parameters(), strict=True):
        assert torch.equal(tracked, plain.grad)


def test_tracker_only_observes_parameter_gradients_are_bit_identical():
    x, y = _inputs(), _targets()
    plain = _build(forget_bias=-2.5)
    F.cross_entropy(plain(x), y).backward()
    tracked = _build(forget_bias=-2.5)
    with track_recurrent_gradients(tracked) as read:
        loss = F.cross_entropy(tracked(x), y)
        loss.backward()
        assert read()
    plain_loss = F.cross_entropy(plain(x), y)
    assert torch.equal(loss.detach(), plain_loss.detach())
    for (name, a), (_, b) in zip(plain.named_parameters(), tracked.named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_tracker_removes_its_hooks():
    model, x, y = _build(), _inputs(), _targets()
    with track_recurrent_gradients(model) as read:
        assert len(model.rnn._forward_pre_hooks) == 1
        F.cross_entropy(model(x), y).backward()
        read()
    assert len(model.rnn._forward_pre_hooks) == 0
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())
    # a later forward with an input that requires grad gets no hook left on it
    x2 = x.clone().requires_grad_(True)
    F.cross_entropy(model(x2), y).backward()
    assert x2._backward_hooks is None or len(x2._backward_hooks) == 0


def test_tracker_removes_its_hooks_when_the_body_raises():
    model = _build()
    with pytest.raises(RuntimeError, match="boom"):
        with track_recurrent_gradients(model):
            model(_inputs())
            raise RuntimeError("boom")
    assert len(model.rnn._forward_pre_hooks) == 0


def test_tracker_reads_the_first_call_only():
    # a decoder loop calls the same LSTM again with one step: the horizon is the first call's
    model, x, y = _build(), _inputs(), _targets()
    with track_recurrent_gradients(model) as read:
        logits = model(x)
        extra = model(x[:, :3])
        F.cross_entropy(logits + extra, y).backward()
        (flow,) = read()
    assert flow.steps == 24


def test_tracker_skips_single_steps_and_unbatched_inputs():
    model, y = _build(), _targets()
    with track_recurrent_gradients(model) as read:
        F.cross_entropy(model(_inputs(steps=1)), y).backward()
        assert read() == ()
    with track_recurrent_gradients(model) as read:
        out, _ = model.rnn(_inputs()[0])  # (time, features): unbatched
        out.sum().backward()
        assert read() == ()


def test_tracker_measures_nothing_without_backward():
    model = _build()
    with track_recurrent_gradients(model) as read:
        model(_inputs())
        assert read() == ()


# --- memory_horizon on hand-made flows --------------------------------------------------------


def _flow(norms, *, forget_bias=None, kind="LSTM", steps=None) -> RecurrentFlow:
    return RecurrentFlow(name="rnn", type=kind, steps=len(norms) if steps is None else steps,
                         step_gradient_norms=tuple(norms), forget_bias=forget_bias)


@pytest.mark.parametrize(("norms", "horizon"), [
    ((1e-5, 1e-2, 0.1, 1.0), 3),
    ((1e-4, 1e-3, 0.1, 1.0), 3),  # exactly at the floor is not below it
    ((0.5, 1e-4, 1.0), 1),  # the first step back that falls below, not the last
    ((2.0, 1.0), None),  # never falls that far: no horizon within the sequence
    ((1e-6, 0.0), None),  # nothing at the last step to compare with
    ((1.0, float("nan"), 1.0), None),
    ((1.0, 1.0, float("inf")), None),
    ((), None),
])
def test_memory_horizon(norms, horizon):
    assert memory_horizon(_flow(norms), 1e-3) == horizon


def test_memory_horizon_scales_with_the_floor():
    norms = [10.0 ** -k for k in range(10, -1, -1)]  # 1e-10 ... 1: one decade per step
    assert memory_horizon(_flow(norms), 1e-3) == 4
    assert memory_horizon(_flow(norms), 1e-6) == 7


# --- the check on hand-built evidence ---------------------------------------------------------


def _decaying(steps: int, decades_per_step: float) -> list[float]:
    return [10.0 ** (-decades_per_step * (steps - 1 - t)) for t in range(steps)]


def _run(*flows, thresholds=None):
    ev = replace(evidence(), recurrent=tuple(flows))
    return check_module.check(ev, {**check_module.THRESHOLDS, **(thresholds or {})})


@pytest.mark.parametrize(("decades", "horizon", "fires"), [(0.38, 8, True), (0.34, 9, False), (1.0, 4, True)])
def test_horizon_bar(decades, horizon, fires):
    # k steps back the norm is 10 ** (-decades * k): below 1e-3 from the first k > 3 / decades
    flow = _flow(_decaying(24, decades))
    assert memory_horizon(flow, 1e-3) == horizon
    assert bool(_run(flow)) is fires


def test_horizon_of_exactly_eight_fires_and_nine_does_not():
    at_eight = [1.0] * 24
    at_eight[-1 - 8] = 1e-4
    at_nine = [1.0] * 24
    at_nine[-1 - 9] = 1e-4
    assert memory_horizon(_flow(at_eight), 1e-3) == 8 and memory_horizon(_flow(at_nine), 1e-3) == 9
    assert only(_run(_flow(at_eight)), ID).evidence["memory_horizon"] == 8
    assert _run(_flow(at_nine)) == []


def test_gradient_ratio_ten_steps_back():
    norms = _decaying(24, 1.0)
    finding = only(_run(_flow(norms)), ID)
    assert finding.evidence["gradient_ratio_10_back"] == pytest.approx(1e-10, rel=1e-9)


@pytest.mark.parametrize(("steps", "judged"), [(15, False), (16, True)])
def test_short_sequences_are_not_judged(steps, judged):
    assert bool(_run(_flow(_decaying(steps, 1.0)))) is judged


def test_negative_forget_bias_is_named_as_the_cause():
    message = only(_run(_flow(_decaying(24, 1.0), forget_bias=-5.0)), ID).message
    gate = 1 / (1 + math.exp(5.0))
    assert "forget-gate bias is -5" in message and f"{gate:.2g}" in message


@pytest.mark.parametrize(("forget_bias", "kind"), [(1.0, "LSTM"), (None, "GRU")])
def test_no_forget_bias_cause_otherwise(forget_bias, kind):
    finding = only(_run(_flow(_decaying(24, 1.0), forget_bias=forget_bias, kind=kind)), ID)
    assert "forget-gate" not in finding.message
    assert finding.evidence["type"] == kind


def test_each_recurrent_module_is_judged_on_its_own():
    bad = replace(_flow(_decaying(24, 1.0)), name="enc")
    good = replace(_flow(_decaying(24, 0.05)), name="dec")
    found = _run(bad, good)
    assert [f.layers for f in found] == [("enc",)]


def test_thresholds_are_configurable():
    flow = _flow(_decaying(40, 0.21))  # below 1e-3 from 15 steps back (3 / 0.21 = 14.3)
    assert memory_horizon(flow, 1e-3) == 15
    assert _run(flow) == []
    assert only(_run(flow, thresholds={"horizon": 15, "gradient_floor": 1e-3}), ID)
    assert only(_run(flow, thresholds={"horizon": 8, "gradient_floor": 0.1}), ID)


# --- the other way: a gradient that explodes back in time ---


def _tanh_rnn(recurrent_scale: float) -> nn.Module:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(16, 64, batch_first=True)
            with torch.no_grad():
                self.rnn.weight_hh_l0.mul_(recurrent_scale)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    return Net()


def test_a_chaotic_tanh_rnn_is_named_and_its_recurrent_weights_come_first():
    report = diagnose.check(_tanh_rnn(4.0), torch.randn(8, 24, 16, generator=torch.Generator().manual_seed(0)), steps=5)
    finding = only(report, "recurrent-gradient-flow")
    assert finding.evidence["gradient_growth_back_in_time"] >= 100
    assert "explodes back in time" in finding.title
    # the cause (a recurrent gain above 1) first: orthogonal recurrent weights; clipping bounds the steps
    assert [fix.id for fix in finding.fixes][:2] == ["glorot-init", "gradient-clipping"]


def test_growth_back_in_time_on_hand_made_norms():
    from diagnose.checks.recurrent_gradient_flow import back_in_time_growth

    flow = RecurrentFlow(name="rnn", type="RNN", steps=5, step_gradient_norms=(300.0, 30.0, 3.0, 2.0, 1.0))
    assert back_in_time_growth(flow) == (300.0, 4)
    decaying = RecurrentFlow(name="rnn", type="RNN", steps=3, step_gradient_norms=(0.01, 0.1, 1.0))
    assert back_in_time_growth(decaying) == (1.0, 0)


def test_default_tanh_rnn_does_not_explode():
    report = diagnose.check(_tanh_rnn(1.0), torch.randn(8, 24, 16, generator=torch.Generator().manual_seed(0)), steps=5)
    assert findings_of(report, "recurrent-gradient-flow") == []
