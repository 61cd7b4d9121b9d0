"""A recurrent layer forgets within a few steps: its gradient does not reach back in time.

## What it detects
An LSTM, GRU or RNN whose gradient with respect to its input falls by three orders of magnitude
within a few time steps back from the last one: the network cannot learn anything that depends on
inputs further back than that.

## Why it matters
Backpropagation through time multiplies the gradient by the recurrent Jacobian once per step. When
that product shrinks fast, the loss cannot see early inputs, so no weight learns to use them
(Bengio, Simard & Frasconi 1994). In an LSTM the forget gate sets the pace: the cell state is
multiplied by f_t at every step, so a forget-gate bias of -5 (f = sigmoid(-5) = 0.007) wipes the
cell at every step, while the usual recipe sets it to +1 to remember by default (Gers, Schmidhuber
& Cummins 2000; Jozefowicz, Zaremba & Sutskever 2015). Nothing in the per-layer statistics shows
it: the layer's weights, outputs and parameter gradients look like a healthy LSTM's.

## How it is detected
At initialisation, for each recurrent module, the gradient of the loss with respect to its input at
every time step (diagnose/recurrent.py: a tensor hook on the module's input, which autograd computes
anyway). The memory horizon is the number of steps back from the last step at which that gradient
first falls below `gradient_floor` (1e-3) of the last step's. The check fires when the horizon is
`horizon` (8) steps or fewer. Measured on the calibration corpus (16 features, 64 units, sequences
of 24 and 40 steps): default-init LSTM 13 steps, 2-layer LSTM 18, GRU 14-15, tanh RNN 11, LSTM with
forget bias +1 over 39; forget bias -2: 5 steps, -5: 4. The horizon does not depend on the sequence
length. Sequences shorter than 2 x `horizon` are not judged, and neither is a loss on every step's
output whose gradient never falls that far (each step then has its own direct path to the loss).

For an LSTM the message gives the forget-gate bias (b_ih + b_hh over the forget slice) when it is
negative: the usual cause.

Severity: error (the layer cannot learn dependencies longer than its horizon: the recurrence is
lost).

## Example
`nn.LSTM(16, 64, batch_first=True)` with its forget-gate biases set to -2.5 each (sum -5), reading
24 steps for a classifier on the last state: the gradient 10 steps back is ~3e-9 of the last
step's, against ~3e-3 for the default init.

## Fixes
`fix-bias-init`: set the LSTM forget-gate bias to +1 (b_ih[h:2h] = 1, b_hh[h:2h] = 0); for a GRU or
plain RNN, `gradient-clipping` with a `lr-schedule` is the usual companion, and an LSTM/GRU in place
of a plain RNN for long dependencies.

## Options
`horizon`, `gradient_floor`.

## References
- Bengio, Simard & Frasconi, "Learning long-term dependencies with gradient descent is difficult", 1994.
- Gers, Schmidhuber & Cummins, "Learning to Forget: Continual Prediction with LSTM", 2000.
- Jozefowicz, Zaremba & Sutskever, "An Empirical Exploration of Recurrent Network Architectures", ICML 2015.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence, RecurrentFlow

ID = "recurrent-gradient-flow"
# Healthy default inits reach 11-18 steps back before losing three orders of magnitude; negative
# forget biases 4-5 (measured, see the doc). 8 sits between with room on both sides.
HORIZON = 8
# Three orders of magnitude: below that a step's input moves its weights a thousandth as much as
# the last step's does; AUTOTRAINER's vanishing bound over depth is the same 1e-3.
GRADIENT_FLOOR = 1e-3

THRESHOLDS: dict[str, float] = {"horizon": HORIZON, "gradient_floor": GRADIENT_FLOOR}


def memory_horizon(flow: RecurrentFlow, floor: float) -> int | None:
    """Steps back from the last step until the input gradient falls below `floor` of the last's."""
    norms = flow.step_gradient_norms
    last = norms[-1] if norms else 0.0
    if not norms or not math.isfinite(last) or last <= 0.0:
        return None
    for back, value in enumerate(reversed(norms)):
        if not math.isfinite(value):
            return None
        if value < floor * last:
            return back
    return None  # never falls that far within the sequence


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    findings = []
    for flow in evidence.recurrent:
        if flow.steps < 2 * thresholds["horizon"]:
            continue
        horizon = memory_horizon(flow, thresholds["gradient_floor"])
        if horizon is None or horizon > thresholds["horizon"]:
            continue
        norms = flow.step_gradient_norms
        back = min(10, flow.steps - 1)
        reach = norms[-1 - back] / norms[-1]
        cause = ""
        if flow.forget_bias is not None and flow.forget_bias < 0:
            gate = 1.0 / (1.0 + math.exp(-flow.forget_bias))
            cause = (f"; its forget-gate bias is {flow.forget_bias:.3g} (gate ~{gate:.2g}), so the cell state is "
                     "wiped at every step: set it to +1")
        findings.append(Finding(
            id=ID,
            severity=Severity.ERROR,
            title="The recurrent layer forgets within a few steps",
            message=(
                f"the gradient reaching {flow.name}'s input falls below {thresholds['gradient_floor']:g} of the last "
                f"step's within {horizon} steps back ({back} steps back: {reach:.1e}) over a {flow.steps}-step "
                f"sequence{cause}"
            ),
            layers=(flow.name,),
            evidence={
                "memory_horizon": horizon,
                "steps": flow.steps,
                "gradient_ratio_10_back": reach,
                "forget_bias": flow.forget_bias,
                "type": flow.type,
            },
        ))
    return findings
