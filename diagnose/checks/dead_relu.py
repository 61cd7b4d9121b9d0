"""ReLU units are dead.

## What it detects
A large share of the units of a ReLU layer output exactly zero for every sample of the batch, at
initialisation, for every step of the short training run, or by its last step (units that fired at
first and died while training: the mark of a learning rate that is too high).

## Why it matters
A ReLU unit whose input is negative for every sample outputs zero and passes back a zero gradient,
so nothing ever moves its weights out of that zone: the unit is dead for good and the layer has lost
that share of its width. Very negative biases kill units at initialisation; a learning rate that is
too high kills them during training.

## How it is detected
The probes count, per ReLU / ReLU6 output (function calls such as `F.relu` included), the share of
units (features, or channels of a conv map) that were zero for every sample; over a short run it
also reads the share dead in the run's last step. The check fires at
`dead_fraction` (default 0.5, SageMaker Debugger's and TheDeepChecker's "more than half the units")
and reports an error from `dead_fraction_error` (0.9). Batches with fewer than `min_samples` samples
per unit are skipped: a healthy unit is zero on a few samples by chance.

Half the units can be "dead" by structure alone. A ReLU whose inputs are all non-negative and
alike from sample to sample (after another ReLU and a global pool: squeeze-excite gates, SqueezeNet's
squeeze layers, VGG's classifier) gives every sample the same sign pattern, so at a zero-mean init
each unit is off for the whole batch with probability 1/2. A layer therefore counts as dead only
when its dead share also exceeds 1/2 by 2.5 binomial standard deviations (0.5 + 1.25/sqrt(units):
all of 8 units, 66 % of 64, 52 % of 4096). Units that die during the run must add at least a
quarter of the layer to the share dead at initialisation: a share that wobbles from step to step
around its initial value lost nothing.

Severity: error from `dead_fraction_error` dead (the layer has lost nearly all its width),
warning below it (it trains with less capacity than it should).

## Example
A ReLU MLP whose `Linear` biases are set to -10: every hidden unit is dead at initialisation.

## Fixes
`fix-bias-init` when the biases feeding the layer are very negative, then `leaky-relu`, `elu`,
`he-init`, and `lower-lr` (first when units die during the run rather than at init, unless the
weights feeding them are measurably too large: then their init scheme comes first).

## Options
`dead_fraction`, `dead_fraction_error`, `min_samples`.

## References
- AWS SageMaker Debugger, DeadRelu rule (threshold_layer 50 %).
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (> 50 % of neurons).
- Lu et al., "Dying ReLU and Initialization: Theory and Numerical Examples", 2019.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import (
    AdviceContext,
    Choice,
    bias_dominates,
    init_choices,
    misscaled,
    names,
    records,
    target,
)
from diagnose.checks._model import Measure
from diagnose.checks._signal import (
    by_index,
    max_fraction,
    preceding_weighted,
    units_dim_samples,
)
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "dead-relu"
# SageMaker Debugger and TheDeepChecker both fire above half the units dead: below that, ReLU's
# sparsity is normal (a healthy layer has ~0 % of units dead on a 32-sample batch).
DEAD_FRACTION = 0.5
# Nine units in ten dead leaves a layer with a tenth of its width: training will not recover it.
DEAD_FRACTION_ERROR = 0.9
# A healthy unit is zero on one sample with probability ~1/2, on all of n with 2^-n: with 8 samples
# that chance is 0.4 %, small enough not to inflate the dead share.
MIN_SAMPLES = 8

# Units that fired at initialisation and are dead at the end: at least a quarter of the layer must
# have died for the run to be the cause. A layer whose dead share only wobbles around its initial
# value from step to step (VGG-11's classifier: 44 % at init, 55 % in the last step) lost nothing.
DIED_DURING_RUN = 0.25
# How far above a fair coin the dead count must be (in standard deviations) to be more than the
# structure explains; see `dead_bar`.
MARGIN_SIGMAS = 2.5


def dead_bar(fraction: float, units: int | None) -> float:
    """The dead share a layer of `units` units must reach to be dead beyond its structure.

    A ReLU fed non-negative, strongly correlated inputs (after another ReLU and a global pool, as
    in squeeze-excite gates, SqueezeNet's squeeze layers or VGG's classifier) gives every sample
    the same sign pattern, so at a zero-mean init each unit is dead for the whole batch with
    probability 1/2: half the units "dead" on the batch is structure, not death. The bar is
    therefore that 1/2 plus `MARGIN_SIGMAS` binomial standard deviations, and never below
    `fraction`: a layer of 8 units needs all 8 dead, one of 4096 units 52 %. Truly dead layers
    (a bias of -10, a learning rate that kills units) sit at 90-100 %.
    """
    if not units:
        return fraction
    return max(fraction, 0.5 + MARGIN_SIGMAS * 0.5 / units ** 0.5)


THRESHOLDS: dict[str, float] = {
    "dead_fraction": DEAD_FRACTION,
    "dead_fraction_error": DEAD_FRACTION_ERROR,
    "min_samples": MIN_SAMPLES,
}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    layers = by_index(evidence.layers)
    run_by_name = {r.name: r for r in evidence.run_layers}
    dead: list[tuple[str, float, str]] = []  # (name, fraction, when)
    for record in layers:
        samples = units_dim_samples(record)
        if samples is not None and samples < thresholds["min_samples"]:
            continue
        at_init = record.activation.dead_fraction
        run_record = run_by_name.get(record.name)
        over_run = run_record.activation.dead_fraction if run_record is not None else None
        at_end = run_record.activation.dead_fraction_last if run_record is not None else None
        bar = dead_bar(thresholds["dead_fraction"], record.activation.units)
        if at_init is not None and at_init >= bar:
            dead.append((record.name, at_init, "init"))
        elif over_run is not None and over_run >= bar:
            dead.append((record.name, over_run, "run"))
        elif at_end is not None and at_end >= bar and at_end - (at_init or 0.0) >= DIED_DURING_RUN:
            dead.append((record.name, at_end, "died"))
    if not dead:
        return []
    name, fraction, when = max(dead, key=lambda item: item[1])
    worst = next(r for r in layers if r.name == name)
    feeding = preceding_weighted(layers, worst)
    bias_mean = feeding.weight.bias_mean if feeding is not None and feeding.weight is not None else None
    severity = Severity.ERROR if fraction >= thresholds["dead_fraction_error"] else Severity.WARNING
    phase = {
        "init": "at initialisation",
        "run": "over the whole short run",
        "died": "by the end of the short run (they fired at initialisation)",
    }[when]
    return [
        Finding(
            id=ID,
            severity=severity,
            title="ReLU units are dead",
            message=f"{fraction:.0%} of units in {name} never fire {phase}",
            layers=tuple(item[0] for item in dead),
            evidence={
                "max_dead_fraction": fraction,
                "dead_layers": len(dead),
                "died_during_run": sum(1 for item in dead if item[2] in ("run", "died")),
                "feeding_layer": feeding.name if feeding is not None else None,
                "feeding_bias_mean": bias_mean,
            },
        )
    ]


# Dead units pass no gradient whatever the rate.
STOPS_LEARNING = True
# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("he-init", "glorot-init", "lecun-init", "fix-bias-init", "lower-lr", "leaky-relu", "elu")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    dead = [r for r in records(context, finding.layers) if r.kind == "activation"]
    feeders = [f for f in (preceding_weighted(context.layers, r) for r in dead) if f is not None]
    negative = [f for f in feeders if bias_dominates(f, negative_only=True)]
    during_run = bool(finding.evidence.get("died_during_run"))
    choices: list[Choice] = []
    large = misscaled(feeders, "large")
    if large and during_run:
        # Units knocked out in the run by an oversized init: the first steps are huge whatever the
        # rate (a lower one measurably still diverges); the init's scale is the cause.
        choices += init_choices(context, large)
    if negative:
        mean = negative[0].weight.bias_mean
        choices.append(Choice("fix-bias-init", target(context, [f.name for f in negative]),
                              f"{names(negative)} have biases around {mean:.3g}, below the spread of their outputs."))
    if during_run:
        choices.append(Choice("lower-lr", target(context), "Units died during the short run, not at initialisation."))
    modules = [r.name for r in dead]
    choices.append(Choice("leaky-relu", target(context, modules, activation="relu")))
    choices.append(Choice("elu", target(context, modules, activation="relu")))
    # Re-initialising only helps layers whose scale is off; at the right scale it changes nothing.
    choices += init_choices(context, misscaled(feeders, "small") + misscaled(feeders, "large"))
    choices.append(Choice("lower-lr", target(context)))
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return Measure("max_dead_fraction", max_fraction(evidence, "dead_fraction", "dead_fraction_last"))
