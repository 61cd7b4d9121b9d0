"""What a check's advice is made of: the model as the recommender sees it, and the choices.

Every check module holds its own advice (`advise(finding, context) -> list[Choice]`, the fix ids it
may return in `FIXES`); what they share lives here: `AdviceContext` (what the evidence says about
the model as a whole: its layers, depth, norm layers, optimizer, clipping threshold measured in the
short run...), `Choice` (a fix id, the snippet's target and the reason it applies here), and the
readings most rules need (which layers are mis-scaled, which init scheme they want, the user's
layer names for the snippet). Pure functions over plain records: no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diagnose.checks._signal import (
    INIT_TOLERANCE,
    by_index,
    flow_layers,
    preceding_weighted,
    reading_normalised_input,
    std_ratio,
)
from diagnose.fixes import ActivationCall, FixTarget
from diagnose.fixes.optimization import measured_clip_norm
from diagnose.severity import Severity
from probes.activations import RELU_LIKE

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from diagnose.findings import Finding
    from probes.records import LayerRecord

# From this many weighted layers a plain stack is "very deep": skip connections become the
# structural remedy (He et al. saw plain nets degrade past ~20 layers; 10 keeps margin).
VERY_DEEP = 10
# A bias whose size exceeds the spread of the layer's output decides the unit on its own.
BIAS_DOMINANCE = 1.0
# Fallback when the output spread is unknown: a bias of -1 or below in front of a ReLU.
NEGATIVE_BIAS = -1.0

# A symptom module's `ROOT_CAUSES` may be this: every check whose module declares `STOPS_LEARNING`
# (an error that stops learning whatever the rate), in the table's order. A stalled loss or tiny
# updates say little of their own beside one of those, and LR advice would mislead.
ANY_THAT_STOPS_LEARNING = "any check that stops learning"


@dataclass(frozen=True, slots=True)
class AdviceContext:
    """The model as a whole, as the evidence shows it: what every check's advice may consult."""

    layers: tuple[LayerRecord, ...]
    weighted: tuple[LayerRecord, ...]
    has_norm: bool
    has_conv: bool
    has_recurrent: bool
    plain_dense: bool
    optimizer: str
    lr: float
    inputs_unscaled: bool
    clip: tuple[float, int] | None  # gradient-clipping's threshold from the short run, and its steps

    @property
    def depth(self) -> int:
        return len(self.weighted)

    @staticmethod
    def of(evidence: Evidence) -> AdviceContext:
        # imported here: unnormalized_inputs gives its own advice, so it imports this module
        from diagnose.checks import unnormalized_inputs

        layers = tuple(by_index(evidence.layers))
        weighted = tuple(flow_layers(layers))
        kinds = {r.kind for r in layers}
        loss = evidence.loss
        return AdviceContext(
            layers=layers,
            weighted=weighted,
            has_norm="norm" in kinds,
            has_conv="conv" in kinds,
            has_recurrent="recurrent" in kinds,
            plain_dense=bool(weighted) and all(r.kind == "linear" for r in weighted) and "norm" not in kinds,
            optimizer=evidence.run.optimizer,
            lr=evidence.run.lr,
            inputs_unscaled=any(
                unnormalized_inputs.unscaled(s, unnormalized_inputs.THRESHOLDS) for s in evidence.inputs
            ),
            clip=measured_clip_norm(loss.history, loss.gradient_norms) if loss is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Choice:
    """One fix a check recommends: its id, what its snippet names, and why it applies here."""

    fix_id: str
    target: FixTarget
    reason: str = ""


def choose(context: AdviceContext, fix_ids: Iterable[str]) -> list[Choice]:
    """Fixes that need nothing but the run's settings, with no reason of their own."""
    return [Choice(fix_id, target(context)) for fix_id in fix_ids]


def root_cause(findings: Sequence[Finding], causes: Sequence[str]) -> Finding | None:
    """The first of `causes` (check ids, in order) among the error findings, if any."""
    errors = {f.id: f for f in findings if f.severity is Severity.ERROR}
    return next((errors[i] for i in causes if i in errors), None)


def target(context: AdviceContext, layers: Sequence[str] = (), **extra) -> FixTarget:
    """What a snippet needs: these layers by name, the activations called as functions among them
    (with their caller) and the weighted layers feeding them, and the run's settings."""
    activations = [r for r in records(context, layers) if r.kind == "activation"]
    calls = tuple(
        ActivationCall(name=r.name, family=r.activation_kind or r.type, owner=r.owner, after=r.input_from or None,
                       calls=r.calls)
        for r in activations if r.source == "function"
    )
    feeders = by_index({f.name: f for f in (preceding_weighted(context.layers, r) for r in activations) if f}.values())
    return FixTarget(
        layers=tuple(layers), calls=calls, feeders=tuple(f.name for f in feeders),
        optimizer=context.optimizer, lr=context.lr,
        recurrent=context.has_recurrent, conv=context.has_conv,
        clip_norm=context.clip[0] if context.clip else None, clip_steps=context.clip[1] if context.clip else 0,
        **extra,
    )


def records(context: AdviceContext, names: Iterable[str]) -> list[LayerRecord]:
    wanted = set(names)
    return [r for r in context.layers if r.name in wanted]


def weighted_of(context: AdviceContext, finding: Finding) -> list[LayerRecord]:
    """The weighted layers a finding is about: its own, or those feeding its activation layers."""
    chosen: list[LayerRecord] = []
    for record in records(context, finding.layers):
        if record.weight is not None and record.kind in ("linear", "conv"):
            chosen.append(record)
        elif record.kind == "activation":
            feeding = preceding_weighted(context.layers, record)
            if feeding is not None:
                chosen.append(feeding)
    unique = {r.name: r for r in chosen}
    return by_index(unique.values())


def init_family(record: LayerRecord) -> str:
    followed = record.followed_by or "none"
    if followed == "selu":
        return "selu"
    if followed in RELU_LIKE:
        return "relu"
    return "glorot"  # tanh, sigmoid and no activation all want Glorot


def dominant_activation(context: AdviceContext, records: Sequence[LayerRecord]) -> str | None:
    counts = Counter(r.followed_by for r in records if r.followed_by and r.followed_by != "none")
    if not counts:
        counts = Counter(r.activation_kind for r in context.layers if r.activation_kind)
    return counts.most_common(1)[0][0] if counts else None


def judged_std_ratio(record: LayerRecord) -> float | None:
    """`std_ratio`, except for weights that feed a norm layer (their scale does not matter)."""
    if record.weight is None or record.weight.normalized:
        return None
    return std_ratio(record)


def misscaled(records: Sequence[LayerRecord], direction: str) -> list[LayerRecord]:
    off = []
    for record in records:
        ratio = judged_std_ratio(record)
        if ratio is None:
            continue
        if (direction == "small" and ratio < 1 / INIT_TOLERANCE) or (direction == "large" and ratio > INIT_TOLERANCE):
            off.append(record)
    return off


INIT_FIX = {"relu": "he-init", "glorot": "glorot-init", "selu": "lecun-init"}
INIT_NAME = {"relu": "He", "glorot": "Glorot", "selu": "LeCun"}


def init_choices(context: AdviceContext, records: Sequence[LayerRecord], why: str = "") -> list[Choice]:
    """One init fix per scheme the layers need, the scheme with the most layers first."""
    groups: dict[str, list[LayerRecord]] = {}
    for record in records:
        if record.weight is None or record.kind not in ("linear", "conv"):
            continue
        groups.setdefault(init_family(record), []).append(record)
    choices = []
    for family, group in sorted(groups.items(), key=lambda item: -len(item[1])):
        ratios = [r for r in (judged_std_ratio(x) for x in group) if r is not None]
        measured = f" (their std is ~{sorted(ratios)[len(ratios) // 2]:.2g}x the {INIT_NAME[family]} value)" if ratios else ""
        activation = dominant_activation(context, group)
        reason = why or f"{names(group)} feed {activation or 'no activation'}{measured}."
        choices.append(Choice(INIT_FIX[family], target(context, [r.name for r in group], activation=activation), reason))
    return choices


def names(records: Sequence[LayerRecord], limit: int = 3) -> str:
    """The first `limit` layers' names, and how many more there are."""
    listed = [r.name for r in records]
    shown = ", ".join(listed[:limit])
    return shown + (f" and {len(listed) - limit} more" if len(listed) > limit else "")


def hidden_activations(context: AdviceContext, families: Iterable[str]) -> list[LayerRecord]:
    """The hidden activations of these families (an output activation after the last weighted layer
    sets the output's range; swapping it is not the fix)."""
    wanted = set(families)
    last = max((r.index for r in context.weighted), default=None)
    return [r for r in context.layers
            if r.kind == "activation" and r.activation_kind in wanted and (last is None or r.index < last)]


def hidden_feeders(context: AdviceContext) -> list[LayerRecord]:
    return [r for r in context.weighted if r.followed_by and r.followed_by != "none"]


def bias_dominates(record: LayerRecord, negative_only: bool = False) -> bool:
    w = record.weight
    if w is None or w.bias_mean is None or not math.isfinite(w.bias_mean):
        return False
    if negative_only and w.bias_mean >= 0:
        return False
    spread = record.activation.std
    if spread is not None and math.isfinite(spread) and spread > 0:
        # The output's spread across units includes the biases' own spread; what matters is how
        # far the typical bias sits from zero compared with it.
        return abs(w.bias_mean) >= BIAS_DOMINANCE * spread
    return w.bias_mean <= NEGATIVE_BIAS if negative_only else abs(w.bias_mean) >= -NEGATIVE_BIAS


def loud_norm_readers(context: AdviceContext) -> list[LayerRecord]:
    """Layers reading a norm layer's output whose weight std is above LeCun's 1/sqrt(fan_in) by more
    than INIT_TOLERANCE: they amplify unit-scale features at every block (a transformer at a large
    init range). LeCun's scale preserves the variance of normalised inputs whatever follows."""
    return [r for r, _ in reading_normalised_input(context.layers) if lecun_excess(r) > INIT_TOLERANCE]


def lecun_excess(record: LayerRecord) -> float:
    """The layer's weight std over 1/sqrt(fan_in) (0 when the fan-in is unknown)."""
    fan_in = record.weight.fan_in if record.weight is not None else None
    return record.weight.std * math.sqrt(fan_in) if fan_in else 0.0


def lecun_choice(context: AdviceContext, loud: Sequence[LayerRecord]) -> Choice:
    """`lecun-init` for layers `loud_norm_readers` found, with the measured excess as the reason."""
    excess = sorted(lecun_excess(r) for r in loud)
    return Choice("lecun-init", target(context, [r.name for r in loud]),
                  f"{names(loud)} read normalised features with weights ~{excess[len(excess) // 2]:.2g}x "
                  "1/sqrt(fan_in).")
