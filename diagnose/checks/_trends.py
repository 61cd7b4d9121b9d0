"""The findings of the four over-depth trend checks, shared because they mirror each other.

Vanishing and exploding gradients read the same gradient-norm trend in opposite directions, as do
variance collapse and explosion with the activation-std trend; only the direction, the title and
the verb differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from diagnose.checks._signal import activation_trend, fmt_ratio, gradient_flow, log_linear_change, plain_runs
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence


def gradient_trend_finding(
    evidence: Evidence, thresholds: Mapping[str, float], *, check_id: str, title: str, verb: str,
    fires: Callable[[float, float], bool],
) -> Finding | None:
    """One finding when the first/last gradient-norm ratio and its fitted trend both `fire`."""
    layers, norms = gradient_flow(evidence.layers)
    if len(norms) < max(int(thresholds["min_layers"]), 2):
        return None
    ratio_first_last = norms[0] / norms[-1]
    fitted = 1.0 / log_linear_change(norms)
    if not (fires(ratio_first_last, thresholds["ratio"]) and fires(fitted, thresholds["ratio"])):
        return None
    return Finding(
        id=check_id,
        severity=Severity.ERROR,
        title=title,
        message=(
            f"gradient norm {verb} {fmt_ratio(ratio_first_last)} from {layers[-1].name} "
            f"to {layers[0].name} over {len(layers)} weighted layers"
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


def variance_trend_findings(
    evidence: Evidence, thresholds: Mapping[str, float], *, check_id: str, title: str, verb: str,
    fires: Callable[[float, float], bool],
) -> list[Finding]:
    """One finding per plain run whose last/first std ratio and fitted trend both `fire`."""
    findings = []
    for run in plain_runs(evidence.layers):
        if len(run) < thresholds["min_layers"]:
            continue
        trend = activation_trend(run)
        if trend is None:
            continue
        ratio, fitted = trend
        if not (fires(ratio, thresholds["ratio"]) and fires(fitted, thresholds["ratio"])):
            continue
        severe = fires(ratio, thresholds["ratio_error"])
        findings.append(
            Finding(
                id=check_id,
                severity=Severity.ERROR if severe else Severity.WARNING,
                title=title,
                message=(
                    f"output std {verb} {fmt_ratio(ratio)} from {run[0].name} ({run[0].activation.std:.3g}) "
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


def at_or_below(value: float, limit: float) -> bool:
    return value <= limit


def at_or_above(value: float, limit: float) -> bool:
    return value >= limit
