"""TorchScript models (scripted, traced, saved and loaded): no hooks run there, so probes read
weights, parameter gradients and update ratios only, and say so in `Session.limitations`."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import probes

# torch.jit is deprecated upstream; TorchScript archives still exist and must still load.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def eager_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def scripted(model: nn.Module, how: str) -> torch.jit.ScriptModule:
    if how == "script":
        return torch.jit.script(model)
    if how == "trace":
        return torch.jit.trace(model, torch.randn(2, 16))
    buffer = io.BytesIO()  # save + load, as the CLI loads a .pt TorchScript archive
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def grad_norms(model: nn.Module, x: torch.Tensor) -> list[float]:
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    return [
        math.sqrt(sum(p.grad.double().square().sum().item() for p in layer.parameters()))
        for layer in (model[0], model[2])
    ]


def hooks_left(model: nn.Module) -> int:
    return sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())


@pytest.mark.parametrize("how", ["script", "trace", "load"])
def test_scripted_model_gets_weight_and_gradient_records(how):
    eager = eager_mlp()
    model = scripted(copy.deepcopy(eager), how)
    x = torch.randn(8, 16)
    with probes.attach(model) as session:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
    records = session.collect()
    assert [(r.name, r.type, r.kind, r.index) for r in records] == [
        ("0", "Linear", "linear", 0), ("2", "Linear", "linear", 1)
    ]
    expected_grads = grad_norms(eager, x)
    for record, layer, grad in zip(records, (eager[0], eager[2]), expected_grads):
        weight = layer.weight.detach().double()
        assert record.weight.std == pytest.approx(weight.std(correction=0).item(), rel=1e-5)
        assert record.weight.mean == pytest.approx(weight.mean().item(), rel=1e-5, abs=1e-9)
        assert record.weight.bias_mean == pytest.approx(layer.bias.double().mean().item(), rel=1e-5)
        assert record.gradient.param_norm == pytest.approx(grad, rel=1e-5)
        assert record.gradient.backward_calls == 1
        assert record.parameters == record.trainable_parameters == layer.weight.numel() + layer.bias.numel()
        assert record.activation.mean is None and record.activation.dead_fraction is None
        assert record.gradient.output_rms is None and record.calls == 0
    # A scripted (or traced) Sequential runs its children in order: followers are known.
    assert records[0].followed_by == "relu" and records[0].weight.scheme == "he"
    assert records[1].followed_by == "none"
    assert len(session.limitations) == 1 and "TorchScript" in session.limitations[0]
    assert hooks_left(model) == 0


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(16, 16)

    def forward(self, x):
        return torch.sigmoid(self.inner(x))


def test_unknown_follower_in_script_code_judges_no_init_scheme():
    torch.manual_seed(0)
    model = torch.jit.script(nn.Sequential(nn.Linear(16, 16), Block()))
    with probes.attach(model) as session:
        model(torch.randn(4, 16)).sum().backward()
    records = session.collect()
    assert [r.name for r in records] == ["0", "1.inner"]
    for record in records:  # what runs after either layer is script code we cannot see into
        assert record.followed_by is None
        assert record.weight.scheme is None and record.weight.expected_std is None
        assert record.weight.std > 0 and record.gradient.param_norm > 0


def test_update_ratios_in_script_code_match_a_manual_snapshot():
    model = torch.jit.script(eager_mlp())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(8, 16)
    with probes.attach(model) as session:
        optimizer.zero_grad()
        model(x).square().mean().backward()
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
    after = list(model.parameters())
    records = session.collect()
    for record, pair in zip(records, ((0, 1), (2, 3))):
        delta = math.sqrt(sum((after[i] - before[i]).double().square().sum().item() for i in pair))
        norm = math.sqrt(sum(before[i].double().square().sum().item() for i in pair))
        assert record.update_ratios == (pytest.approx(delta / norm, rel=1e-5),)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Linear(16, 32)
        self.body = torch.jit.script(nn.Sequential(nn.Linear(32, 32), nn.Tanh()))
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(torch.relu(self.body(torch.relu(self.stem(x)))))


def test_script_submodule_is_skipped_and_eager_layers_are_probed_as_usual():
    model = Mixed()
    x = torch.randn(8, 16)
    with probes.attach(model) as session:
        model(x).square().mean().backward()
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
    records = {r.name: r for r in session.collect()}
    assert {"stem", "relu()", "relu()#2", "body.0", "head"} <= set(records)
    assert "body.1" not in records  # a scripted Tanh has no parameters and reports no running
    assert records["stem"].activation.count == 2 * 8 * 32
    assert records["relu()"].activation.dead_fraction is not None
    assert records["head"].gradient.output_rms is not None
    body = records["body.0"]
    assert body.type == "Linear" and body.activation.count == 0 and body.gradient.output_rms is None
    assert body.followed_by == "tanh"  # the scripted Sequential's order
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    expected = math.sqrt(sum(p.grad.double().square().sum().item() for p in model.body[0].parameters()))
    assert body.gradient.param_norm == pytest.approx(expected, rel=1e-5)  # .grad of each backward
    assert body.gradient.backward_calls == 2
    assert body.index > records["relu()#2"].index  # never seen running: after executed layers
    assert session.limitations == (session.limitations[0],) and "body" in session.limitations[0]
    assert hooks_left(model) == 0
    assert torch._C._len_torch_function_stack() == 0


def test_eager_model_has_no_limitations():
    model = eager_mlp()
    with probes.attach(model) as session:
        model(torch.randn(2, 16)).sum().backward()
    assert session.limitations == ()
