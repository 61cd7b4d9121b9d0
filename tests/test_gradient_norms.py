"""The short run records each step's total gradient norm, unclipped: checked against plain torch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import diagnose

STEPS, LR = 6, 0.05


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(32, 8, generator=generator), torch.randn(32, 3, generator=generator)


def _reference_norms(model: nn.Module, x, y, clip: float | None = None) -> list[float]:
    """Plain SGD on MSE, the norm computed as sqrt(sum of squared gradient entries) before clipping."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    norms = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        norms.append(math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters())))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return norms


def test_gradient_norms_match_plain_torch():
    x, y = _data()
    model = _model()
    report = diagnose.check(model, x, targets=y, loss="mse", steps=STEPS, lr=LR)
    assert report.evidence.loss.gradient_norms == pytest.approx(_reference_norms(model, x, y), rel=1e-5)
    assert report.to_dict()["loss"]["gradient_norms"] == pytest.approx(_reference_norms(model, x, y), rel=1e-5)


def test_norms_are_recorded_before_clipping_and_clipping_still_applies():
    from diagnose.loading.inputs import make_batch
    from diagnose.run import Workload, measure

    x, y = _data()
    model = _model()
    clip = 0.5 * _reference_norms(model, x, y)[0]  # bites on every step
    batch = make_batch((x,), {}, targets=y, origin="given", synthetic=False, device="cpu")
    workload = Workload(batch=batch, loss="mse", steps=STEPS, optimizer="sgd", lr=LR, seed=0,
                        device=torch.device("cpu"), clip_grad_norm=clip)
    measured = measure(model, workload)
    expected = _reference_norms(model, x, y, clip=clip)
    assert measured.loss.gradient_norms == pytest.approx(expected, rel=1e-5)
    assert max(measured.loss.gradient_norms) > clip  # unclipped values, not the clipped ones


def test_no_run_no_norms_and_a_diverged_run_stops_with_its_loss():
    x, y = _data()
    assert diagnose.check(_model(), x, targets=y, loss="mse", steps=0).evidence.loss.gradient_norms == ()
    report = diagnose.check(_model(), x, targets=y * 1e3, loss="mse", steps=STEPS, lr=1e3)
    loss = report.evidence.loss
    finite_steps = sum(math.isfinite(v) for v in loss.history)
    assert len(loss.gradient_norms) == finite_steps  # no backward after the non-finite loss


def test_the_run_leaves_the_parameter_counts_alone():
    x, y = _data()
    model = _model()
    report = diagnose.check(model, x, targets=y, loss="mse", steps=STEPS)
    count = sum(p.numel() for p in model.parameters())
    assert report.evidence.model.trainable_parameters == count == report.evidence.model.parameters
