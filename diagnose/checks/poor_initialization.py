"""Weights are initialised at the wrong scale for their activation.

## What it detects
A run of consecutive, un-normalised linear/conv layers whose weight std is off, in the same
direction, from the scheme their following activation needs (He sqrt(2/fan_in) for ReLU-like,
Glorot sqrt(2/(fan_in+fan_out)) for tanh/sigmoid/none, LeCun sqrt(1/fan_in) for SELU), and where
that mis-scaling visibly hurts: the signal or the gradient changes by orders of magnitude across
the run, or the activations saturate.

## Why it matters
The right init keeps the variance of the signal (forward) and of the gradient (backward) level from
layer to layer. A std that is a little off in every layer compounds: 0.71x the He std over 30 ReLU
layers divides the signal by ~1e5. Judging by the effect, not by the formula alone, keeps this
quiet where the scale does not matter: a layer that feeds LayerNorm/BatchNorm is scale-invariant
(GPT-style N(0, 0.02) is fine), and a 2-3 layer net with PyTorch's default init trains well.

## How it is detected
For each plain run (see `activation-variance-collapse`), the layers that neither feed a norm nor are
frozen are compared with their expected std. A layer is too small below 1/`tolerance` of it and too
large above `tolerance` (default 1.25). The check fires when the run has at least `min_layers` such
layers, at least `share` (0.75) of them are off in the same direction, and across the run the output
std or the output-gradient norm changes by `signal_change` (100x) in the matching direction, or
(too large only) the activations after the run are saturated.

## Example
`nn.Sequential` of 30 `Linear(32, 32)` + `ReLU` initialised with `xavier_normal_`: every layer has
0.71x the He std, and the signal falls 1e5x across the stack.

## Fixes
`he-init`, `glorot-init` or `lecun-init`, whichever the layers' activation needs; the snippet
re-initialises exactly the flagged layers.

## Options
`tolerance`, `share`, `min_layers`, `signal_change`, `saturated_fraction`.

## References
- Glorot & Bengio, 2010; He et al., 2015; Klambauer et al., "Self-Normalizing Neural Networks", 2017.
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (F-test of weight std against LeCun/He/Glorot).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._signal import activation_trend, fmt_ratio, output_gradient_norm, plain_runs
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from probes.records import LayerRecord

ID = "poor-initialization"
# 25 % either way: sampling noise of a std estimate over a few thousand weights is ~1-2 %, and both
# textbook mistakes sit well outside (Xavier under ReLU is 0.71x He; the "standard" U[-1/sqrt(n),
# 1/sqrt(n)] is 0.58x Glorot; PyTorch's default is 0.41x He).
TOLERANCE = 1.25
# Most of the run must be off the same way for the errors to compound.
SHARE = 0.75
MIN_LAYERS = 3
# Two orders of magnitude across the run: the effect that makes training fail. A 3-layer default
# init ReLU MLP changes ~6x and trains fine; 30 ReLU layers with Xavier change ~1e5x.
SIGNAL_CHANGE = 100.0
# Same bar as saturated-activations: half the outputs flat is the visible effect of too-large weights.
SATURATED_FRACTION = 0.5

THRESHOLDS: dict[str, float] = {
    "tolerance": TOLERANCE,
    "share": SHARE,
    "min_layers": MIN_LAYERS,
    "signal_change": SIGNAL_CHANGE,
    "saturated_fraction": SATURATED_FRACTION,
}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    findings = []
    for run in plain_runs(evidence.layers):
        finding = _judge_run(evidence, run, thresholds)
        if finding is not None:
            findings.append(finding)
    return findings


def _judge_run(evidence: Evidence, run: list[LayerRecord], thresholds: Mapping[str, float]) -> Finding | None:
    judged = [
        r for r in run
        if not r.weight.normalized and not r.weight.frozen and r.weight.expected_std and r.weight.std == r.weight.std
    ]
    if len(judged) < thresholds["min_layers"]:
        return None
    ratios = {r.name: r.weight.std / r.weight.expected_std for r in judged}
    tolerance = thresholds["tolerance"]
    low = [r for r in judged if ratios[r.name] < 1.0 / tolerance]
    high = [r for r in judged if ratios[r.name] > tolerance]
    needed = thresholds["share"] * len(judged)
    if len(low) >= needed:
        direction, off = "small", low
    elif len(high) >= needed:
        direction, off = "large", high
    else:
        return None
    effect = _observed_effect(evidence, run, direction, thresholds)
    if effect is None:
        return None
    typical = sorted(ratios[r.name] for r in off)[len(off) // 2]
    schemes = sorted({r.weight.scheme or "glorot" for r in off})
    example = off[0]
    evidence_numbers: dict[str, float | int | str | None] = {
        "median_std_ratio": typical,
        "layers_off": len(off),
        "layers_judged": len(judged),
        "direction": direction,
        "scheme": ",".join(schemes),
        "effect": effect[0],
        "effect_value": effect[1],
    }
    for r in off:
        evidence_numbers[f"{r.name}.std"] = r.weight.std
        evidence_numbers[f"{r.name}.expected_std"] = r.weight.expected_std
    return Finding(
        id=ID,
        severity=Severity.WARNING,
        title="Weights are initialised at the wrong scale",
        message=(
            f"{len(off)} of {len(judged)} layers from {off[0].name} to {off[-1].name} have weights ~{typical:.2g}x "
            f"the {'/'.join(schemes)} std (e.g. {example.name}: {example.weight.std:.3g} vs "
            f"{example.weight.expected_std:.3g}); {effect[2]}"
        ),
        layers=tuple(r.name for r in off),
        evidence=evidence_numbers,
    )


def _observed_effect(
    evidence: Evidence, run: list[LayerRecord], direction: str, thresholds: Mapping[str, float]
) -> tuple[str, float, str] | None:
    """The measured harm of the mis-scaling across `run`: (what, value, in words), or None."""
    change = thresholds["signal_change"]
    trend = activation_trend(run)
    if trend is not None:
        ratio = trend[0]
        if direction == "small" and ratio <= 1.0 / change:
            return "activation_std_ratio", ratio, f"output std falls {fmt_ratio(ratio)} across them"
        if direction == "large" and ratio >= change:
            return "activation_std_ratio", ratio, f"output std grows {fmt_ratio(ratio)} across them"
    first, last = output_gradient_norm(run[0]), output_gradient_norm(run[-1])
    if first is not None and last is not None:
        ratio = first / last
        if direction == "small" and ratio <= 1.0 / change:
            return "gradient_ratio_first_last", ratio, f"the gradient falls {fmt_ratio(ratio)} toward {run[0].name}"
        if direction == "large" and ratio >= change:
            return "gradient_ratio_first_last", ratio, f"the gradient grows {fmt_ratio(ratio)} toward {run[0].name}"
    if direction == "large":
        start, stop = run[0].index, run[-1].index
        saturated = [
            r.activation.saturated_fraction for r in evidence.layers
            if start <= r.index <= stop + 1 and r.activation.saturated_fraction is not None
        ]
        if saturated and max(saturated) >= thresholds["saturated_fraction"]:
            return "saturated_fraction", max(saturated), f"up to {max(saturated):.0%} of their activations are saturated"
    return None
