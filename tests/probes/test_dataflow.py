"""`input_from`: which probed layer produced each layer's input, through dropout and reshapes."""

from __future__ import annotations

import torch
from torch import nn

import probes


class Attention(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return self.out(weights @ v)


def _flow(model: nn.Module, x: torch.Tensor) -> dict[str, str | None]:
    with probes.attach(model) as session:
        model(x)
    return {r.name: r.input_from for r in session.collect()}


def test_a_chain_through_activations_dropout_and_reshapes():
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(8, 8), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2)
    )
    assert _flow(model, torch.randn(3, 4)) == {"0": "", "1": "0", "3": "1", "4": "3", "6": "4"}


def test_parallel_branches_read_the_same_producer():
    model = nn.Sequential(nn.Linear(8, 8), Attention())
    flow = _flow(model, torch.randn(2, 5, 8))
    assert flow["1.query"] == flow["1.key"] == flow["1.value"] == "0"
    assert flow["1.out"] == ""  # a matmul no probe sees


def test_functional_activation_in_the_flow():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).view(-1, 4))

    assert _flow(Net(), torch.randn(3, 4)) == {"a": "", "relu()": "a", "b": "relu()"}
