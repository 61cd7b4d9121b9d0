"""A NaN reaching a ReLU unit must not make it look dead: its maximum is unknown, not <= 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import probes


def mlp_with_one_dead_unit() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():  # unit 0 of the first ReLU never fires on finite input
        model[0].weight[0].zero_()
        model[0].bias[0] = -1.0
    return model


def batch(nan: bool) -> torch.Tensor:
    x = torch.randn(32, 784)
    if nan:
        x[0, 5] = float("nan")  # one element: after the Linear, all of row 0 is NaN
    return x


def clean_dead_share(model: nn.Sequential, x: torch.Tensor) -> float:
    with torch.no_grad():
        y = model[1](model[0](x))
    return 1.0 - (y > 0).any(dim=0).double().mean().item()


def relu_record(model, batches):
    with probes.attach(model) as session:
        for x in batches:
            model(x).sum().backward()
    return next(r for r in session.collect() if r.name == "1")


def test_one_nan_element_does_not_make_every_unit_dead():
    model = mlp_with_one_dead_unit()
    record = relu_record(model, [batch(nan=True)])
    assert record.activation.nonfinite == 256  # the NaN row is still reported
    assert record.activation.dead_fraction == 0.0  # unknown units count alive (was 1.0)
    assert record.activation.dead_fraction_last == 0.0


def test_a_nan_forward_drops_out_of_the_session_maximum():
    model = mlp_with_one_dead_unit()
    torch.manual_seed(1)
    clean = batch(nan=False)
    expected = clean_dead_share(model, clean)
    assert expected == pytest.approx(1 / 256)  # the planted dead unit (and no other) is seen

    nan_first = relu_record(model, [batch(nan=True), clean])
    assert nan_first.activation.dead_fraction == pytest.approx(expected)
    assert nan_first.activation.dead_fraction_last == pytest.approx(expected)

    nan_last = relu_record(model, [clean, batch(nan=True)])
    assert nan_last.activation.dead_fraction == pytest.approx(expected)
    assert nan_last.activation.dead_fraction_last == 0.0  # that forward alone says nothing
