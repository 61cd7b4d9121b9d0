"""The checks: one module per id, listed in one table, and their runner.

A check module holds everything about its id (ruff's layout): the docstring that is its doc,
`THRESHOLDS`, `check(evidence, thresholds)`, the fix ids it may recommend (`FIXES`) with the
judgement that orders them for the evidence (`advise(finding, context)`), and the measure a fix is
verified by (`metric(finding, evidence)`), or `NO_FIX` saying why no catalog fix applies. Adding a
check is its module, one line in `CHECKS` and its tests.

Importing this package does not import torch: the checks read plain records only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from diagnose.checks import (
    activation_variance_collapse,
    activation_variance_explosion,
    adagrad_deep_network,
    bad_initial_loss,
    bottleneck_layer,
    dead_relu,
    eval_mode_export,
    exploding_gradients,
    loss_not_decreasing,
    lr_too_high,
    lr_too_low,
    no_gradient,
    non_finite,
    output_loss_mismatch,
    poor_initialization,
    recurrent_gradient_flow,
    residual_stream_growth,
    saturated_activations,
    selu_misconfigured,
    symmetric_weights,
    unnormalized_inputs,
    vanishing_gradients,
)
from diagnose.checks._advice import (
    ANY_THAT_STOPS_LEARNING,
    AdviceContext,
    Choice,
    root_cause,
)
from diagnose.checks._model import (
    DECADES,
    DECADES_ABOVE,
    LOWER_IS_BETTER,
    CheckSpec,
    Measure,
)
from diagnose.errors import DiagnoseError
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

E, W = Severity.ERROR, Severity.WARNING

# One line per check, in report order. `severity` is the usual one; a check may report another.
CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("eval-mode-export", eval_mode_export, E, "an export archive made after .eval(): its batch norm never trains"),
    CheckSpec("non-finite", non_finite, E, "NaN or Inf in inputs, weights, activations, gradients or loss"),
    CheckSpec("output-loss-mismatch", output_loss_mismatch, E, "softmax/sigmoid/tanh outputs fed to a loss that expects raw logits"),
    CheckSpec("symmetric-weights", symmetric_weights, E, "units that start with identical weights in and out, so they never differ"),
    CheckSpec("no-gradient", no_gradient, E, "trainable parameters that receive no or all-zero gradient"),
    CheckSpec("dead-relu", dead_relu, E, "a large share of ReLU units output zero for every sample", needs_activations=True),
    CheckSpec("vanishing-gradients", vanishing_gradients, E, "gradient shrinks by orders of magnitude toward the input"),
    CheckSpec("exploding-gradients", exploding_gradients, E, "gradient grows by orders of magnitude toward the input, or is huge"),
    CheckSpec("saturated-activations", saturated_activations, W, "sigmoid/tanh-like outputs pinned at their bounds, derivative ~0", needs_activations=True),
    CheckSpec("activation-variance-collapse", activation_variance_collapse, W, "activation variance shrinks layer after layer", needs_activations=True),
    CheckSpec("activation-variance-explosion", activation_variance_explosion, W, "activation variance grows layer after layer", needs_activations=True),
    CheckSpec("recurrent-gradient-flow", recurrent_gradient_flow, E, "a recurrent layer's gradient does not reach back more than a few time steps"),
    CheckSpec("residual-stream-growth", residual_stream_growth, E, "activations grow block after block along an un-normalised residual stream", needs_activations=True),
    CheckSpec("poor-initialization", poor_initialization, W, "weight scale far from what the activation needs, and it shows"),
    CheckSpec("selu-misconfigured", selu_misconfigured, W, "SELU without LeCun init, plain dense stack or standardized inputs", needs_activations=True),
    CheckSpec("bad-initial-loss", bad_initial_loss, W, "loss at initialization far from chance level (ln C)"),
    CheckSpec("unnormalized-inputs", unnormalized_inputs, W, "real inputs far from zero mean / unit variance"),
    CheckSpec("bottleneck-layer", bottleneck_layer, W, "a hidden layer much narrower than its neighbours"),
    CheckSpec("lr-too-high", lr_too_high, E, "loss diverges or turns NaN, or updates are a large share of the weights", needs_run=True),
    CheckSpec("lr-too-low", lr_too_low, W, "updates are a negligible share of the weights and the loss does not move", needs_run=True),
    CheckSpec("loss-not-decreasing", loss_not_decreasing, W, "the loss does not go down over the short run", needs_run=True),
    CheckSpec("adagrad-deep-network", adagrad_deep_network, W, "AdaGrad on a deep network: its step size decays toward zero", needs_run=True),
)

def _incomplete(specs: tuple[CheckSpec, ...]) -> list[str]:
    """Checks whose module misses a part, or declares a fix the catalog does not have."""
    from diagnose.fixes import FIXES

    problems = [f"{spec.id} lacks {', '.join(spec.missing())}" for spec in specs if spec.missing()]
    problems += [
        f"{spec.id} declares unknown fix {fix_id}" for spec in specs for fix_id in spec.fixes if fix_id not in FIXES
    ]
    return problems


_PROBLEMS = _incomplete(CHECKS)
if _PROBLEMS:  # a check with no advice would silently get no fixes, and be verified on nothing
    raise RuntimeError("diagnose.checks: " + "; ".join(_PROBLEMS))

CHECK_IDS: tuple[str, ...] = tuple(spec.id for spec in CHECKS)
_BY_ID: dict[str, CheckSpec] = {spec.id: spec for spec in CHECKS}
_ORDER: dict[str, int] = {check_id: i for i, check_id in enumerate(CHECK_IDS)}


def root_causes_of(spec: CheckSpec) -> tuple[str, ...]:
    """The check ids whose error makes `spec`'s finding a symptom (its module's `ROOT_CAUSES`), in
    the order they are named."""
    causes = getattr(spec.module, "ROOT_CAUSES", ())
    if causes == ANY_THAT_STOPS_LEARNING:
        return tuple(s.id for s in CHECKS if getattr(s.module, "STOPS_LEARNING", False))
    return tuple(causes)


def get(check_id: str) -> CheckSpec:
    """The table entry for `check_id`; DiagnoseError naming the valid ids otherwise."""
    try:
        return _BY_ID[check_id]
    except KeyError:
        raise DiagnoseError(_unknown(check_id, "check id")) from None


def _unknown(value: str, what: str) -> str:
    return f"unknown {what} {value!r}; valid ids: {', '.join(CHECK_IDS)}"


def select_checks(select: Iterable[str] = (), ignore: Iterable[str] = ()) -> tuple[CheckSpec, ...]:
    """The checks to run: all of them, or only `select`, minus `ignore`, in table order."""
    select, ignore = tuple(select), tuple(ignore)
    for check_id in select + ignore:
        if check_id not in _BY_ID:
            raise DiagnoseError(_unknown(check_id, "check id"))
    chosen = [spec for spec in CHECKS if (not select or spec.id in select) and spec.id not in ignore]
    return tuple(chosen)


def resolve_thresholds(spec: CheckSpec, overrides: Mapping[str, float] | None) -> dict[str, float]:
    """The check's defaults with the user's overrides merged in; unknown names are an error."""
    merged = dict(spec.thresholds)
    for name, value in (overrides or {}).items():
        key = name.replace("-", "_")
        if key not in merged:
            valid = ", ".join(merged) or "none"
            raise DiagnoseError(
                f"unknown threshold {name!r} for check {spec.id}; valid names: {valid} "
                f"(see `diagnose explain {spec.id}`)"
            )
        try:
            merged[key] = float(value)
        except (TypeError, ValueError):
            raise DiagnoseError(f"threshold {spec.id}.{name} must be a number, not {value!r}") from None
    return merged


def run_checks(
    evidence: Evidence,
    *,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    per_layer_ignores: Mapping[str, Iterable[str]] | None = None,
) -> tuple[list[Finding], tuple[str, ...]]:
    """Run the selected checks; return findings (severity first, then table order) and the ids run.

    `thresholds`: check id -> {threshold name: value}. `per_layer_ignores`: layer name or fnmatch
    glob -> check ids; those layers are dropped from those checks' findings, and a finding left
    with no layer is dropped.
    """
    thresholds = thresholds or {}
    ignores = validate_ids(select, ignore, thresholds, per_layer_ignores)
    specs = select_checks(select, ignore)
    findings: list[Finding] = []
    for spec in specs:
        limits = resolve_thresholds(spec, thresholds.get(spec.id))
        if spec.needs_run and evidence.run.steps == 0:
            continue
        for finding in spec.module.check(evidence, limits):
            kept = _apply_layer_ignores(finding, ignores)
            if kept is not None:
                findings.append(kept)
    findings = _withdraw_superseded(findings)
    findings.sort(key=lambda f: (-f.severity.rank, _ORDER.get(f.id, len(_ORDER))))
    return findings, tuple(spec.id for spec in specs)


def _withdraw_superseded(findings: list[Finding]) -> list[Finding]:
    """Drop the findings a finding declares meaningless (its module's `SUPERSEDES`), and say so.

    An eval-mode export, for one, makes every gradient-flow and activation measurement describe a
    graph the user does not train: reporting those as causes would misdiagnose.
    """
    withdrawn: dict[str, tuple[str, ...]] = {}
    for finding in findings:
        superseded = getattr(_BY_ID[finding.id].module, "SUPERSEDES", ()) if finding.id in _BY_ID else ()
        if superseded:
            withdrawn[finding.id] = tuple(superseded)
    if not withdrawn:
        return findings
    dropped = {f.id for f in findings if any(f.id in ids for ids in withdrawn.values())}
    kept = []
    for finding in findings:
        if finding.id in dropped:
            continue
        if finding.id in withdrawn and dropped:
            finding = replace(
                finding,
                message=f"{finding.message} (withdrawn as unreliable here: {', '.join(sorted(dropped))})",
                evidence={**finding.evidence, "withdrawn": ", ".join(sorted(dropped))},
            )
        kept.append(finding)
    return kept


def validate_ids(
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    thresholds: Mapping[str, object] | None = None,
    per_layer_ignores: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Every check id the caller named is a real one (DiagnoseError naming the valid ids otherwise).

    Called before the model loads (diagnose.api), so a typo costs no probe run. Returns the
    per-layer ignores with a bare-string id turned into a tuple.
    """
    select_checks(select, ignore)
    for check_id in thresholds or {}:
        if check_id not in _BY_ID:
            raise DiagnoseError(_unknown(check_id, "check id in thresholds"))
    ignores = {
        pattern: (ids,) if isinstance(ids, str) else tuple(ids)  # one id given as a bare string
        for pattern, ids in (per_layer_ignores or {}).items()
    }
    for ids in ignores.values():
        for check_id in ids:
            if check_id not in _BY_ID and check_id != "*":
                raise DiagnoseError(_unknown(check_id, "check id in per-layer ignores"))
    return ignores


def _apply_layer_ignores(finding: Finding, ignores: Mapping[str, tuple[str, ...]]) -> Finding | None:
    patterns = [p for p, ids in ignores.items() if finding.id in ids or "*" in ids]
    if not patterns or not finding.layers:
        return finding
    kept = tuple(
        name for name in finding.layers
        if not any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)
    )
    if not kept:
        return None
    return finding if kept == finding.layers else replace(finding, layers=kept)


__all__ = [
    "CHECKS", "CHECK_IDS", "DECADES", "DECADES_ABOVE", "LOWER_IS_BETTER", "AdviceContext", "CheckSpec", "Choice", "Measure", "get", "resolve_thresholds",
    "root_cause", "root_causes_of", "run_checks", "select_checks", "validate_ids",
]
