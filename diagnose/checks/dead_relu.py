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

## Example
A ReLU MLP whose `Linear` biases are set to -10: every hidden unit is dead at initialisation.

## Fixes
`fix-bias-init` when the biases feeding the layer are very negative, then `leaky-relu`, `elu`,
`he-init`, and `lower-lr` (first when units die during the run rather than at init).

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

from diagnose.checks._signal import by_index, preceding_weighted, units_dim_samples
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
        if at_init is not None and at_init >= thresholds["dead_fraction"]:
            dead.append((record.name, at_init, "init"))
        elif over_run is not None and over_run >= thresholds["dead_fraction"]:
            dead.append((record.name, over_run, "run"))
        elif at_end is not None and at_end >= thresholds["dead_fraction"]:
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
