"""The findings of the four over-depth trend checks, shared because they mirror each other.

Vanishing and exploding gradients read the same gradient-norm trend in opposite directions, as do
variance collapse and explosion with the activation-std trend; only the direction, the title and
the verb differ. So do their measures for `--try-fixes`, and the variance checks' common advice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, init_choices, target
from diagnose.checks._model import DECADES, Measure
from diagnose.checks._signal import (
    activation_trend,
    fmt_ratio,
    gradient_flow,
    log_linear_change,
    plain_runs,
)
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from probes.records import LayerRecord


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


def gradient_ratio(evidence: Evidence) -> Measure:
    """The first/last gradient-norm ratio, as the gradient trend checks compute it (healthy at 1)."""
    _, norms = gradient_flow(evidence.layers)
    return Measure("ratio_first_last", norms[0] / norms[-1] if len(norms) >= 2 else None, DECADES)


def activation_trend_measure(evidence: Evidence, pick: Callable[[list[float]], float]) -> Measure:
    """The most extreme (`pick`: min for collapse, max for explosion) last/first std ratio over the
    plain runs, as the variance trend checks compute it (healthy at 1)."""
    trends = [activation_trend(run) for run in plain_runs(evidence.layers) if len(run) >= 2]
    ratios = [t[0] for t in trends if t is not None]
    return Measure("ratio_last_first", pick(ratios) if ratios else None, DECADES)


def variance_trend_advice(run: Sequence[LayerRecord], context: AdviceContext) -> list[Choice]:
    """The init the run's hidden layers need, and a norm layer when the model has none."""
    # The hidden layers carry the trend; the output layer's own scheme (Glorot, no activation)
    # re-scales one layer and measurably leaves the trend as it is.
    hidden = [r for r in run if r.followed_by and r.followed_by != "none"] or list(run)
    choices = init_choices(context, hidden)
    if not context.has_norm:
        choices.append(Choice("batch-norm", target(context, [r.name for r in run])))
    return choices
