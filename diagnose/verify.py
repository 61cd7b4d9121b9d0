"""`--try-fixes`: apply each recommended fix to a copy of the model, re-measure, report before -> after.

For every finding, each of its fixes is applied to a fresh copy of the user's model (or to the
run's settings: learning rate, clipping, optimiser, batch) by its applier (`diagnose.fixes.apply_fix`).
The copy is probed exactly like the original (one forward+backward at init, then a short run on the same batch,
seed and loss) and the same check is run on it. The fix's `verified` field then says:

- `metric`, `before`, `after`: the measure that triggered the finding (the first/last gradient
  ratio, the largest dead fraction, the loss after the run...), on the original and on the fixed copy;
- `loss_before`, `loss_after`: the loss at the end of the short run, unchanged and fixed copy (what
  the user cares about in the end);
- `resolved`: the same check no longer fires on the fixed copy *and* its loss is not clearly worse
  (`training_worse`: a fix that silences a check by wrecking training cures nothing);
- `note`: what was changed.

A fix that was tried and did not help stays in the list with `resolved: false`: knowing that a
plausible fix does not work here is information. A fix that cannot be applied automatically to this
model (a schedule a short run cannot show, a structure the rebuild does not understand) keeps
`verified: null` and says why in `not_verified`, as the contract says for fixes that were not run.
Fixes are ordered by what they do to training: resolved ones first, by the loss after the run; then
the unresolved ones that left training no worse, by how far the triggering measure moved toward
healthy, then by the loss; then those that made training worse or did not run; fixes that were not
tried come last, in the recommender's order.

Before and after are measured under the same workload: a short run of `max(steps, VERIFY_STEPS)`
steps even when the user asked for none, with the baseline measured once and every distinct fix
measured once however many findings recommend it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from diagnose import progress
from diagnose.checks import Measure, get, run_checks
from diagnose.config import Settings
from diagnose.errors import DiagnoseError, one_line
from diagnose.evidence import Evidence
from diagnose.findings import Finding, FixSuggestion, Verification

if TYPE_CHECKING:
    from torch import nn

    from diagnose.run import Workload

# Steps of the verification run. On one fixed batch a healthy small net removes a clear share of its
# loss within 20 SGD steps (the overfit-one-batch test), enough for the dynamics checks (which need
# at least 5) to judge a trend; more steps would multiply the cost by the number of fixes tried.
VERIFY_STEPS = 20
# Effects closer than 0.1 (decades for ratios, share for fractions) rank as equal; the loss decides.
GAIN_RESOLUTION = 1
# "Clearly worse" training, judged on the loss at the end of the short run. A fixed copy may end
# above the unchanged one by noise: a re-initialised copy starts from another random draw, whose
# loss at init differs by a few percent (LOSS_NOISE of the starting loss). Beyond that, a fix that
# gives back more than a quarter of the progress the unchanged copy made over the run
# (WORSE_SHARE_OF_DROP of its loss drop) is worse, whatever it does to the metric: on a ResNet-50
# that fits its batch to 0.0045, clipping at a constant 1.0 ended at 4.14 and must not count as a
# cure. Measured against the drop, not the level, so an already-low loss is not judged by ratios
# of tiny numbers. A loss that is not finite after the run is always worse.
LOSS_NOISE = 0.05
WORSE_SHARE_OF_DROP = 0.25


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What happened when one fix was tried: the fixed copy's evidence, or why there is none."""

    evidence: Evidence | None
    change: str = ""
    snippet: str | None = None  # the snippet for the values the trial measured and used
    not_applicable: str | None = None  # cannot be applied automatically, by design (verified stays None)
    failed: str | None = None  # tried and broke (rebuild or run): the note for a resolved=False verification


def verify_findings(
    module: "nn.Module",
    workload: "Workload",
    evidence: Evidence,
    findings: Sequence[Finding],
    settings: Settings,
) -> list[Finding]:
    """The findings with each fix's `verified` filled in and the fixes ordered by verified effect."""
    steps = max(settings.steps, VERIFY_STEPS)
    run_workload = replace(workload, steps=steps)
    if evidence.run.steps == steps:
        baseline = evidence  # the user's own run already is the verification run
    else:
        progress.stage("measuring the unchanged copy for the fixes", total=steps + 1)
        baseline = measure_evidence(module, run_workload, evidence)
    layers = evidence.layers
    outcomes: dict[str, _Outcome] = {}
    distinct = len({fix.id for finding in findings for fix in finding.fixes})
    verified = []
    for finding in findings:
        if not finding.fixes:  # nothing to try (a check with no catalog fix has no measure either)
            verified.append(finding)
            continue
        results = []
        for fix in finding.fixes:
            if fix.id not in outcomes:
                progress.stage(f"trying fix {len(outcomes) + 1} of {distinct}: {fix.id}", total=steps + 1)
                outcomes[fix.id] = _try(fix.id, module, run_workload, layers, baseline)
            results.append(_judge(finding, fix, baseline, outcomes[fix.id], settings))
        verified.append(finding.with_fixes(_ranked(results, get(finding.id).metric(finding, baseline))))
    return verified


def measure_evidence(module: "nn.Module", workload: "Workload", template: Evidence) -> Evidence:
    """Probe `module` under `workload` and describe it like `template` (same model facts and run)."""
    from diagnose.run import measure

    measured = measure(module, workload)
    params = list(module.parameters())
    return replace(
        template,
        model=replace(
            template.model,
            parameters=sum(p.numel() for p in params),
            trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
            layers=len(measured.layers),
        ),
        run=replace(template.run, steps=workload.steps, optimizer=workload.optimizer, lr=workload.lr),
        inputs=workload.batch.stats,
        **measured.evidence_fields(),
    )


def _try(fix_id: str, module, workload, layers, baseline: Evidence) -> _Outcome:
    from diagnose.fixes.trial import FixNotApplicable, apply_fix

    try:
        trial = apply_fix(fix_id, module, workload, layers, run=baseline.loss)
    except FixNotApplicable as exc:
        return _Outcome(None, not_applicable=str(exc))
    except Exception as exc:  # a model the rebuild does not understand: say so on this fix, go on
        return _Outcome(None, failed=f"could not be applied to this model ({one_line(exc)})")
    try:
        fixed = measure_evidence(trial.module, trial.workload, baseline)
    except DiagnoseError as exc:
        return _Outcome(None, change=trial.change, failed=f"{trial.change}; the fixed copy did not run: {exc}")  # one line by contract
    except Exception as exc:  # a rebuilt model that cannot run is a result of the trial, not a crash
        return _Outcome(None, change=trial.change,
                        failed=f"{trial.change}; the fixed copy did not run ({one_line(exc)})")
    return _Outcome(fixed, change=trial.change, snippet=trial.snippet)


def _judge(
    finding: Finding, fix: FixSuggestion, baseline: Evidence, outcome: _Outcome, settings: Settings
) -> FixSuggestion:
    if outcome.not_applicable is not None:
        return replace(fix, verified=None, not_verified=outcome.not_applicable)
    if outcome.snippet is not None:
        fix = replace(fix, snippet=outcome.snippet)  # the value verified is the value proposed
    spec = get(finding.id)
    before = spec.metric(finding, baseline)
    metric = before.name
    loss_before = _final_loss(baseline)
    if outcome.evidence is None:
        return replace(fix, verified=Verification(
            metric=metric, before=before.value, after=None, resolved=False, note=outcome.failed,
            loss_before=loss_before,
        ))
    after = spec.metric(finding, outcome.evidence).value
    still, _ = run_checks(
        outcome.evidence,
        select=(finding.id,),
        thresholds={finding.id: settings.thresholds[finding.id]} if finding.id in settings.thresholds else None,
        per_layer_ignores=settings.per_layer_ignores,
    )
    cleared = not any(f.id == finding.id for f in still)
    loss_after = _final_loss(outcome.evidence)
    worse = training_worse(_initial_loss(baseline), loss_before, loss_after)
    return replace(fix, verified=Verification(
        metric=metric, before=before.value, after=after, resolved=cleared and not worse, note=outcome.change,
        loss_before=loss_before, loss_after=loss_after, loss_worse=worse,
    ))


def training_worse(initial: float | None, loss_before: float | None, loss_after: float | None) -> bool:
    """Whether the fixed copy's short-run loss is clearly worse than the unchanged copy's.

    `initial` is the unchanged copy's loss at init, `loss_before`/`loss_after` the two copies'
    losses at the end of the same run (LOSS_NOISE and WORSE_SHARE_OF_DROP say why these bounds).
    """
    if loss_after is None:
        return False  # no run, nothing to judge by
    if not math.isfinite(loss_after):
        return True
    if loss_before is None or not math.isfinite(loss_before):
        return False  # from a diverged run, any finite loss is progress
    start = initial if initial is not None and math.isfinite(initial) else loss_before
    drop = max(start - loss_before, 0.0)
    tolerance = max(WORSE_SHARE_OF_DROP * drop, LOSS_NOISE * abs(start))
    return loss_after > loss_before + tolerance


def _final_loss(evidence: Evidence) -> float | None:
    loss = evidence.loss
    return None if loss is None else loss.final


def _initial_loss(evidence: Evidence) -> float | None:
    loss = evidence.loss
    return None if loss is None else loss.initial


# ---------------------------------------------------------------------------------------------
# Ordering


def _ranked(results: list[FixSuggestion], measure: Measure) -> tuple[FixSuggestion, ...]:
    """Tried fixes by what they did to training, best first; fixes that could not be tried last, in order.

    `measure` is the finding's measure (its scale says how far a value is from healthy)."""
    tried = [(i, fix) for i, fix in enumerate(results) if fix.verified is not None]
    untried = [fix for fix in results if fix.verified is None]
    tried.sort(key=lambda item: _effect_key(item[1].verified, measure, item[0]))
    return tuple(fix for _, fix in tried) + tuple(untried)


def _effect_key(verification: Verification, measure: Measure, position: int) -> tuple:
    """Resolved fixes first, best loss after the run first (once the check is satisfied, the
    training outcome is what tells cures apart); then unresolved ones that left training no worse,
    by how far they moved the triggering measure toward healthy, ties (within GAIN_RESOLUTION)
    settled by the loss; then those that made training worse or did not run, by the loss."""
    loss_after = verification.loss_after
    loss = loss_after if loss_after is not None and math.isfinite(loss_after) else math.inf
    if verification.resolved:
        return (0, 0.0, loss, position)
    if verification.loss_worse or verification.after is None:
        return (2, 0.0, loss, position)
    before = replace(measure, value=verification.before).badness()
    after = replace(measure, value=verification.after).badness()
    if before is None or after is None or (math.isinf(before) and math.isinf(after)):
        gain = 0.0
    else:
        gain = before - after
    gain = round(gain, GAIN_RESOLUTION) if math.isfinite(gain) else gain
    return (1, -gain, loss, position)
