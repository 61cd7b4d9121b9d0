"""`attach(model, every=k)`: one forward in k is measured, with its backward and optimizer step.

References are computed with plain torch on a twin model trained without probes, on the measured
steps only; the probed model must train bit for bit like the twin, with no hook of ours on its
submodules between measured forwards.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import probes
from tests.probes.test_observational import Generated, _run_in, layer_spec, leftovers


def build(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))


def batches(steps: int):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(12, 5, generator=generator) * 2 - 1, torch.randn(12, 2, generator=generator))
            for _ in range(steps)]


def layer_params(layer: nn.Module) -> list[torch.Tensor]:
    return [p for p in layer.parameters()]


def reference(steps: int, measured: set[int]):
    """Per layer, from a twin trained without probes: outputs, output gradients, parameter-gradient
    squared norms and update ratios of the measured steps."""
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    outputs = {i: [] for i in range(len(model))}
    out_grads = {i: [] for i in range(len(model))}
    grad_sq = {i: [] for i in range(len(model))}
    ratios = {i: [] for i in range(len(model))}
    for step, (x, y) in enumerate(batches(steps)):
        optimizer.zero_grad(set_to_none=True)
        h, kept = x, []
        for layer in model:
            h = layer(h)
            h.retain_grad()
            kept.append(h)
        F.mse_loss(h, y).backward()
        before = [[p.detach().clone() for p in layer_params(layer)] for layer in model]
        optimizer.step()
        if step not in measured:
            continue
        for i, layer in enumerate(model):
            outputs[i].append(kept[i].detach().double())
            out_grads[i].append(kept[i].grad.double())
            params = layer_params(layer)
            if params:
                grad_sq[i].append(sum(p.grad.double().pow(2).sum().item() for p in params))
                delta = math.sqrt(sum((p.detach() - b).double().pow(2).sum().item() for p, b in zip(params, before[i])))
                norm = math.sqrt(sum(b.double().pow(2).sum().item() for b in before[i]))
                ratios[i].append(delta / norm)
    return model, outputs, out_grads, grad_sq, ratios


def test_every_k_measures_exactly_the_measured_steps_and_trains_bit_identically():
    steps, every = 7, 3
    measured = {0, 3, 6}
    twin, outputs, out_grads, grad_sq, ratios = reference(steps, measured)

    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hooked_between = []
    with probes.attach(model, every=every) as session:
        for step, (x, y) in enumerate(batches(steps)):
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            hooked_between.append(bool(model[0]._forward_hooks or model[0]._forward_pre_hooks))
            F.mse_loss(out, y).backward()
            optimizer.step()
        records = session.collect()
    assert session.forwards == steps
    assert hooked_between == [step in measured for step in range(steps)]
    assert leftovers(model) == []
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)

    assert [r.name for r in records] == ["0", "1", "2", "3", "4"]
    for i, record in enumerate(records):
        assert record.calls == len(measured)
        y = torch.cat([o.reshape(-1) for o in outputs[i]])
        assert record.activation.mean == pytest.approx(y.mean().item(), rel=1e-5, abs=1e-7)
        assert record.activation.std == pytest.approx(y.std(correction=0).item(), rel=1e-5)
        g = torch.cat([o.reshape(-1) for o in out_grads[i]])
        assert record.gradient.output_rms == pytest.approx(g.pow(2).mean().sqrt().item(), rel=1e-5)
        if grad_sq[i]:
            assert record.gradient.backward_calls == len(measured)
            assert record.gradient.param_norm == pytest.approx(math.sqrt(sum(grad_sq[i]) / len(measured)), rel=1e-5)
            assert list(record.update_ratios) == pytest.approx(ratios[i], rel=1e-5)
    relu = torch.cat(outputs[1])
    assert records[1].activation.dead_fraction == pytest.approx(1 - (relu > 0).any(0).double().mean().item())
    tanh = torch.cat(outputs[3])
    assert records[3].activation.saturated_fraction == pytest.approx((tanh.abs() > 0.99).double().mean().item())


def test_collect_between_measured_forwards_returns_the_same_records():
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []
    with probes.attach(model, every=4) as session:
        for x, y in batches(6):
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()
            seen.append(session.collect())
    # measured: forwards 1 and 5; the collects after forwards 2-4 read nothing new
    assert seen[1] == seen[0] and seen[2] == seen[0] and seen[3] == seen[0]
    assert seen[4] != seen[3]
    assert [r.calls for r in seen[4]] == [2] * 5
    assert seen[5] == seen[4]
    seen[5].clear()  # each collect hands out its own list
    assert session.collect() == seen[4]


def test_gradient_accumulation_measures_the_step_after_a_measured_micro_batch():
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = batches(8)
    with probes.attach(model, every=2) as session:
        for step in range(4):
            optimizer.zero_grad()
            for x, y in data[2 * step:2 * step + 2]:  # two micro-batches per step
                F.mse_loss(model(x), y).backward()
            optimizer.step()
        records = session.collect()
    assert session.forwards == 8
    first = records[0]
    assert first.calls == 4  # the first micro-batch of each step
    assert first.gradient.backward_calls == 4
    assert len(first.update_ratios) == 4  # each step followed a measured micro-batch


class FunctionalBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 1)

    def forward(self, x):
        return self.b(torch.sigmoid(F.relu(self.a(x))))


def test_functional_activations_are_measured_only_in_measured_forwards():
    torch.manual_seed(3)
    model = FunctionalBlock()
    xs = [torch.randn(7, 4) for _ in range(5)]
    modes_after = []
    with probes.attach(model, every=2) as session:
        for x in xs:
            model(x).sum().backward()
            modes_after.append(len(torch.overrides._get_current_function_mode_stack()))
        records = {r.name: r for r in session.collect()}
    assert modes_after == [0] * 5
    assert records["relu()"].calls == 3 and records["sigmoid()"].calls == 3
    with torch.no_grad():
        relu = torch.cat([F.relu(model.a(x)) for x in xs[::2]]).double()
    assert records["relu()"].activation.mean == pytest.approx(relu.mean().item(), rel=1e-5)
    assert leftovers(model) == []


def test_every_one_is_the_default_and_measures_every_forward():
    model = build()
    with probes.attach(model) as session:
        for x, _ in batches(3):
            model(x)
        assert session.every == 1
        assert [r.calls for r in session.collect()] == [3] * 5


@pytest.mark.parametrize("every", [0, -2, 1.5, True, "3"])
def test_every_must_be_a_whole_number_of_at_least_one(every):
    with pytest.raises(ValueError, match="every"):
        with probes.attach(build(), every=every):
            pass


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(layer_spec, min_size=1, max_size=4), in_width=st.integers(1, 5),
       batch=st.integers(1, 4), seed=st.integers(0, 2**16), every=st.integers(2, 4),
       context=st.sampled_from(["plain", "checkpoint", "checkpoint_reentrant"]))
def test_generated_models_train_bit_identically_under_every(spec, in_width, batch, seed, every, context):
    """Random stacks (functional and in-place activations, shared layers), trained for a few
    steps with and without `attach(every=k)`: the same parameters after every step, nothing left
    behind, and each layer measured in exactly the measured forwards."""
    torch.manual_seed(seed)
    model = Generated(in_width, spec)
    twin = Generated(in_width, spec)
    twin.load_state_dict(model.state_dict())
    xs = [torch.randn(batch, in_width) for _ in range(5)]
    opt_model = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.05)
    with probes.attach(model, every=every) as session:
        for x in xs:
            for net, opt in ((twin, opt_twin), (model, opt_model)):
                opt.zero_grad()
                _run_in(context, net, x)
                opt.step()
            for a, b in zip(model.parameters(), twin.parameters()):
                assert torch.equal(a, b)
        records = {r.name: r for r in session.collect()}
    assert leftovers(model) == []
    measured = len(range(0, len(xs), every))
    assert records["head"].calls == measured
    assert records["head"].gradient.backward_calls == measured
    assert len(records["head"].update_ratios) == measured
