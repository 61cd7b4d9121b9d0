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
std or the output-gradient norm changes by `signal_change` (1000x) in the matching direction, or
(too large only) the activations after the run are saturated.

Networks that normalise before each block (transformers) have no plain runs: their linear layers
read a norm layer's unit-scale output. There the check reads each such layer's forward gain
(output std / input std) and its weight std against 1/sqrt(fan_in), the variance-preserving scale.
It fires when at least `share` of them (and `min_layers` at least) amplify by `normalised_gain`
(4x) or more with weights 4x or more that scale, and it shows: an initial loss at least twice
chance, or a short run that does not train. Healthy recipes sit at gains of 0.3-1.5 (GPT-2, BERT,
T5, Llama, ViT); GPT-2 built with `initializer_range=1.0` sits at 16x.

The short run judges severity: when it trains normally (the loss falls at least 10 % and below
chance), the finding is an `info`: the scale is off, and training copes (AlexNet at PyTorch's
default init). Otherwise a warning for plain stacks; an error for normalised-input layers whose run
does not train (the network will not train as configured).

Severity: warning (error for layers reading normalised inputs whose short run does not
train); info when the short run trains normally.

## Example
`nn.Sequential` of 30 `Linear(32, 32)` + `ReLU` initialised with `xavier_normal_`: every layer has
0.71x the He std, and the signal falls 1e5x across the stack.

## Fixes
`he-init`, `glorot-init` or `lecun-init`, whichever the layers' activation needs; the snippet
re-initialises exactly the flagged layers. In a sigmoid/tanh stack whose gradient vanishes, or a
run of five or more sigmoid layers (0.25^5 ~ 1e-3 of the gradient at best), `relu` (with He init)
comes first: at the right scale the activation's slope still shrinks the gradient.

## Options
`tolerance`, `share`, `min_layers`, `signal_change`, `saturated_fraction`, `normalised_gain`.

## References
- Glorot & Bengio, 2010; He et al., 2015; Klambauer et al., "Self-Normalizing Neural Networks", 2017.
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (F-test of weight std against LeCun/He/Glorot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks import vanishing_gradients
from diagnose.checks._advice import (
    AdviceContext,
    Choice,
    dominant_activation,
    hidden_activations,
    init_choices,
    names,
    records,
    target,
    weighted_of,
)
from diagnose.checks._model import DECADES, Measure
from diagnose.checks._signal import (
    INIT_TOLERANCE,
    activation_trend,
    fmt_ratio,
    output_gradient_norm,
    plain_runs,
    reading_normalised_input,
    relaxed_when_trained,
    std_ratio,
    trained_normally,
)
from diagnose.findings import Finding
from diagnose.severity import Severity
from probes.activations import SATURATING

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from probes.records import LayerRecord

ID = "poor-initialization"
# 25 % either way (checks/_signal.py says why); one number for every check that judges init scale.
TOLERANCE = INIT_TOLERANCE
# Most of the run must be off the same way for the errors to compound.
SHARE = 0.75
MIN_LAYERS = 3
# Three orders of magnitude across the run (vanishing-gradients' and AUTOTRAINER's bar): the effect
# that makes training fail. A 3-layer default-init ReLU MLP changes ~6x and trains fine; AlexNet at
# PyTorch's default init (0.41x He) changes ~250x over its 8 layers and trains, where He init makes
# it diverge at lr 0.01 (docs/calibration.md); 30 ReLU layers with Xavier change ~1e5x.
SIGNAL_CHANGE = 1000.0
# Same bar as saturated-activations: half the outputs flat is the visible effect of too-large weights.
SATURATED_FRACTION = 0.5
# Layers reading a norm layer's output: a variance-preserving init gives a forward gain ~1 and the
# transformer recipes ~0.3-0.6; 4x is past any recipe (He for GELU: 1.4x) and short of the blow-up
# (GPT-2 with initializer_range=1.0: 16x).
NORMALISED_GAIN = 4.0
# Twice chance: logits far too confident at init (the effect bad-initial-loss reports).
INITIAL_LOSS_FACTOR = 2.0

THRESHOLDS: dict[str, float] = {
    "tolerance": TOLERANCE,
    "share": SHARE,
    "min_layers": MIN_LAYERS,
    "signal_change": SIGNAL_CHANGE,
    "saturated_fraction": SATURATED_FRACTION,
    "normalised_gain": NORMALISED_GAIN,
}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    findings = []
    for run in plain_runs(evidence.layers):
        finding = _judge_run(evidence, run, thresholds)
        if finding is not None:
            findings.append(finding)
    finding = _judge_normalised_inputs(evidence, thresholds)
    if finding is not None:
        findings.append(finding)
    # Off-scale weights whose effect the short run shrugs off: a fact, not a fault.
    return [relaxed_when_trained(evidence, f) for f in findings]


def _judge_normalised_inputs(evidence: Evidence, thresholds: Mapping[str, float]) -> Finding | None:
    """Transformer-style nets: weights read normalised features, so judge their gain, not a chain.

    A norm layer before each branch resets the stream's scale, so no plain run exists and the
    chain rule above never sees these layers. What a too-large init does here is make every
    layer amplify its unit-scale input many times over: attention logits and MLP outputs blow
    up, and the residual stream with them.
    """
    readers = reading_normalised_input(evidence.layers)
    if len(readers) < thresholds["min_layers"]:
        return None
    gain_limit = thresholds["normalised_gain"]
    loud = [
        (r, g) for r, g in readers
        if g >= gain_limit and r.weight.expected_std and r.weight.std >= gain_limit * _variance_preserving_std(r)
    ]
    if len(loud) < thresholds["share"] * len(readers):
        return None
    effect = _normalised_effect(evidence)
    if effect is None:
        return None
    gains = sorted(g for _, g in loud)
    typical = gains[len(gains) // 2]
    example = max(loud, key=lambda item: item[1])[0]
    preserving = _variance_preserving_std(example)
    return Finding(
        id=ID,
        severity=Severity.WARNING if trained_normally(evidence)[0] else Severity.ERROR,
        title="Weights are initialised far too large for their normalised inputs",
        message=(
            f"{len(loud)} of {len(readers)} layers that read a norm layer's output amplify it ~{typical:.2g}x "
            f"(e.g. {example.name}: weight std {example.weight.std:.3g}, where 1/sqrt(fan_in) = {preserving:.3g}); "
            f"{effect[2]}; initialise them with std ~0.02 (the GPT-2/BERT recipe) or 1/sqrt(fan_in)"
        ),
        layers=tuple(r.name for r, _ in loud),
        evidence={
            "median_gain": typical,
            "layers_off": len(loud),
            "layers_judged": len(readers),
            "direction": "large",
            "scheme": "lecun",
            "effect": effect[0],
            "effect_value": effect[1],
            f"{example.name}.std": example.weight.std,
            f"{example.name}.expected_std": preserving,
        },
    )


def _variance_preserving_std(record: LayerRecord) -> float:
    fan_in = record.weight.fan_in
    if fan_in:
        return 1.0 / math.sqrt(fan_in)
    return record.weight.expected_std or 0.0


def _normalised_effect(evidence: Evidence) -> tuple[str, float, str] | None:
    """What the over-amplification does to training: a loss far above chance, or a run that fails."""
    loss = evidence.loss
    if loss is not None and loss.initial is not None and loss.expected_initial and math.isfinite(loss.initial):
        if loss.initial >= INITIAL_LOSS_FACTOR * loss.expected_initial:
            return ("initial_loss", loss.initial,
                    f"the initial loss is {loss.initial:.3g} against {loss.expected_initial:.3g} at chance")
    trained, words = trained_normally(evidence)
    if evidence.run.steps > 0 and not trained:
        return "short_run_trained", 0.0, f"the short run does not train ({words or 'loss not finite'})"
    return None



def _judge_run(evidence: Evidence, run: list[LayerRecord], thresholds: Mapping[str, float]) -> Finding | None:
    judged = [r for r in run if not r.weight.normalized and not r.weight.frozen and std_ratio(r) is not None]
    if len(judged) < thresholds["min_layers"]:
        return None
    ratios = {r.name: std_ratio(r) for r in judged}
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


# Sigmoid-like slopes are at most 1/4: this many layers in a row take the gradient down by 0.25^5 ~ 1e-3
# (vanishing-gradients' threshold) whatever the weight scale, so the scale alone is not the cure
# (measured on the corpus's 12-layer sigmoid MLP at N(0, 1): Glorot leaves the short-run loss at 2.36,
# ReLU with He init takes it to 1.61).
SIGMOID_LIKE = ("sigmoid", "hardsigmoid", "logsigmoid")
DEEP_SIGMOID_LAYERS = 5

# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("lecun-init", "he-init", "glorot-init", "relu")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    if finding.evidence.get("scheme") == "lecun" and finding.evidence.get("median_gain"):
        # Layers reading a norm layer's output: the variance-preserving scale is 1/sqrt(fan_in)
        # whatever follows (transformer recipes use about that or less: N(0, 0.02)).
        layers = list(finding.layers)
        gain = finding.evidence["median_gain"]
        return [Choice(
            "lecun-init", target(context, layers),
            f"{names(records(context, layers))} read normalised features and amplify them ~{gain:.2g}x; "
            "std 1/sqrt(fan_in) keeps their output at the scale of their input (GPT-2 and BERT use 0.02).",
        )]
    chosen = weighted_of(context, finding)
    choices = init_choices(context, chosen)
    activation = dominant_activation(context, chosen)
    effect = finding.evidence.get("effect_value")
    acts = hidden_activations(context, [activation]) if activation in SATURATING else []
    vanished = (finding.evidence.get("effect") == "gradient_ratio_first_last" and isinstance(effect, float)
                and effect < vanishing_gradients.RATIO)
    deep_sigmoid = activation in SIGMOID_LIKE and len(acts) >= DEEP_SIGMOID_LAYERS
    if acts and (vanished or deep_sigmoid):
        # At the Glorot scale a deep sigmoid/tanh stack still shrinks the gradient by the
        # activation's slope at every layer (measured: the ratio stays orders of magnitude low), so
        # the scale alone does not make it train: ReLU with He init fixes the scale and the slope.
        why = (f"The gradient falls {effect:.1e}x through {activation} layers" if vanished
               else f"{len(acts)} {activation} layers in a row pass at most 0.25^{len(acts)} of the gradient")
        choices.insert(0, Choice("relu", target(context, [r.name for r in acts], activation=activation),
                                 f"{why}; the right scale for {activation} does not change its slope."))
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    ratios = sorted(
        std_ratio(r) for r in evidence.layers
        if r.weight is not None and not r.weight.normalized and not r.weight.frozen and std_ratio(r) is not None
    )
    return Measure("median_std_ratio", ratios[len(ratios) // 2] if ratios else None, DECADES)
