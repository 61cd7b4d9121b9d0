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


class LateBranch(nn.Module):
    """`second` runs only once `use_second` is set: it is first seen in a later forward."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 4)
        self.use_second = False

    def forward(self, x):
        h = torch.relu(self.first(x))
        return self.second(h) if self.use_second else h


def test_a_layer_first_seen_in_a_later_forward_gets_its_source_on_its_next_call():
    """The flow is tracked in the first forward and after any forward that found new layers (a
    training step does not pay for it); a late layer's source is unknown (None) until then."""
    model = LateBranch()
    x = torch.randn(3, 4)
    with probes.attach(model) as session:
        for _ in range(3):
            model(x)
        model.use_second = True
        model(x)  # forward 4 does not track the flow: forward 3 found nothing new
        assert {r.name: r.input_from for r in session.collect()}["second"] is None
        model(x)  # forward 5 does, because forward 4 found `second`
        flow = {r.name: r.input_from for r in session.collect()}
    assert flow == {"first": "", "relu()": "first", "second": "relu()"}
