"""Every statistic probes report, against a value computed independently in plain torch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import probes

REL = 1e-5


def by_name(records):
    return {r.name: r for r in records}


def close(actual, expected, rel=REL, abs_=1e-9):
    expected = expected.detach() if isinstance(expected, torch.Tensor) else expected
    assert actual == pytest.approx(float(expected), rel=rel, abs=abs_)


def population_std(t: torch.Tensor) -> float:
    return t.detach().double().std(correction=0).item()


def rms(t: torch.Tensor) -> float:
    return t.double().pow(2).mean().sqrt().item()


def dead_share(y: torch.Tensor, unit_dim: int) -> float:
    other = [d for d in range(y.dim()) if d != unit_dim]
    alive = (y > 0).any(dim=tuple(other))
    return 1.0 - alive.double().mean().item()


class Mixed(nn.Module):
    """Linear -> ReLU (with dead units), Linear -> tanh (saturated), Linear -> sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(10, 8)
        self.fc3 = nn.Linear(8, 3)
        with torch.no_grad():
            self.fc1.bias[:4] = -100.0  # four units that can never fire
            self.fc2.weight.mul_(8.0)  # push tanh into its flat tails

    def forward(self, x):
        h = self.act1(self.fc1(x))
        t = torch.tanh(self.fc2(h))
        return torch.sigmoid(self.fc3(t))


def reference_pass(model: Mixed, x: torch.Tensor):
    """The same forward in plain torch, keeping every intermediate with its gradient."""
    z1 = model.fc1(x)
    a1 = model.act1(z1)
    z2 = model.fc2(a1)
    t = torch.tanh(z2)
    z3 = model.fc3(t)
    out = torch.sigmoid(z3)
    values = dict(fc1=z1, act1=a1, fc2=z2, tanh=t, fc3=z3, sigmoid=out)
    for v in values.values():
        v.retain_grad()
    out.sum().backward()
    return values


def test_activation_gradient_and_weight_statistics_match_plain_torch():
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(64, 6)
    with probes.attach(model) as session:
        model(x).sum().backward()
    records = by_name(session.collect())
    probed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    ref = reference_pass(model, x)
    names = {"fc1": "fc1", "act1": "act1", "fc2": "fc2", "tanh": "tanh()", "fc3": "fc3", "sigmoid": "sigmoid()"}
    assert [r.name for r in session.collect()] == list(names.values())
    for key, name in names.items():
        record, value = records[name], ref[key]
        close(record.activation.mean, value.double().mean())
        close(record.activation.std, population_std(value))
        assert record.activation.nonfinite == 0
        assert record.activation.count == value.numel()
        close(record.gradient.output_rms, rms(value.grad))
        assert record.calls == 1
        assert record.output_shape == tuple(value.shape)

    close(records["act1"].activation.dead_fraction, dead_share(ref["act1"], 1))
    assert records["act1"].activation.dead_fraction >= 0.4  # the four disabled units at least
    assert records["fc1"].activation.dead_fraction is None
    tanh_out = ref["tanh"]
    close(records["tanh()"].activation.saturated_fraction, (tanh_out.abs() > 0.99).double().mean())
    assert records["tanh()"].activation.saturated_fraction > 0.1
    sig = ref["sigmoid"]
    close(records["sigmoid()"].activation.saturated_fraction, ((sig < 0.01) | (sig > 0.99)).double().mean())

    for layer in ("fc1", "fc2", "fc3"):
        module = getattr(model, layer)
        record = records[layer]
        grads = [probed_grads[f"{layer}.weight"], probed_grads[f"{layer}.bias"]]
        assert torch.equal(grads[0], module.weight.grad) and torch.equal(grads[1], module.bias.grad)
        norm = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads))
        numel = sum(g.numel() for g in grads)
        close(record.gradient.param_norm, norm)
        close(record.gradient.norm, norm)
        close(record.gradient.param_rms, norm / math.sqrt(numel))
        close(record.gradient.rms, norm / math.sqrt(numel))
        w = module.weight.detach().double()
        close(record.weight.std, w.std(correction=0))
        close(record.weight.mean, w.mean(), abs_=1e-7)
        close(record.weight.bias_mean, module.bias.double().mean())
        close(record.weight.bias_std, module.bias.double().std(correction=0))
        assert (record.weight.fan_in, record.weight.fan_out) == (module.in_features, module.out_features)
        assert record.weight.numel == w.numel()
        assert record.weight.frozen is False
    assert records["fc1"].followed_by == "relu" and records["fc1"].weight.scheme == "he"
    close(records["fc1"].weight.expected_std, math.sqrt(2 / 6))
    assert records["fc2"].followed_by == "tanh" and records["fc2"].weight.scheme == "glorot"
    close(records["fc2"].weight.expected_std, math.sqrt(2 / (10 + 8)))
    assert records["fc3"].followed_by == "sigmoid"


def test_lecun_scheme_for_selu_and_normalisation_is_noticed():
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.SELU(), nn.Linear(7, 2))
    with probes.attach(model) as session:
        model(torch.randn(16, 5)).sum().backward()
    records = by_name(session.collect())
    assert records["0"].weight.scheme == "lecun" and records["0"].weight.normalized is True
    close(records["0"].weight.expected_std, math.sqrt(1 / 5))
    assert records["3"].weight.normalized is False and records["3"].followed_by == "none"


def test_conv_dead_fraction_counts_channels():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        conv.bias[:3] = -50.0
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(4, 3, 6, 6)
    with probes.attach(model) as session:
        model(x)
    records = by_name(session.collect())
    y = model(x)
    assert records["1"].activation.units == 8
    close(records["1"].activation.dead_fraction, dead_share(y, 1))
    assert records["1"].activation.dead_fraction >= 3 / 8
    w = conv.weight.detach().double()
    assert records["0"].weight.fan_in == 3 * 9 and records["0"].weight.fan_out == 8 * 9
    close(records["0"].weight.std, w.std(correction=0))


def test_conv1d_maps_use_channel_units():
    model = nn.Sequential(nn.Conv1d(2, 5, 3), nn.ReLU())
    with probes.attach(model) as session:
        model(torch.randn(3, 2, 9))
    assert by_name(session.collect())["1"].activation.units == 5


def test_stats_merge_over_calls_and_dead_fraction_spans_the_run():
    torch.manual_seed(2)
    fc = nn.Linear(4, 6)
    model = nn.Sequential(fc, nn.ReLU())
    x1 = torch.randn(8, 4)
    x2 = torch.randn(5, 4)
    # Unit 0 fires only in the first batch, never in the second.
    with torch.no_grad():
        fc.weight[0] = torch.tensor([10.0, 0, 0, 0])
        fc.bias[0] = 0.0
        x1[0, 0], x2[:, 0] = 1.0, -1.0
    with probes.attach(model) as session:
        model(x1)
        model(x2)
    record = by_name(session.collect())["1"]
    y1, y2 = model(x1), model(x2)
    both = torch.cat([y1, y2])
    assert record.calls == 2
    close(record.activation.mean, both.double().mean())
    close(record.activation.std, population_std(both))
    close(record.activation.dead_fraction, dead_share(both, 1))
    close(record.activation.dead_fraction_last, dead_share(y2, 1))
    assert record.activation.dead_fraction_last > record.activation.dead_fraction


def test_shared_module_and_repeated_functional_calls():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(4, 4)

        def forward(self, x):
            x = F.relu(self.block(x))
            x = F.relu(self.block(x))
            return torch.tanh(self.block(x))

    torch.manual_seed(3)
    model = Shared()
    x = torch.randn(10, 4)
    with probes.attach(model) as session:
        model(x).sum().backward()
    records = by_name(session.collect())
    assert [r.name for r in session.collect()] == ["block", "relu()", "relu()#2", "tanh()"]
    assert records["block"].calls == 3
    assert records["relu()"].owner == "" and records["relu()"].source == "function"
    probed_grad = model.block.weight.grad.clone(), model.block.bias.grad.clone()
    model.zero_grad()
    z1 = model.block(x)
    z2 = model.block(F.relu(z1))
    z3 = model.block(F.relu(z2))
    for z in (z1, z2, z3):
        z.retain_grad()
    torch.tanh(z3).sum().backward()
    outputs = torch.cat([z1, z2, z3])
    close(records["block"].activation.mean, outputs.double().mean())
    close(records["block"].activation.std, population_std(outputs))
    # Output gradient merged over the three calls; parameter gradient once per backward pass.
    close(records["block"].gradient.output_rms, rms(torch.cat([z1.grad, z2.grad, z3.grad])))
    assert all(torch.equal(a, b) for a, b in zip(probed_grad, (model.block.weight.grad, model.block.bias.grad)))
    norm = math.sqrt(sum(g.double().pow(2).sum().item() for g in probed_grad))
    close(records["block"].gradient.param_norm, norm)


def test_functional_names_follow_the_owner_module():
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            x = self.fc(x).relu()
            x = torch.relu_(x + 1.0)
            x = F.leaky_relu(x, 0.1)
            return F.gelu(F.silu(F.elu(F.selu(x))))

    model = nn.Sequential(Inner(), nn.Linear(3, 2))
    with probes.attach(model) as session:
        model(torch.randn(4, 3)).sum().backward()
    names = [r.name for r in session.collect()]
    assert names == [
        "0.fc", "0.relu()", "0.relu()#2", "0.leaky_relu()", "0.selu()", "0.elu()", "0.silu()",
        "0.gelu()", "1",
    ]


def test_sequential_children_are_observed_in_every_forward_after_the_flow_is_known():
    """A plain Sequential calls no activation itself: the functional mode is off inside it once
    the data flow is known, but what its children call is still seen, in every forward."""

    class Gate(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x) * x

    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), Gate(), nn.Sequential(nn.Linear(4, 2), nn.ReLU()))
    xs = [torch.randn(5, 3) for _ in range(4)]
    with probes.attach(model) as session:
        for x in xs:
            model(x).sum().backward()
    records = by_name(session.collect())
    assert records["2.sigmoid()"].calls == 4
    assert records["2.sigmoid()"].owner == "2"
    assert records["3.0"].input_from == ""  # `sigmoid(x) * x` is an op no probe saw
    assert records["2.sigmoid()"].input_from == "0"  # through the Dropout
    with torch.no_grad():
        gates = torch.cat([torch.sigmoid(model[0](x)) for x in xs])
    close(records["2.sigmoid()"].activation.mean, gates.double().mean())
    assert torch._C._len_torch_function_stack() == 0


def test_hardtanh_saturation_is_inclusive_at_its_bounds():
    model = nn.Sequential(nn.Hardtanh(-0.5, 0.5))
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.49, 0.5, 3.0]])
    with probes.attach(model) as session:
        model(x)
    close(session.collect()[0].activation.saturated_fraction, 4 / 6)


def test_nonfinite_values_are_counted():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    x = torch.randn(4, 3)
    x[1, 0] = float("nan")
    with probes.attach(model) as session:
        model(x)
    records = by_name(session.collect())
    expected = (~torch.isfinite(model[0](x))).sum().item()
    assert records["0"].activation.nonfinite == expected > 0
    assert math.isnan(records["0"].activation.mean)


def test_update_ratio_matches_a_manual_snapshot():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(12, 5)
    expected = {"0": [], "2": []}
    with probes.attach(model) as session:
        for _ in range(3):
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
            for layer in expected:
                delta = sum((model.get_parameter(f"{layer}.{p}") - before[f"{layer}.{p}"]).double().pow(2).sum()
                            for p in ("weight", "bias"))
                weight = sum(before[f"{layer}.{p}"].double().pow(2).sum() for p in ("weight", "bias"))
                expected[layer].append(math.sqrt(delta.item() / weight.item()))
    records = by_name(session.collect())
    for layer, ratios in expected.items():
        assert records[layer].update_ratios == pytest.approx(ratios, rel=1e-5)
        close(records[layer].update_ratio, sum(ratios) / 3)
        close(records[layer].update_ratio_max, max(ratios))
    assert records["1"].update_ratio is None


def test_collect_mid_session_and_again_accumulates():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    xs = [torch.randn(4, 3) for _ in range(3)]
    with probes.attach(model) as session:
        model(xs[0])
        first = session.collect()
        model(xs[1])
        model(xs[2])
        second = session.collect()
    assert first[0].calls == 1 and second[0].calls == 3
    outputs = torch.cat([model[0](x) for x in xs])
    close(second[0].activation.std, population_std(outputs))


def test_many_calls_fold_without_losing_precision():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid())
    torch.manual_seed(5)
    xs = [torch.randn(2, 3) for _ in range(150)]  # more than two folds of pending sums
    with probes.attach(model) as session:
        for x in xs:
            model(x)
    records = by_name(session.collect())
    outputs = torch.cat([model(x) for x in xs])
    assert records["1"].calls == 150
    close(records["1"].activation.mean, outputs.double().mean())
    close(records["1"].activation.std, population_std(outputs))
    close(records["1"].activation.saturated_fraction, ((outputs < 0.01) | (outputs > 0.99)).double().mean())


def test_to_dict_round_trips():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with probes.attach(model) as session:
        model(torch.randn(4, 3)).sum().backward()
    for record in session.collect():
        assert probes.LayerRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize("functional", [False, True])
def test_output_gradients_are_exact_with_in_place_relu(functional):
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(5, 7), nn.Linear(7, 3)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.fc1(x)
            h = F.relu(h, inplace=True) if functional else self.act(h)
            return self.fc2(h)

    torch.manual_seed(6)
    model = InPlace()
    x = torch.randn(9, 5)
    with probes.attach(model) as session:
        model(x).pow(2).sum().backward()
    records = by_name(session.collect())
    z = model.fc1(x)
    a = torch.relu(z)
    z.retain_grad()
    a.retain_grad()
    model.fc2(a).pow(2).sum().backward()
    relu_name = "relu()" if functional else "act"
    # The Linear's output gradient is taken before the in-place ReLU, the ReLU's after it.
    close(records["fc1"].gradient.output_rms, rms(z.grad))
    close(records[relu_name].gradient.output_rms, rms(a.grad))
    assert rms(z.grad) != pytest.approx(rms(a.grad))
    close(records["fc1"].activation.std, population_std(z))
    close(records[relu_name].activation.dead_fraction, dead_share(a, 1))


def test_an_activation_module_as_the_root_is_reported_once():
    model = nn.Tanh()
    with probes.attach(model) as session:
        model(torch.randn(3, 2))
    assert [(r.name, r.source) for r in session.collect()] == [("", "module")]


@pytest.mark.parametrize("row_spread", [1.0, 3.0])
def test_large_weights_are_read_on_a_sample_within_its_stated_error(row_spread):
    """Weights above probes.weights.SAMPLE_ABOVE are measured on k sampled elements in
    SAMPLE_BLOCKS runs. The std is within 4 standard errors of the exact one: for Gaussian
    entries the error of a mean square from k elements is sqrt(2/k) (half that on a std); rows of
    different scales (shuffled) add cv^2 / SAMPLE_BLOCKS, cv being the spread of the rows' mean
    squares. Biases (small) are exact."""
    from probes import weights

    torch.manual_seed(1)
    layer = nn.Linear(1024, 512)
    row_scales = torch.linspace(1.0, row_spread, 512)[torch.randperm(512)]
    with torch.no_grad():
        layer.weight.mul_(row_scales.unsqueeze(1))
    assert layer.weight.numel() > weights.SAMPLE_ABOVE
    model = nn.Sequential(layer, nn.ReLU())
    with probes.attach(model) as session:
        model(torch.randn(4, 1024))
        record = session.collect()[0]
    w = layer.weight.detach().double()
    k = weights.SAMPLE_BLOCKS * weights.SAMPLE_BLOCK
    squares = row_scales.double() ** 2
    cv = (squares.std() / squares.mean()).item()
    error = 0.5 * math.sqrt(2 / k + cv**2 / weights.SAMPLE_BLOCKS)
    assert abs(record.weight.std / w.std(correction=0).item() - 1) < 4 * error
    assert abs(record.weight.mean - w.mean().item()) < 4 * w.std().item() / math.sqrt(k)
    close(record.weight.bias_std, population_std(layer.bias))
    close(record.weight.bias_mean, layer.bias.double().mean())


def test_a_large_weight_whose_storage_is_replaced_while_attached_is_read_whole():
    """A non-contiguous replacement cannot be sampled: the reads are laid out again, and the
    layer's weight std is then exact."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 512))
    x = torch.randn(4, 512)
    with probes.attach(model) as session:
        model(x)
        session.collect()
        with torch.no_grad():
            model[0].weight.data = model[0].weight.data.t().contiguous().t() * 2.0
        assert not model[0].weight.is_contiguous()
        model(x)
        records = by_name(session.collect())
    close(records["0"].weight.std, population_std(model[0].weight))


def test_parameter_gradients_describe_grad_after_each_backward_also_when_it_accumulates():
    """`.grad` after each backward: accumulated when not zeroed, and a stale `.grad` of a head the
    backward did not reach still counts (what the optimizer would see), for large parameters too."""

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Linear(160, 120)  # 19200 weights > grouped.STACK_MAX
            self.head_a = nn.Linear(120, 150)  # 18000
            self.head_b = nn.Linear(120, 140)  # 16800

        def forward(self, x, both=True):
            h = F.relu(self.trunk(x))
            out = self.head_a(h).pow(2).mean()
            return out + self.head_b(h).pow(2).mean() if both else out

    def squared_norm(module: nn.Module) -> float:
        return sum(p.grad.double().pow(2).sum().item() for p in module.parameters())

    torch.manual_seed(7)
    model = TwoHeads()
    reference = TwoHeads()
    reference.load_state_dict(model.state_dict())
    xs = [torch.randn(8, 160) for _ in range(3)]
    both = (True, False, True)  # no zero_grad: .grad accumulates; head_b keeps its old .grad once
    with probes.attach(model) as session:
        for x, flag in zip(xs, both):
            model(x, both=flag).backward()
    records = by_name(session.collect())
    totals = {"trunk": 0.0, "head_a": 0.0, "head_b": 0.0}
    for x, flag in zip(xs, both):  # plain torch: .grad after each backward
        reference(x, both=flag).backward()
        for name in totals:
            totals[name] += squared_norm(reference.get_submodule(name))
    for name, total in totals.items():
        assert records[name].gradient.backward_calls == 3
        close(records[name].gradient.param_norm, math.sqrt(total / 3), rel=1e-5)


def test_update_ratios_of_a_long_session_collected_once_at_the_end():
    """On CPU the pending steps are turned into ratios every probes.updates.ABSORB_EVERY steps
    instead of piling up until collect; nothing is lost or counted twice."""
    from probes import updates

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(6, 3)
    steps = 2 * updates.ABSORB_EVERY + 5
    expected = []
    with probes.attach(model) as session:
        for _ in range(steps):
            before = [p.detach().clone() for p in model[0].parameters()]
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
            delta = sum((p - b).double().pow(2).sum() for p, b in zip(model[0].parameters(), before))
            weight = sum(b.double().pow(2).sum() for b in before)
            expected.append(math.sqrt(delta.item() / weight.item()))
        assert len(session._shared.updates.steps) < updates.ABSORB_EVERY
    record = by_name(session.collect())["0"]
    assert record.update_ratios == pytest.approx(expected, rel=1e-5)


def test_parameter_gradient_norms_of_large_layers_match_float64_references():
    """Gradients of DOT_ABOVE elements and more are measured with a float32 dot of their own
    (probes/grouped.py): against a float64 reference they still agree to 1e-5."""
    from probes import grouped

    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(600, 512), nn.ReLU(), nn.Linear(512, 300), nn.Tanh(), nn.Linear(300, 4))
    assert model[0].weight.numel() >= grouped.DOT_ABOVE and model[2].weight.numel() >= grouped.DOT_ABOVE
    x = torch.randn(64, 600) * 3
    with probes.attach(model) as session:
        model(x).pow(2).mean().backward()
    records = by_name(session.collect())
    for name in ("0", "2", "4"):
        layer = model.get_submodule(name)
        expected = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in layer.parameters()))
        close(records[name].gradient.param_norm, expected, rel=1e-5)


def test_large_channels_last_gradients_are_not_flattened_by_a_copy(monkeypatch):
    """A channels_last conv gradient is not contiguous: it stays in `_foreach_norm` (which reads
    it in place) instead of taking the dot path, whose reshape would copy it every backward."""
    from probes import grouped

    torch.manual_seed(12)
    conv = nn.Conv2d(128, 64, 3).to(memory_format=torch.channels_last)  # 73728 weights
    assert conv.weight.numel() >= grouped.DOT_ABOVE
    took_dot = []
    monkeypatch.setattr(grouped, "norm_of", lambda t: took_dot.append(t.shape) or t.norm())
    x = torch.randn(2, 128, 6, 6).to(memory_format=torch.channels_last)
    with probes.attach(conv) as session:
        conv(x).pow(2).mean().backward()
    assert not conv.weight.grad.is_contiguous()
    assert took_dot == []
    expected = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in conv.parameters()))
    close(by_name(session.collect())[""].gradient.param_norm, expected, rel=1e-5)
