"""Small outputs and gradients held for a batched reduction: same numbers, nothing kept alive.

A layer's first call is reduced at once, so every test here runs several forwards: the later
calls take the held (batched) path.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import probes
from probes import batched
from probes import _forward as forward_hooks

REL = 1e-5


def close(actual, expected, rel=REL):
    assert actual == pytest.approx(float(expected), rel=rel, abs=1e-9)


def population_std(t: torch.Tensor) -> float:
    return t.detach().double().std(correction=0).item()


def rms(t: torch.Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(6, 10), nn.ReLU()
        self.fc2, self.fc3 = nn.Linear(10, 8), nn.Linear(8, 3)
        self.hard = nn.Hardtanh(-0.5, 0.5)
        with torch.no_grad():
            self.fc1.bias[:4] = -100.0
            self.fc2.weight.mul_(8.0)

    def forward(self, x):
        t = torch.tanh(self.fc2(self.act1(self.fc1(x))))
        return self.hard(torch.sigmoid(self.fc3(t)) - 0.5)


def reference(model: Mixed, batches):
    """Every intermediate of every forward, with its gradient, in plain torch."""
    values: dict[str, list[torch.Tensor]] = {}
    for x in batches:
        z1 = model.fc1(x)
        a1 = model.act1(z1)
        z2 = model.fc2(a1)
        t = torch.tanh(z2)
        z3 = model.fc3(t)
        s = torch.sigmoid(z3)
        h = model.hard(s - 0.5)
        step = {"fc1": z1, "act1": a1, "fc2": z2, "tanh()": t, "fc3": z3, "sigmoid()": s, "hard": h}
        for v in step.values():
            v.retain_grad()
        h.pow(2).sum().backward()
        for name, v in step.items():
            values.setdefault(name, []).append(v)
    return values


@pytest.mark.parametrize("on_host", [True, False])
def test_held_calls_match_plain_torch_over_several_forwards(monkeypatch, on_host):
    if not on_host:  # the accelerator path (device totals, index_add_), run on the CPU
        monkeypatch.setattr(forward_hooks, "HOST_TOTALS_DEVICES", ())
    torch.manual_seed(0)
    model = Mixed()
    batches = [torch.randn(16, 6) * 2 for _ in range(4)]
    with probes.attach(model) as session:
        for x in batches:
            model(x).pow(2).sum().backward()
    records = {r.name: r for r in session.collect()}
    model.zero_grad()
    ref = reference(model, batches)
    for name, values in ref.items():
        record = records[name]
        allv = torch.cat([v.detach() for v in values])
        grads = torch.cat([v.grad for v in values])
        assert record.calls == 4 and record.activation.count == allv.numel()
        close(record.activation.mean, allv.double().mean())
        close(record.activation.std, population_std(allv))
        close(record.gradient.output_rms, rms(grads))
    sat = torch.cat([v.detach() for v in ref["tanh()"]]).abs() > 0.99
    close(records["tanh()"].activation.saturated_fraction, sat.double().mean())
    hard = torch.cat([v.detach() for v in ref["hard"]]).abs() >= 0.5
    close(records["hard"].activation.saturated_fraction, hard.double().mean())
    relu = [v.detach() for v in ref["act1"]]
    close(records["act1"].activation.dead_fraction, 1 - (torch.cat(relu) > 0).any(0).double().mean())
    close(records["act1"].activation.dead_fraction_last, 1 - (relu[-1] > 0).any(0).double().mean())


def test_nonfinite_values_and_gradients_are_counted_on_held_calls():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    with probes.attach(model) as session:
        for nan in (False, True, False):
            x = torch.randn(5, 4)
            if nan:
                x[2, 1] = float("nan")
            model(x).sum().backward()
    records = session.collect()
    assert records[0].activation.nonfinite == 6  # one row of the Linear's output
    assert records[1].activation.nonfinite == 6
    assert records[1].activation.saturated_fraction is not None
    assert records[1].gradient.nonfinite == 0  # the gradient into the Tanh's output is finite
    # The Linear's output gradient has the NaN row (6 values); its weight and bias grads follow.
    assert records[0].gradient.nonfinite == 6 + 2


class InPlaceAfterOutput(nn.Module):
    """Outputs of probed layers changed in place afterwards, in every way a forward can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4, self.fc5 = (nn.Linear(6, 6) for _ in range(5))
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5, inplace=True)

    def forward(self, x):
        h = self.act(self.fc1(x))  # an in-place activation module
        h = self.drop(self.fc2(h))  # an in-place silent module (no record of its own)
        g = self.fc3(h)
        g += x  # a residual add into a layer's output
        g = F.relu(self.fc4(g), inplace=True)  # an in-place function
        out = self.fc5(g)
        with torch._C.DisableTorchFunction():
            out.mul_(3.0)  # an in-place op no probe sees: the version counter catches it
        return out


def test_outputs_changed_in_place_afterwards_are_measured_as_produced():
    torch.manual_seed(2)
    model = InPlaceAfterOutput()
    batches = [torch.randn(8, 6) for _ in range(3)]
    seen: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(module, args, output):
            seen.setdefault(name, []).append(output.detach().clone())  # before any later change
        return hook

    handles = [getattr(model, n).register_forward_hook(keep(n)) for n in ("fc1", "fc2", "fc3", "fc4", "fc5")]
    with probes.attach(model) as session:
        for x in batches:
            model(x).sum().backward()
    for handle in handles:
        handle.remove()
    records = {r.name: r for r in session.collect()}
    for name, outputs in seen.items():
        allv = torch.cat(outputs)
        close(records[name].activation.mean, allv.double().mean())
        close(records[name].activation.std, population_std(allv))


def test_a_small_cap_reduces_early_with_the_same_numbers(monkeypatch):
    torch.manual_seed(3)
    model = nn.Sequential(*[m for _ in range(5) for m in (nn.Linear(8, 8), nn.Tanh())])
    batches = [torch.randn(4, 8) for _ in range(3)]

    def run():
        with probes.attach(model) as session:
            for x in batches:
                model(x).sum().backward()
        return session.collect()

    wide = run()
    monkeypatch.setattr(batched, "HOLD_CAP_ITEMS", 1)  # every held output reduced at once
    narrow = run()
    for a, b in zip(wide, narrow):
        close(a.activation.mean, b.activation.mean)
        close(a.activation.std, b.activation.std)
        close(a.activation.saturated_fraction or 0.0, b.activation.saturated_fraction or 0.0)
        close(a.gradient.output_rms, b.gradient.output_rms)


def test_no_held_output_or_gradient_outlives_its_pass_or_the_session():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    refs: list[weakref.ref] = []
    for layer in (0, 2):
        model[layer].register_forward_hook(lambda m, a, out: refs.append(weakref.ref(out)))
    fail = []

    def maybe_raise(module, args):
        if fail:
            raise RuntimeError("half-way")

    model[3].register_forward_pre_hook(maybe_raise)
    grad_refs: list[weakref.ref] = []

    def keep_grad(module, args, out):
        if out.requires_grad:
            out.register_hook(lambda g: grad_refs.append(weakref.ref(g)))

    model[3].register_forward_hook(keep_grad)
    with probes.attach(model) as session:
        for _ in range(3):
            model(torch.randn(8, 4)).sum().backward()
            gc.collect()
            assert all(r() is None for r in refs) and all(r() is None for r in grad_refs)
        with torch.no_grad():  # a forward with no backward: its outputs go when it ends
            model(torch.randn(8, 4))
        gc.collect()
        assert all(r() is None for r in refs)
        fail.append(True)
        with pytest.raises(RuntimeError, match="half-way"):  # a forward that raises half-way
            model(torch.randn(8, 4))
        gc.collect()
        assert all(r() is None for r in refs)
        before = session.collect()
    assert before[0].calls == before[2].calls == 5  # the raising forward still counted
    assert before[0].activation.count == 5 * 8 * 4
    gc.collect()
    assert all(r() is None for r in refs) and all(r() is None for r in grad_refs)
    assert session._shared.pending == [] and session._shared.pending_grads == []
