"""The short run's judgement "trains normally", which relaxes one-pass symptoms to info."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from diagnose.checks._signal import trained_normally
from diagnose.loading.loss import label_entropy

from .helpers import evidence


def _run(history, floor=None):
    ev = evidence(steps=len(history) - 1, history=tuple(history))
    return replace(ev, loss=replace(ev.loss, constant_floor=floor))


def test_label_entropy_is_the_loss_of_the_best_constant_prediction():
    labels = torch.tensor([0, 0, 1, 2])
    shares = torch.tensor([0.5, 0.25, 0.25])
    assert label_entropy(labels, 10) == pytest.approx(float(-(shares * shares.log()).sum()))
    # the best constant logits are the log-frequencies: their cross-entropy is exactly that entropy
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25] + [1e-12] * 7)).expand(4, 10)
    assert torch.nn.functional.cross_entropy(logits, labels).item() == pytest.approx(label_entropy(labels, 10), rel=1e-5)
    assert label_entropy(torch.arange(10), 10) == pytest.approx(math.log(10))  # uniform: chance level


def test_a_loss_at_the_label_prior_is_not_training_even_below_chance():
    # 60 -> 2.25: below ln 10 = 2.30, but no lower than predicting the batch's label frequencies
    assert trained_normally(_run([60.0, 10.0, 2.25], floor=2.25))[0] is False
    assert trained_normally(_run([60.0, 10.0, 2.0], floor=2.25))[0] is True
    assert trained_normally(_run([60.0, 10.0, 2.25], floor=None))[0] is True  # floor unknown: chance decides
