"""SELU is used without what self-normalisation needs.

## What it detects
A network with SELU activations that breaks one of the conditions under which SELU keeps each
layer's outputs at zero mean and unit variance on its own: weights not LeCun-normal
(std sqrt(1/fan_in)), normalisation layers in the stack, plain `Dropout` instead of `AlphaDropout`,
recurrent layers, or real inputs that are not standardised.

## Why it matters
SELU's self-normalising property is a fixed point of the mean/variance map of a dense layer with
LeCun-normal weights fed by standardised inputs. Off that recipe the fixed point does not hold:
variances drift layer after layer, and the network loses the benefit it was built for (deep plain
stacks that train without batch norm). BatchNorm between SELU layers is redundant at best.

## How it is detected
When any activation is SELU: layers feeding a SELU whose weight std differs from LeCun's by more
than the `tolerance` factor (1.25); any normalisation or recurrent layer in the model; any
`Dropout` module; any real input flagged by the `unnormalized-inputs` rules or with a std outside
[1/`input_std_factor`, `input_std_factor`] = [0.5, 2] (TheDeepChecker's band).

Severity: warning: the network trains, without the self-normalisation it was built for; info
when only the structure (a norm layer, plain dropout, a recurrent layer) or the inputs depart from
the recipe and the short run trains normally: batch norm between SELU layers is
redundant, not harmful (measured on the zoo's SELU+BatchNorm stack: loss 0.99 after 20 steps,
against 1.16 for the pure recipe). Weights off LeCun's scale stay a warning: the fixed point
itself fails there.

## Example
`nn.Sequential(nn.Linear(32, 64), nn.SELU(), ...)` left at PyTorch's default init (0.58x LeCun),
or with `nn.BatchNorm1d` between the layers.

## Fixes
`lecun-init`, `selu` (the full recipe: plain dense stack, AlphaDropout), `normalize-inputs`.

## Options
`tolerance`, `input_std_factor`.

## References
- Klambauer, Unterthiner, Mayr & Hochreiter, "Self-Normalizing Neural Networks", NeurIPS 2017.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks import unnormalized_inputs
from diagnose.checks._advice import AdviceContext, Choice, misscaled, target
from diagnose.checks._signal import (
    INIT_TOLERANCE,
    by_index,
    loss_ratio_metric,
    relaxed_when_trained,
    std_ratio,
)
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "selu-misconfigured"
# Same band as poor-initialization: PyTorch's default init is 0.58x LeCun under SELU.
TOLERANCE = INIT_TOLERANCE
# SELU's fixed point attracts variances in roughly [0.5, 2]; TheDeepChecker uses the same band for
# healthy activation std.
INPUT_STD_FACTOR = 2.0

THRESHOLDS: dict[str, float] = {"tolerance": TOLERANCE, "input_std_factor": INPUT_STD_FACTOR}

DROPOUT_TYPES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    layers = by_index(evidence.layers)
    if not any(r.activation_kind == "selu" for r in layers):
        return []
    problems: list[tuple[str, tuple[str, ...]]] = []
    numbers: dict[str, float | int | str | None] = {}

    tolerance = thresholds["tolerance"]
    misinit = [
        r for r in layers
        if r.followed_by == "selu" and std_ratio(r) is not None and not (1.0 / tolerance <= std_ratio(r) <= tolerance)
    ]
    if misinit:
        ratio = std_ratio(misinit[0])
        problems.append((f"{len(misinit)} layers feeding SELU are not LeCun-normal ({ratio:.2g}x in {misinit[0].name})",
                         tuple(r.name for r in misinit)))
        numbers["not_lecun_layers"] = len(misinit)
        numbers["std_ratio"] = ratio

    norms = [r for r in layers if r.kind == "norm"]
    if norms:
        problems.append((f"normalisation layers in a SELU stack ({norms[0].type} {norms[0].name})", tuple(r.name for r in norms)))
        numbers["norm_layers"] = len(norms)
    recurrent = [r for r in layers if r.kind == "recurrent"]
    if recurrent:
        problems.append((f"recurrent layers in a SELU network ({recurrent[0].name})", tuple(r.name for r in recurrent)))
        numbers["recurrent_layers"] = len(recurrent)
    dropouts = [r for r in layers if r.type in DROPOUT_TYPES]
    if dropouts:
        problems.append((f"plain Dropout instead of AlphaDropout ({dropouts[0].name})", tuple(r.name for r in dropouts)))
        numbers["dropout_layers"] = len(dropouts)

    factor = thresholds["input_std_factor"]
    for stats in evidence.inputs:
        if stats.synthetic or stats.integer or stats.std is None or stats.mean is None:
            continue
        if not (math.isfinite(stats.std) and math.isfinite(stats.mean)):
            continue
        why = unnormalized_inputs.unscaled(stats, unnormalized_inputs.THRESHOLDS)
        off_band = not (1.0 / factor <= stats.std <= factor) or abs(stats.mean) > 1.0
        if why is not None or off_band:
            problems.append((f"input {stats.name} is not standardised (mean {stats.mean:.3g}, std {stats.std:.3g})", ()))
            numbers["input_mean"] = stats.mean
            numbers["input_std"] = stats.std
            break

    if not problems:
        return []
    layer_names: list[str] = []
    for _, names in problems:
        layer_names.extend(n for n in names if n not in layer_names)
    numbers["problems"] = len(problems)
    finding = Finding(
        id=ID,
        severity=Severity.WARNING,
        title="SELU is not set up to self-normalise",
        message="; ".join(text for text, _ in problems),
        layers=tuple(layer_names),
        evidence=numbers,
    )
    if "not_lecun_layers" in numbers:
        return [finding]  # the fixed point itself fails: variances drift whatever the run shows
    # The structure departs from the recipe (a norm layer, plain dropout, a recurrent layer), or the
    # inputs are not standardised: batch norm between SELUs is redundant, not harmful, and measured
    # it trains as well or better than the pure recipe; unscaled inputs even fit one batch faster.
    # The short run judges.
    return [relaxed_when_trained(evidence, finding)]


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("lecun-init", "selu", "normalize-inputs")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    evidence = finding.evidence
    choices: list[Choice] = []
    if evidence.get("not_lecun_layers"):
        feeders = [r for r in context.layers if r.weight is not None and r.followed_by == "selu"]
        off = misscaled(feeders, "small") + misscaled(feeders, "large")
        choices.append(Choice("lecun-init", target(context, [r.name for r in off or feeders], activation="selu"),
                              "The layers feeding SELU are not LeCun-normal."))
    if evidence.get("norm_layers") or evidence.get("dropout_layers") or evidence.get("recurrent_layers"):
        choices.append(Choice("selu", target(context), "Self-normalisation needs a plain dense stack with AlphaDropout only."))
    if "input_std" in evidence:
        choices.append(Choice("normalize-inputs", target(context), "SELU's fixed point assumes standardised inputs."))
    return choices


# The check fires on any of several independent conditions (init, structure, inputs) with no one
# number between them: a fix is verified on the short-run loss ratio.
metric = loss_ratio_metric
