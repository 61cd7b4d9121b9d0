"""Update ratios of large parameters are estimated from a fixed sample, within the documented bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import probes
from probes.updates import SAMPLE_BLOCK, SAMPLE_BLOCKS, SUBSAMPLE_ABOVE, measured_view

K = SAMPLE_BLOCKS * SAMPLE_BLOCK
BOUND = 4 * math.sqrt(2 / K)  # four relative standard errors of a squared norm (docstring)


def exact_ratio(before, after) -> float:
    delta = math.sqrt(sum((a - b).double().square().sum().item() for a, b in zip(after, before)))
    return delta / math.sqrt(sum(b.double().square().sum().item() for b in before))


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_sampled_update_ratio_is_within_the_bound(optimizer_name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    assert model[0].weight.numel() > SUBSAMPLE_ABOVE >= model[2].weight.numel()
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.1) if optimizer_name == "sgd"
                 else torch.optim.Adam(model.parameters(), lr=1e-3))
    x, y = torch.randn(64, 512), torch.randint(0, 10, (64,))
    exact = []
    with probes.attach(model) as session:
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            before = [[p.detach().clone() for p in layer.parameters()] for layer in (model[0], model[2])]
            optimizer.step()
            exact.append([exact_ratio(b, list(layer.parameters())) for b, layer in zip(before, (model[0], model[2]))])
    records = {r.name: r for r in session.collect()}
    for step, (big, small) in enumerate(exact):
        assert records["0"].update_ratios[step] == pytest.approx(big, rel=BOUND)
        assert records["0"].update_ratios[step] != pytest.approx(big, rel=1e-9)  # it is a sample
        assert records["2"].update_ratios[step] == pytest.approx(small, rel=1e-6)  # small: exact


def test_sample_covers_the_start_and_the_end_of_the_tensor():
    weight = torch.arange(100_000, dtype=torch.float32)
    view, scale = measured_view(weight)
    assert view.numel() == K and scale == pytest.approx(100_000 / K)
    assert view[0, 0].item() == 0 and 99_999 - SAMPLE_BLOCKS < view[-1, -1].item() <= 99_999
    small, one = measured_view(torch.ones(SUBSAMPLE_ABOVE))
    assert small.numel() == SUBSAMPLE_ABOVE and one == 1.0
