"""Activations grow along the network's depth with nothing to reset them.

## What it detects
The output scale of the weighted layers grows by orders of magnitude from the input side of the
network to the output side, across blocks rather than inside one plain stack: the signature of a
residual network whose branches are not normalised or down-weighted (a ResNet built without batch
norm, a residual MLP with full-scale branches).

## Why it matters
A residual block computes x + f(x). When f(x) has about the variance of x and nothing normalises
the sum, every block adds its variance to the stream: over L blocks the stream grows like 2^L in
variance for a ReLU branch at He init (Zhang, Dauphin & Ma 2019, Fixup; De & Smith 2020). The
logits come out huge, the initial loss is far above chance, and the first SGD steps overshoot:
ResNet-50 without batch norm goes from activations of 0.3 at the stem to ~50 in its last stage,
starts at a loss of ~10 and turns NaN within a few steps. Lowering the learning rate only hides
this; the fix is structural: normalise each block, or start each branch at zero (Fixup, SkipInit,
`zero_init_residual`) so the stream starts as the identity.

## How it is detected
The output std of every trainable linear/conv layer, in execution order, at initialisation. A
least-squares line through log10(std) gives the change from the first layer to the last; the check
fires when that fitted change and the ratio of the median std over the last quarter of the layers
to that over the first quarter both reach `ratio` (10x). Layers that feed a normalisation layer are
left out (their scale is reset there), and at least `min_layers` (8) layers are needed. When most
of the growing layers form a single plain stack, `activation-variance-explosion` is the finding and
this check stays quiet.

Healthy architectures stay level: batch/layer-norm nets reset the scale in every block, NF-ResNets
and SkipInit-style nets down-weight each branch, transformers normalise before each branch. In the
calibration corpus (docs/calibration.md) healthy nets change under 5x (ConvNeXt-T 4.5x fitted,
EfficientNet-B0 4.4x by quarters, transformers ~1x); without batch norm, torchvision's ResNet-34
changes 19-44x and ResNet-50 34-91x (both NaN by step 3 at lr 0.01), while ResNet-18 changes 2x
and trains.

Severity, judged by the short run: error when its loss turns NaN, diverges or does not fall
(the network will not train as configured), and without a run; warning when it still trains (it
trains worse, with a learning rate held down by the growth).

## Example
torchvision's `resnet50(norm_layer=lambda c: nn.Identity())`: conv outputs grow from 0.3 to ~50
along the 16 blocks.

## Fixes
`batch-norm` (normalise each branch); more skip connections are not the answer here (they are the
cause); start each branch at zero instead (`zero_init_residual=True` in torchvision, Fixup/SkipInit:
a scalar gain initialised to 0 on each branch); `gradient-clipping` only as a stopgap.

## Options
`ratio`, `min_layers`.

## References
- Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning Without Normalization", ICLR 2019.
- De & Smith, "Batch Normalization Biases Residual Blocks Towards the Identity Function in Deep
  Networks" (SkipInit), NeurIPS 2020.
- Brock et al., "Characterizing signal propagation to close the performance gap in unnormalized
  ResNets" (NF-ResNets), ICLR 2021.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, target
from diagnose.checks._model import DECADES, Measure
from diagnose.checks._signal import (
    STACK_KINDS,
    by_index,
    fmt_ratio,
    is_finite_positive,
    log_linear_change,
    plain_runs,
    run_outcome,
)
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from probes.records import LayerRecord

ID = "residual-stream-growth"
# Healthy nets of the calibration corpus stay under 5x on both measures (ConvNeXt-T 4.5x fitted,
# EfficientNet-B0 4.4x by quarters); torchvision ResNets without batch norm, whose loss turns NaN
# by step 3 at lr 0.01, grow 19-44x (ResNet-34) and 34-91x (ResNet-50); ResNet-18 without it
# grows 2x and trains. 10x sits 2x above the healthiest-looking growth and 2x below the sick.
RATIO = 10.0
# A trend needs depth: fewer layers than this cannot speak of a stream.
MIN_LAYERS = 8
# When one plain stack holds this share of the layers, the growth is that stack's (variance-explosion).
PLAIN_SHARE = 0.8

THRESHOLDS: dict[str, float] = {"ratio": RATIO, "min_layers": MIN_LAYERS}


def stream_layers(layers) -> list[LayerRecord]:
    """Trainable linear/conv layers with a measured output std whose output is not normalised next."""
    return [
        r for r in by_index(layers)
        if r.kind in STACK_KINDS and r.trainable_parameters > 0 and is_finite_positive(r.activation.std)
        and not (r.weight is not None and r.weight.normalized)
    ]


def stream_growth(layers) -> tuple[float, float, list[LayerRecord]] | None:
    """(fitted change, last-quarter/first-quarter median ratio, the layers) of output std, if measurable."""
    chosen = stream_layers(layers)
    if len(chosen) < 2:
        return None
    stds = [r.activation.std for r in chosen]
    quarter = max(1, len(stds) // 4)
    ratio = statistics.median(stds[-quarter:]) / statistics.median(stds[:quarter])
    return log_linear_change(stds), ratio, chosen


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    measured = stream_growth(evidence.layers)
    if measured is None:
        return []
    fitted, ratio, chosen = measured
    if len(chosen) < thresholds["min_layers"]:
        return []
    if not (fitted >= thresholds["ratio"] and ratio >= thresholds["ratio"]):
        return []
    names = {r.name for r in chosen}
    longest_plain = max((sum(1 for r in run if r.name in names) for run in plain_runs(evidence.layers)), default=0)
    if longest_plain >= PLAIN_SHARE * len(chosen):
        return []  # one plain stack: activation-variance-explosion's finding
    trained, outcome = run_outcome(evidence)
    ran = evidence.run.steps > 0
    severity = Severity.WARNING if trained else Severity.ERROR
    first, last = chosen[0], chosen[-1]
    return [Finding(
        id=ID,
        severity=severity,
        title="Activations grow along the residual stream",
        message=(
            f"output std grows {fmt_ratio(fitted)} from {first.name} ({first.activation.std:.3g}) to {last.name} "
            f"({last.activation.std:.3g}) across {len(chosen)} layers with no normalisation to reset it: un-normalised "
            f"residual branches add up{outcome}; normalise each block or zero-initialise each branch's last layer"
        ),
        layers=tuple(r.name for r in chosen),
        evidence={
            "fitted_ratio": fitted,
            "quarter_ratio": ratio,
            "first_std": first.activation.std,
            "last_std": last.activation.std,
            "layers": len(chosen),
            "short_run_trained": trained if ran else None,
            "log10_growth_per_layer": math.log10(fitted) / max(1, len(chosen) - 1),
        },
    )]


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("batch-norm", "gradient-clipping")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    return [
        Choice("batch-norm", target(context, list(finding.layers)),
               "Each residual branch adds its variance to the stream and nothing resets it; a norm layer after "
               "each conv (or a zero-initialised gain on each branch, as in Fixup and SkipInit) keeps the "
               "stream at the scale of its input."),
        Choice("gradient-clipping", target(context), "A stopgap while the growth is there: it bounds the first steps."),
    ]


def metric(finding: Finding, evidence: Evidence) -> Measure:
    growth = stream_growth(evidence.layers)
    return Measure("fitted_ratio", growth[0] if growth is not None else None, DECADES)
