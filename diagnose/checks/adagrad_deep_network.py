"""AdaGrad on a deep network.

## What it detects
The short run uses AdaGrad on a network with many weighted layers.

## Why it matters
AdaGrad divides each step by the square root of the sum of every squared gradient seen so far. That
sum only grows, so the effective learning rate shrinks toward zero as training goes on: fine for a
convex problem or a shallow model that converges quickly, but a deep network usually stops learning
long before it gets anywhere. RMSProp and Adam keep a decaying average instead, so their step size
does not vanish.

## How it is detected
Needs `--steps` > 0 (the run's optimizer is the one judged). Fires when the optimizer is AdaGrad and
the model has at least `min_weighted_layers` (5) trainable weighted layers. The evidence includes
how much the mean update ratio fell from the first to the last step of the run.

Severity: warning: it trains, with a step size that decays toward zero.

## Example
`diagnose check model.py:build --steps 20 --optimizer adagrad` on a 10-layer MLP.

## Fixes
`change-optimizer` (Adam/AdamW, or SGD with momentum), `lr-schedule`.

## Options
`min_weighted_layers`.

## References
- Duchi, Hazan & Singer, "Adaptive Subgradient Methods", JMLR 2011.
- Géron, "Hands-On Machine Learning", ch. 11 (AdaGrad often stops too early on neural networks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, choose
from diagnose.checks._signal import flow_layers, loss_ratio_metric, update_ratios
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "adagrad-deep-network"
# Five weighted layers: past a small MLP, where AdaGrad's shrinking step starts to bite before the
# network has converged.
MIN_WEIGHTED_LAYERS = 5

THRESHOLDS: dict[str, float] = {"min_weighted_layers": MIN_WEIGHTED_LAYERS}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    run = evidence.run
    if run.steps == 0 or run.optimizer.lower() != "adagrad":
        return []
    depth = len(flow_layers(evidence.layers))
    if depth < thresholds["min_weighted_layers"]:
        return []
    numbers: dict[str, float | int | str | None] = {"weighted_layers": depth, "lr": run.lr, "steps": run.steps}
    decay = ""
    series = [r.update_ratios for r, _ in update_ratios(evidence.run_layers) if len(r.update_ratios) >= 2]
    firsts = [s[0] for s in series if s[0] > 0]
    lasts = [s[-1] for s in series if s[0] > 0]
    if firsts:
        fall = (sum(lasts) / len(lasts)) / (sum(firsts) / len(firsts))
        numbers["update_ratio_last_over_first"] = fall
        decay = f"; its updates already shrank to {fall:.2g}x of the first step's within {run.steps} steps"
    return [Finding(
        id=ID, severity=Severity.WARNING, title="AdaGrad's step size decays on a deep network",
        message=f"AdaGrad's effective learning rate only decreases, and this network has {depth} weighted layers{decay}",
        evidence=numbers,
    )]


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("change-optimizer", "lr-schedule")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    return choose(context, FIXES)


# AdaGrad's decaying steps show in the loss the run reaches: a fix is verified on it.
metric = loss_ratio_metric
