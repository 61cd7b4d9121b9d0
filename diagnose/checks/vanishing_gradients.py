"""Gradients vanish toward the input.

## What it detects
The gradient that backpropagation carries to each weighted layer shrinks by orders of magnitude from
the last layer to the first, so the layers near the input barely learn.

## Why it matters
Each layer multiplies the backward signal by its weights and by its activation's slope. When that
product stays below one (sigmoid's slope is at most 0.25; an init too small for ReLU halves the
variance per layer), the shrinkage compounds with depth: the first layers of a deep stack get
updates millions of times smaller than the last ones and stay close to random, while the top layers
fit noise on top of them.

## How it is detected
For every trainable weighted layer (linear, conv, recurrent, attention, embedding) the probes
measure the norm of dLoss/d(output) over the whole output at initialisation. The norm, not the
per-element RMS, because under a proper fan-in init the norm stays level through layers of any
width. The check fits a line through log10(norm) over the layers in execution order and reads off
the change from the last layer to the first; it fires when both that fitted change and the plain
first/last ratio fall below `ratio` (default 1e-3, AUTOTRAINER's beta_1). At least `min_layers`
weighted layers are needed to speak of a trend. Residual and normalised networks keep the flow level
and do not fire.

## Example
Glorot & Bengio's deep sigmoid network: `nn.Sequential` of six `Linear(64, 64)` + `Sigmoid`
layers with weights drawn from U[-1/sqrt(n), 1/sqrt(n)]: the gradient reaching the first layer is
about 1e-5x the one at the head.

## Fixes
`relu` (with `he-init`) for saturating activations, `he-init` / `glorot-init` when the init is
mis-scaled, `batch-norm`, `selu` for a plain dense stack, `residual-connections` for very deep
stacks.

## Options
`ratio` (fire below this first/last change), `min_layers`.

## References
- Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural networks", 2010.
- Zhang et al., "AUTOTRAINER", ICSE 2021 (vanishing ratio 1e-3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._signal import fmt_ratio, gradient_flow, log_linear_change
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "vanishing-gradients"
# AUTOTRAINER's beta_1: a first/last gradient ratio of 1e-3 means three orders of magnitude lost.
# Our healthy zoo (ResNet, transformers, LSTM, GPT-2, SELU, tanh+Glorot, small ReLU MLPs) stays
# above 0.06; the sick ones (deep sigmoid, 30-layer ReLU+Xavier) fall to ~1e-5: two orders of margin
# on both sides.
RATIO = 1e-3
# A trend needs at least three points; with two layers a single wide or narrow layer decides it.
MIN_LAYERS = 3

THRESHOLDS: dict[str, float] = {"ratio": RATIO, "min_layers": MIN_LAYERS}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    layers, norms = gradient_flow(evidence.layers)
    if len(norms) < max(int(thresholds["min_layers"]), 2):
        return []
    ratio_first_last = norms[0] / norms[-1]
    fitted = 1.0 / log_linear_change(norms)
    if ratio_first_last > thresholds["ratio"] or fitted > thresholds["ratio"]:
        return []
    first, last = layers[0].name, layers[-1].name
    return [
        Finding(
            id=ID,
            severity=Severity.ERROR,
            title="Gradients vanish toward the input",
            message=(
                f"gradient norm falls {fmt_ratio(ratio_first_last)} from {last} to {first} "
                f"over {len(layers)} weighted layers"
            ),
            layers=tuple(r.name for r in layers),
            evidence={
                "ratio_first_last": ratio_first_last,
                "fitted_ratio": fitted,
                "first_gradient_norm": norms[0],
                "last_gradient_norm": norms[-1],
                "weighted_layers": len(layers),
            },
        )
    ]
