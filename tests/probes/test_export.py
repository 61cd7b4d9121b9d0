"""A torch.export archive, rebuilt by unflatten, probes like the eager model it came from."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import probes


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        h = F.max_pool2d(h, 2).flatten(1)
        h = torch.tanh(self.fc(h))
        return self.out(F.relu(h))


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        h = F.gelu(self.norm(self.fc(x)))
        return x + torch.sigmoid(h) * F.silu(h)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.ModuleList([Block(8), Block(8)])
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.act(self.inp(x))
        for block in self.blocks:
            x = block(x)
        return self.head(F.leaky_relu(x, 0.2))


def deep_tanh() -> nn.Module:
    layers = []
    for _ in range(5):
        layers += [nn.Linear(7, 7), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(7, 2))


CASES = {
    "conv-bn-inplace-relu": (ConvNet, (6, 3, 8, 8), "eval"),
    "functional-blocks": (Functional, (5, 6), "train"),
    "deep-tanh": (deep_tanh, (9, 7), "train"),
}


def probe(model, x):
    with probes.attach(model) as session:
        model(x).pow(2).sum().backward()
    return session.collect()


def exported_twin(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Save and reload as a .pt2 archive, then unflatten: what `diagnose check model.pt2` sees."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        return torch.export.unflatten(torch.export.load(buffer))


@pytest.mark.parametrize("case", CASES)
def test_exported_model_reports_like_the_eager_model(case):
    build, shape, mode = CASES[case]
    torch.manual_seed(0)
    eager = build().train(mode == "train")
    x = torch.randn(*shape)
    exported = exported_twin(eager, x)
    expected = probe(eager, x)
    actual = probe(exported, x)

    assert [(r.name, r.type, r.kind, r.source, r.calls) for r in actual] == [
        (r.name, r.type, r.kind, r.source, r.calls) for r in expected
    ]
    for a, e in zip(actual, expected):
        assert a.output_shape == e.output_shape
        assert a.followed_by == e.followed_by
        assert a.activation.mean == pytest.approx(e.activation.mean, rel=1e-4, abs=1e-6)
        assert a.activation.std == pytest.approx(e.activation.std, rel=1e-4, abs=1e-6)
        assert a.activation.dead_fraction == e.activation.dead_fraction
        assert a.activation.saturated_fraction == e.activation.saturated_fraction
        assert a.gradient.output_rms == pytest.approx(e.gradient.output_rms, rel=1e-4, abs=1e-9)
        if e.gradient.param_norm is None:
            assert a.gradient.param_norm is None
        else:
            assert a.gradient.param_norm == pytest.approx(e.gradient.param_norm, rel=1e-4)
        if e.weight is None:
            assert a.weight is None
        else:
            assert (a.weight.scheme, a.weight.fan_in, a.weight.fan_out) == (
                e.weight.scheme, e.weight.fan_in, e.weight.fan_out)
            assert a.weight.std == pytest.approx(e.weight.std, rel=1e-6)
    if case != "deep-tanh":  # the others call activations as functions; those must survive export
        assert any(r.source == "function" for r in actual)
