"""Activation variance explodes with depth.

## What it detects
Along a plain stack of linear/conv layers (no normalisation between them), the standard deviation
of the layers' outputs grows by orders of magnitude from the first layer to the last.

## Why it matters
Weights that are too large for their activation multiply the signal's scale at every layer. The
top layers see huge pre-activations: logits that make the initial loss enormous, softmax and
sigmoid outputs pinned at 0 or 1, float overflow to Inf and NaN, and gradients that grow in step.

## How it is detected
The same runs as `activation-variance-collapse`; the check fires when both the last/first output
std ratio and its log-linear fit exceed `ratio` (default 100: two orders of magnitude), and reports
an error from `ratio_error` (1e4).

## Example
Ten `Linear(32, 32)` + `ReLU` layers at 3x the He std: the output std grows ~5e4x.

## Fixes
`he-init` / `glorot-init` / `lecun-init` (the scheme the activation needs), `batch-norm`,
`gradient-clipping`.

## Options
`ratio`, `ratio_error`, `min_layers`.

## References
- He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", 2015.
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (activation std outside [0.5, 2]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._signal import activation_trend, fmt_ratio, plain_runs
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "activation-variance-explosion"
# Two orders of magnitude growth over one plain run; no healthy zoo model grows at all (their
# runs shrink or stay level), a 3x-He ReLU stack grows 5e4x over ten layers.
RATIO = 1e2
# Four orders: float32 logits of that size saturate softmax completely.
RATIO_ERROR = 1e4
MIN_LAYERS = 3

THRESHOLDS: dict[str, float] = {"ratio": RATIO, "ratio_error": RATIO_ERROR, "min_layers": MIN_LAYERS}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    findings = []
    for run in plain_runs(evidence.layers):
        if len(run) < thresholds["min_layers"]:
            continue
        trend = activation_trend(run)
        if trend is None:
            continue
        ratio, fitted = trend
        if ratio < thresholds["ratio"] or fitted < thresholds["ratio"]:
            continue
        severity = Severity.ERROR if ratio >= thresholds["ratio_error"] else Severity.WARNING
        findings.append(
            Finding(
                id=ID,
                severity=severity,
                title="Activation variance explodes with depth",
                message=(
                    f"output std grows {fmt_ratio(ratio)} from {run[0].name} ({run[0].activation.std:.3g}) "
                    f"to {run[-1].name} ({run[-1].activation.std:.3g}) over {len(run)} layers"
                ),
                layers=tuple(r.name for r in run),
                evidence={
                    "ratio_last_first": ratio,
                    "fitted_ratio": fitted,
                    "per_layer_factor": ratio ** (1.0 / (len(run) - 1)),
                    "first_std": run[0].activation.std,
                    "last_std": run[-1].activation.std,
                },
            )
        )
    return findings
