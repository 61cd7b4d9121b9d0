"""A batch grown from a tiny example is sized by the model's FLOPs, not fixed at 32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diagnose.config import DEFAULT_BATCH_SIZE
from diagnose.loading import load_model
from diagnose.loading import cost
from diagnose.loading.inputs import TINY_EXAMPLE_BATCH, prepare_batch


def test_forward_flops_of_a_linear_stack_are_counted_exactly():
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    # a matmul of (n, k) by (k, m) is n*k*m multiply-adds, 2 FLOPs each
    expected = 2 * 3 * (64 * 256 + 256 * 10)
    assert cost.forward_flops(model, (torch.randn(3, 64),), {}) == expected


def test_a_forward_that_fails_has_no_count():
    assert cost.forward_flops(nn.Linear(4, 4), (torch.randn(2, 5),), {}) is None


@pytest.mark.parametrize("flops, expected", [
    (None, 32),  # not countable: the default
    (1e3, 32),  # a small MLP: the default
    (cost.RUN_FLOP_BUDGET / (cost.STEP_COST_IN_FORWARDS * cost.PASSES * 20), 20),  # exactly 20 samples fit
    (1e11, 8),  # ViT-B/16 at 224 (about 2e10 per sample) and beyond: never below the floor
])
def test_batch_is_what_the_budget_affords(flops, expected):
    assert cost.proportionate_batch(flops, smallest=8, largest=32) == expected


def test_an_expensive_tiny_example_grows_less(dynamic_export: Path, monkeypatch):
    cheap = prepare_batch(load_model(dynamic_export), seed=0)
    assert cheap.shapes[0][0] == DEFAULT_BATCH_SIZE
    # the same archive on a machine budget a thousandth the size: the floor, not 32
    monkeypatch.setattr(cost, "RUN_FLOP_BUDGET", 1.0)
    costly = prepare_batch(load_model(dynamic_export), seed=0)
    assert costly.shapes[0][0] == TINY_EXAMPLE_BATCH
