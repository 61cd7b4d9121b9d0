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

The other way round, the check fires when the gradient grows back in time by `growth` (100x) or
more: the recurrence amplifies it at every step (Pascanu, Mikolov & Bengio 2013). Healthy inits
only ever decay; a tanh RNN with 4x PyTorch's default recurrent weights grows 125x over 24 steps.

For an LSTM the message gives the forget-gate bias (b_ih + b_hh over the forget slice) when it is
negative: the usual cause.

Severity: error for a short memory (the layer cannot learn dependencies longer than its horizon:
the recurrence is lost). For a gradient that explodes back in time: error when the short run does
not train normally, warning when it still does (it trains, with updates driven by the oldest
steps; clip them).

## Example
`nn.LSTM(16, 64, batch_first=True)` with its forget-gate biases set to -2.5 each (sum -5), reading
24 steps for a classifier on the last state: the gradient 10 steps back is ~3e-9 of the last
step's, against ~3e-3 for the default init.

## Fixes
`fix-bias-init`: set the LSTM forget-gate bias to +1 (b_ih[h:2h] = 1, b_hh[h:2h] = 0); for a GRU or
plain RNN, `gradient-clipping` (a decaying learning rate is its usual companion), and an LSTM/GRU in place
of a plain RNN for long dependencies. When the gradient grows back in time, `glorot-init` first:
Glorot input weights and orthogonal recurrent weights (Keras' default for recurrent layers), whose
gain of 1 removes the cause; then `gradient-clipping` and `lower-lr`, which only bound the steps.

## Options
`horizon`, `gradient_floor`, `growth`.

## References
- Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", ICML 2013.
- Bengio, Simard & Frasconi, "Learning long-term dependencies with gradient descent is difficult", 1994.
- Gers, Schmidhuber & Cummins, "Learning to Forget: Continual Prediction with LSTM", 2000.
- Jozefowicz, Zaremba & Sutskever, "An Empirical Exploration of Recurrent Network Architectures", ICML 2015.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, target
from diagnose.checks._model import DECADES, DECADES_ABOVE, Measure
from diagnose.checks._signal import run_outcome
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

# The other way: a gradient that grows back in time. Healthy inits only ever decay (the corpus's
# LSTMs, GRUs and tanh RNN: the oldest step gets 1e-7 to 1e-4 of the last one's); a tanh RNN whose
# recurrent weights are 4x PyTorch's default grows 125x over 24 steps (Pascanu et al. 2013: the
# recurrent Jacobian's spectral radius above 1). Two orders of magnitude is where clipping is
# no longer optional.
GROWTH = 100.0

THRESHOLDS: dict[str, float] = {"horizon": HORIZON, "gradient_floor": GRADIENT_FLOOR, "growth": GROWTH}


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


def reach_back(flow: RecurrentFlow, steps: int = 10) -> tuple[float, int] | None:
    """(input gradient `steps` back, or as far as the sequence goes, / the last step's; how far back)."""
    norms = flow.step_gradient_norms
    if len(norms) < 2 or not norms[-1] > 0.0:
        return None
    back = min(steps, len(norms) - 1)
    return norms[-1 - back] / norms[-1], back


def back_in_time_growth(flow: RecurrentFlow) -> tuple[float, int] | None:
    """(largest input gradient / the last step's, how many steps back it is), if measurable."""
    norms = flow.step_gradient_norms
    if len(norms) < 2 or not all(math.isfinite(v) for v in norms) or norms[-1] <= 0.0:
        return None
    back, value = max(enumerate(reversed(norms)), key=lambda item: item[1])
    return value / norms[-1], back


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    findings = []
    for flow in evidence.recurrent:
        if flow.steps < 2 * thresholds["horizon"]:
            continue
        growth = back_in_time_growth(flow)
        if growth is not None and growth[0] >= thresholds["growth"]:
            findings.append(_exploding(evidence, flow, *growth))
            continue
        horizon = memory_horizon(flow, thresholds["gradient_floor"])
        if horizon is None or horizon > thresholds["horizon"]:
            continue
        reach, back = reach_back(flow)
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


def _exploding(evidence: Evidence, flow: RecurrentFlow, growth: float, back: int) -> Finding:
    trained, outcome = run_outcome(evidence)
    return Finding(
        id=ID,
        severity=Severity.WARNING if trained else Severity.ERROR,
        title="The recurrent layer's gradient explodes back in time",
        message=(
            f"the gradient reaching {flow.name}'s input grows {growth:.3g}x from the last step to {back} steps back "
            f"over a {flow.steps}-step sequence: the recurrence amplifies it at every step{outcome}"
        ),
        layers=(flow.name,),
        evidence={
            "gradient_growth_back_in_time": growth,
            "steps_back": back,
            "steps": flow.steps,
            "forget_bias": flow.forget_bias,
            "type": flow.type,
        },
    )


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("glorot-init", "fix-bias-init", "gradient-clipping", "lower-lr")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    growth = finding.evidence.get("gradient_growth_back_in_time")
    if isinstance(growth, float):
        # The recurrent matrix's gain above 1 is the cause: an orthogonal one has gain 1 and cures it
        # (measured on the corpus's chaotic RNN); clipping and a lower rate only bound the steps.
        return [
            Choice("glorot-init", target(context, finding.layers, recurrent_weights=True),
                   f"The gradient grows {growth:.3g}x back through the sequence: the recurrent weights amplify "
                   "at every step."),
            Choice("gradient-clipping", target(context),
                   f"The gradient grows {growth:.3g}x back through the sequence: clipping bounds each update."),
            Choice("lower-lr", target(context)),
        ]
    choices = []
    bias = finding.evidence.get("forget_bias")
    if finding.evidence.get("type") == "LSTM":
        why = (f"The forget-gate bias is {bias:.3g}: the cell state is multiplied by ~sigmoid({bias:.3g}) at every step."
               if isinstance(bias, float) else "An LSTM remembers by default with a forget-gate bias of +1.")
        choices.append(Choice("fix-bias-init", target(context, finding.layers, forget_gate=True), why))
    choices.append(Choice("gradient-clipping", target(context)))
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    if "gradient_growth_back_in_time" in finding.evidence:
        growths = [g[0] for g in map(back_in_time_growth, evidence.recurrent) if g is not None]
        return Measure("gradient_growth_back_in_time", max(growths) if growths else None, DECADES_ABOVE)
    # the worst gradient ratio 10 steps back (or the sequence length) over the recurrent modules
    reaches = [reach[0] for reach in map(reach_back, evidence.recurrent) if reach is not None]
    return Measure("gradient_ratio_10_back", min(reaches) if reaches else None, DECADES)
