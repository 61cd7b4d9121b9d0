"""Real inputs are not standardised.

## What it detects
The user's real inputs (from `--inputs`, or the archive's own example inputs) are far from zero
mean and unit variance: raw 0-255 pixels, physical units, a large constant offset.

## Why it matters
Every init scheme assumes inputs of roughly unit scale. Inputs with a std of 60 make the first
layer's pre-activations 60x too large (saturating sigmoid/tanh, inflating the initial loss, making
the learning rate effectively 3600x larger for the first layer); a large offset makes all first-layer
units move together, which slows gradient descent down.

## How it is detected
For each real, floating-point input: its std above `max_std` (5) or below `min_std` (0.05), or its
mean further than `max_abs_mean` (2) standard deviations from zero (or, for a constant input, any
non-zero mean). Synthetic inputs (made by `--input-shape`) are standard normal by construction and
integer token ids are categorical; neither is judged.

Severity: warning: training works, more slowly and with a smaller usable learning rate.

## Example
An MLP fed `120 + 60 * torch.randn(32, 64)` (like unscaled pixels).

## Fixes
`normalize-inputs`, then `batch-norm` as the first layer when the inputs cannot be changed.

## Options
`max_std`, `min_std`, `max_abs_mean`.

## References
- LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998 (inputs: zero mean, similar variance).
- AWS SageMaker Debugger, CheckInputImages (|mean| > 0.2); DeepDiagnosis and UMLAUT ([-1, 1] range).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, target
from diagnose.checks._model import DECADES, Measure
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence, InputStats

ID = "unnormalized-inputs"
# Images in [0, 1] (std ~0.3) train fine with default inits; 0-255 pixels (std ~60) do not. 5 sits
# between with margin both ways. DeepDiagnosis/UMLAUT's "outside [-1, 1]" would flag standardised
# data itself (its values reach +-3), so we judge scale and offset instead of range.
MAX_STD = 5.0
# Below 0.05 the first layer sees a near-constant input: a 20x too-small signal.
MIN_STD = 0.05
# An offset beyond two standard deviations dominates the signal. [0, 1] pixels sit at ~1.5.
MAX_ABS_MEAN = 2.0

THRESHOLDS: dict[str, float] = {"max_std": MAX_STD, "min_std": MIN_STD, "max_abs_mean": MAX_ABS_MEAN}


def unscaled(stats: InputStats, thresholds: Mapping[str, float]) -> str | None:
    """Why this input is not standardised, in words, or None when it is fine or cannot be judged."""
    if stats.synthetic or stats.integer or stats.mean is None or stats.std is None:
        return None
    mean, std = stats.mean, stats.std
    if not (math.isfinite(mean) and math.isfinite(std)):
        return None  # non-finite inputs are the non-finite check's finding
    if std > thresholds["max_std"]:
        return f"std {std:.3g} (mean {mean:.3g})"
    if std < thresholds["min_std"]:
        if std == 0.0:
            return f"constant value {mean:.3g}"
        return f"std {std:.3g} (mean {mean:.3g})"
    if abs(mean) > thresholds["max_abs_mean"] * std:
        return f"mean {mean:.3g} is {abs(mean) / std:.1f} standard deviations from zero"
    return None


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    problems = [(s, unscaled(s, thresholds)) for s in evidence.inputs]
    problems = [(s, why) for s, why in problems if why is not None]
    if not problems:
        return []
    first, why = problems[0]
    return [
        Finding(
            id=ID,
            severity=Severity.WARNING,
            title="Inputs are not standardised",
            message=f"input {first.name} has {why}; expected zero mean and unit variance",
            layers=(),
            evidence={
                "input": first.name,
                "mean": first.mean,
                "std": first.std,
                "min": first.min,
                "max": first.max,
                "unscaled_inputs": len(problems),
            },
        )
    ]


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("normalize-inputs", "batch-norm")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    choices = [Choice("normalize-inputs", target(context))]
    if not context.has_norm:
        first = [r.name for r in context.weighted[:1]]
        choices.append(Choice("batch-norm", target(context, first), "If the inputs cannot be changed, normalise inside the model."))
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    name = finding.evidence.get("input")
    for stats in evidence.inputs:
        if (name is None or stats.name == name) and stats.std is not None:
            return Measure("input_std", stats.std, DECADES)
    return Measure("input_std", None, DECADES)
