"""Host-side totals (CPU) and on-device totals (accelerators) give the same records."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import probes
from probes import _forward as forward_hooks


def run(model, batches):
    model.zero_grad(set_to_none=True)
    with probes.attach(model) as session:
        for x in batches:
            model(x).square().mean().backward()
    return session.collect()


def assert_same(a, b):
    if b is None:
        assert a is None
    else:
        assert a == pytest.approx(b, rel=1e-6, nan_ok=True)


@pytest.mark.parametrize("with_nan", [False, True])
def test_device_totals_equal_host_totals(monkeypatch, with_nan):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Hardtanh(), nn.Linear(16, 2))
    batches = [torch.randn(4, 8) * 3 for _ in range(3)]
    if with_nan:
        batches[1][0, 0] = float("nan")
    host = run(model, batches)
    monkeypatch.setattr(forward_hooks, "HOST_TOTALS_DEVICES", ())
    device = run(model, batches)
    assert len(host) == len(device) == 6
    for a, b in zip(host, device):
        for field in ("mean", "std", "saturated_fraction", "dead_fraction", "nonfinite", "count"):
            assert_same(getattr(a.activation, field), getattr(b.activation, field))
        for field in ("output_rms", "param_norm", "nonfinite"):
            assert_same(getattr(a.gradient, field), getattr(b.gradient, field))
    if with_nan:
        assert host[1].activation.nonfinite == 16 and host[1].activation.saturated_fraction is not None
