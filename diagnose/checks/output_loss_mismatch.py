"""The model's output is squashed before a loss that expects raw logits.

## What it detects
A classifier trained with cross-entropy whose outputs are already probabilities (a softmax at the
end of `forward`), or are otherwise confined to a bounded range (a sigmoid or tanh on the logits),
or cut at zero (a ReLU on the logits). The same family as a sigmoid output fed to
`BCEWithLogitsLoss`.

## Why it matters
`nn.CrossEntropyLoss` (and `F.cross_entropy`) applies its own log-softmax: it expects logits that
can range over the whole real line. Fed probabilities, every "logit" lies in [0, 1], so the best
the network can ever do is put 1 on the right class and 0 elsewhere, and the loss can never fall
below log(1 + (C-1)/e): 1.46 for 10 classes, against ln 10 = 2.30 at chance. The gradient is
squashed twice (through the softmax's own Jacobian too), so training crawls and stalls at that
floor. A tanh confines logits to [-1, 1] (floor log(1 + (C-1)/e^2): 0.80 for 10 classes); a ReLU
lets no logit go negative and passes no gradient to classes whose logit is at zero.

## How it is detected
From the prediction at initialisation, when the loss is the built-in cross-entropy:
- every row sums to 1 within `row_sum_tolerance` (1e-3) and the values lie in [0, 1]:
  probabilities, a softmax before the loss (error);
- the model's last layer is a sigmoid or tanh activation (module or function call) whose output
  is the prediction, and the values lie in its range: bounded logits (error);
- the last layer is a ReLU on the prediction and at least `zero_fraction` (0.25) of the outputs
  are exactly zero: a ReLU on the logits (warning: the loss can still fall, but half the logit
  range is lost).
A bounded range alone proves nothing at initialisation: healthy heads start with small logits (a
zero-initialised head outputs zeros), so only a row sum of one, or the squashing layer itself,
counts. The floor is computed for the number of classes and reported next to the chance level.

Severity: error for probabilities and bounded logits (the loss has a floor the network can never
get under: it will not train to fit), warning for a ReLU on the logits.

## Example
`torch.softmax(self.fc(x), dim=-1)` at the end of a ResNet's `forward`, trained with
`nn.CrossEntropyLoss()`: initial loss 2.30, and no amount of training takes it below 1.46.

## Fixes
No catalog fix applies: return the raw logits from `forward` (drop the final softmax, sigmoid,
tanh or ReLU) and apply softmax only where probabilities are needed (at inference, or
`F.softmax(logits, -1)` for metrics); or, to keep probabilities, train with `F.nll_loss(torch.log(p
+ 1e-12), y)` instead of cross-entropy. For binary targets use `BCEWithLogitsLoss` on logits, not
`BCELoss` on a sigmoid.

## Options
`row_sum_tolerance`, `zero_fraction`.

## References
- PyTorch docs, `torch.nn.CrossEntropyLoss`: "The input is expected to contain the unnormalized
  logits for each class".
- Goodfellow, Bengio & Courville, "Deep Learning", 6.2.2.3 (softmax units and log-likelihood).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "output-loss-mismatch"
# float32 softmax rows sum to 1 within ~1e-6 per element; 1e-3 leaves room for wide vocabularies
# while random logits (sums of order C) are nowhere near.
ROW_SUM_TOLERANCE = 1e-3
# A head of random logits has no exact zeros; a ReLU on it zeroes about half.
ZERO_FRACTION = 0.25

THRESHOLDS: dict[str, float] = {"row_sum_tolerance": ROW_SUM_TOLERANCE, "zero_fraction": ZERO_FRACTION}

# The losses that apply their own log-softmax to the prediction.
LOGIT_LOSSES = ("cross-entropy",)


def loss_floor(classes: int, low: float, high: float) -> float:
    """The lowest cross-entropy reachable with every logit in [low, high]: right class high, rest low."""
    return math.log(1.0 + (classes - 1) * math.exp(low - high))


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    output, loss = evidence.output, evidence.loss
    if output is None or loss is None or loss.kind not in LOGIT_LOSSES or not loss.num_classes:
        return []
    if not (math.isfinite(output.min) and math.isfinite(output.max)):
        return []
    classes = loss.num_classes
    numbers = {"output_min": output.min, "output_max": output.max, "classes": classes, "chance_loss": math.log(classes)}
    if output.min >= 0.0 and output.max <= 1.0 and output.max > 0.0 and output.row_sum_error <= thresholds["row_sum_tolerance"]:
        # Random logits never sum to one per row: this is a softmax, wherever it was applied.
        return [_bounded("softmax", "The output is softmax probabilities",
                         "probabilities (each row sums to 1: a softmax is applied before the loss)",
                         loss_floor(classes, 0.0, 1.0), numbers, output, _final_activation(evidence))]
    # Small logits at init are normal (a zero-initialised head outputs zeros), so a bounded range
    # alone proves nothing: the last layer must be the squashing activation itself.
    last = _final_activation(evidence)
    if last is None:
        return []
    family = last.activation_kind
    if family in ("sigmoid", "hardsigmoid") and output.min >= 0.0 and output.max <= 1.0:
        return [_bounded(family, "The logits are squashed into [0, 1]",
                         f"confined to [0, 1] by {last.name} ({family} on the logits)",
                         loss_floor(classes, 0.0, 1.0), numbers, output, last)]
    if family in ("tanh", "hardtanh", "softsign") and output.min >= -1.0 and output.max <= 1.0:
        return [_bounded(family, "The logits are squashed into [-1, 1]",
                         f"confined to [-1, 1] by {last.name} ({family} on the logits)",
                         loss_floor(classes, -1.0, 1.0), numbers, output, last)]
    if family in ("relu", "relu6") and output.min >= 0.0 and output.zero_fraction >= thresholds["zero_fraction"]:
        return [Finding(
            id=ID, severity=Severity.WARNING, title="The logits are cut at zero",
            message=(f"{last.name} ({family}) is applied to the logits fed to cross-entropy: {output.zero_fraction:.0%} "
                     "of them are exactly 0 and none can go negative, and classes at 0 get no gradient; return raw "
                     "logits from forward"),
            layers=(last.name,),
            evidence={**numbers, "squash": family, "zero_fraction": output.zero_fraction},
        )]
    return []


def _final_activation(evidence: Evidence):
    """The last probed layer when it is an activation whose output has the prediction's shape."""
    if not evidence.layers or evidence.output is None:
        return None
    last = max(evidence.layers, key=lambda r: r.index)
    if last.kind != "activation" or last.output_shape is None:
        return None
    if tuple(last.output_shape) != tuple(evidence.output.shape):
        return None
    return last


def _bounded(kind: str, title: str, what: str, floor: float, numbers: dict, output, last=None) -> Finding:
    return Finding(
        id=ID, severity=Severity.ERROR, title=title,
        layers=(last.name,) if last is not None else (),
        message=(f"the outputs fed to cross-entropy are {what}; cross-entropy applies its own log-softmax, so the "
                 f"loss can never go below {floor:.3g} (chance is {numbers['chance_loss']:.3g}); return raw logits "
                 "from forward"),
        evidence={**numbers, "squash": kind, "loss_floor": floor, "row_sum_error": output.row_sum_error},
    )


# The loss has a floor the network cannot get under whatever the rate.
STOPS_LEARNING = True

# A line of forward to delete (the output activation before a loss that applies its own): no
# catalog fix applies; the finding's message says which.
NO_FIX = "a line of forward to delete: the message says which"
