"""Findings -> the same findings with their fixes, ordered best first for this model.

A pure function of the findings and the evidence: which activations the affected layers feed, how
deep the network is, whether it is dense, convolutional or recurrent, whether it already normalises,
what the weights and biases measure. Each suggestion's snippet names the user's own layers; its
rationale says why it applies here, then why it works in general. No torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from diagnose.checks._signal import (
    INIT_TOLERANCE,
    RELU_LIKE,
    SATURATING,
    by_index,
    flow_layers,
    preceding_weighted,
    std_ratio,
)
from diagnose.checks.unnormalized_inputs import THRESHOLDS as INPUT_THRESHOLDS
from diagnose.checks.vanishing_gradients import RATIO as VANISHING_RATIO
from diagnose.checks.unnormalized_inputs import unscaled
from diagnose.findings import Finding, FixSuggestion
from diagnose.fixes import FIXES, FixTarget
from diagnose.fixes._model import ActivationCall, Widening
from diagnose.fixes.optimization import measured_clip_norm
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from probes.records import LayerRecord

# From this many weighted layers a plain stack is "very deep": skip connections become the
# structural remedy (He et al. saw plain nets degrade past ~20 layers; 10 keeps margin).
VERY_DEEP = 10
# A bias whose size exceeds the spread of the layer's output decides the unit on its own.
BIAS_DOMINANCE = 1.0
# Fallback when the output spread is unknown: a bias of -1 or below in front of a ReLU.
NEGATIVE_BIAS = -1.0
# Mean update/weight ratios below this during the run mean the steps are too small to matter.
SMALL_UPDATE = 1e-3
# ... and above this they are large enough to be the problem.
LARGE_UPDATE = 1e-1
# A first/last gradient ratio below this has vanished for training: vanishing-gradients' own threshold.
VANISHED = VANISHING_RATIO


@dataclass(frozen=True, slots=True)
class _Context:
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


@dataclass(frozen=True, slots=True)
class _Choice:
    fix_id: str
    target: FixTarget
    reason: str


def recommend(findings: Iterable[Finding], evidence: Evidence) -> list[Finding]:
    """Attach ordered `FixSuggestion`s to each finding (findings keep their order)."""
    findings = list(findings)
    context = _context(evidence)
    result = []
    for finding in findings:
        choices = _deduplicate(_RULES.get(finding.id, _no_fix)(finding, context))
        root = _root_cause(findings, finding.id) if finding.id in _SYMPTOMS else None
        if root is not None:
            finding = replace(
                finding,
                message=f"{finding.message}; probably a consequence of {root.id}: fix that first",
                evidence={**finding.evidence, "likely_cause": root.id},
            )
        result.append(finding.with_fixes(tuple(_suggestion(c) for c in choices)))
    return result


# A stalled loss or tiny updates say little of their own when the network is already broken in
# a way that stops learning: the structural error is the cause, and the LR advice would mislead.
_SYMPTOMS = frozenset({"loss-not-decreasing", "lr-too-low", "lr-too-high"})
_ROOT_CAUSES = (
    "eval-mode-export", "non-finite", "output-loss-mismatch", "no-gradient", "dead-relu", "vanishing-gradients",
    "saturated-activations", "activation-variance-collapse",
)


# A diverging loss is the learning rate's fault unless the network already blows up at init.
_CAUSES_OF_DIVERGENCE = (
    "non-finite", "output-loss-mismatch", "residual-stream-growth", "exploding-gradients",
    "activation-variance-explosion", "poor-initialization",
)


def _root_cause(findings: Sequence[Finding], symptom: str = "") -> Finding | None:
    errors = {f.id: f for f in findings if f.severity is Severity.ERROR}
    causes = _CAUSES_OF_DIVERGENCE if symptom == "lr-too-high" else _ROOT_CAUSES
    return next((errors[i] for i in causes if i in errors), None)


def _context(evidence: Evidence) -> _Context:
    layers = tuple(by_index(evidence.layers))
    weighted = tuple(flow_layers(layers))
    kinds = {r.kind for r in layers}
    loss = evidence.loss
    return _Context(
        layers=layers,
        weighted=weighted,
        has_norm="norm" in kinds,
        has_conv="conv" in kinds,
        has_recurrent="recurrent" in kinds,
        plain_dense=bool(weighted) and all(r.kind == "linear" for r in weighted) and "norm" not in kinds,
        optimizer=evidence.run.optimizer,
        lr=evidence.run.lr,
        inputs_unscaled=any(unscaled(s, INPUT_THRESHOLDS) for s in evidence.inputs),
        clip=measured_clip_norm(loss.history, loss.gradient_norms) if loss is not None else None,
    )


def _suggestion(choice: _Choice) -> FixSuggestion:
    fix = FIXES[choice.fix_id]
    rationale = f"{choice.reason} {fix.rationale}" if choice.reason else fix.rationale
    return FixSuggestion(id=fix.id, title=fix.title, rationale=rationale, snippet=fix.snippet(choice.target))


def _deduplicate(choices: Sequence[_Choice]) -> list[_Choice]:
    seen, kept = set(), []
    for choice in choices:
        if choice.fix_id not in seen:
            seen.add(choice.fix_id)
            kept.append(choice)
    return kept


# ---------------------------------------------------------------- reading the context


def _target(context: _Context, layers: Sequence[str] = (), **extra) -> FixTarget:
    activations = [r for r in _records(context, layers) if r.kind == "activation"]
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


def _records(context: _Context, names: Iterable[str]) -> list[LayerRecord]:
    wanted = set(names)
    return [r for r in context.layers if r.name in wanted]


def _weighted_of(context: _Context, finding: Finding) -> list[LayerRecord]:
    """The weighted layers a finding is about: its own, or those feeding its activation layers."""
    chosen: list[LayerRecord] = []
    for record in _records(context, finding.layers):
        if record.weight is not None and record.kind in ("linear", "conv"):
            chosen.append(record)
        elif record.kind == "activation":
            feeding = preceding_weighted(context.layers, record)
            if feeding is not None:
                chosen.append(feeding)
    unique = {r.name: r for r in chosen}
    return by_index(unique.values())


def _family(record: LayerRecord) -> str:
    followed = record.followed_by or "none"
    if followed == "selu":
        return "selu"
    if followed in RELU_LIKE:
        return "relu"
    return "glorot"  # tanh, sigmoid and no activation all want Glorot


def _dominant_activation(context: _Context, records: Sequence[LayerRecord]) -> str | None:
    counts = Counter(r.followed_by for r in records if r.followed_by and r.followed_by != "none")
    if not counts:
        counts = Counter(r.activation_kind for r in context.layers if r.activation_kind)
    return counts.most_common(1)[0][0] if counts else None


def _std_ratio(record: LayerRecord) -> float | None:
    """`std_ratio`, except for weights that feed a norm layer (their scale does not matter)."""
    if record.weight is None or record.weight.normalized:
        return None
    return std_ratio(record)


def _misscaled(records: Sequence[LayerRecord], direction: str) -> list[LayerRecord]:
    off = []
    for record in records:
        ratio = _std_ratio(record)
        if ratio is None:
            continue
        if (direction == "small" and ratio < 1 / INIT_TOLERANCE) or (direction == "large" and ratio > INIT_TOLERANCE):
            off.append(record)
    return off


_INIT_FIX = {"relu": "he-init", "glorot": "glorot-init", "selu": "lecun-init"}
_INIT_NAME = {"relu": "He", "glorot": "Glorot", "selu": "LeCun"}


def _init_choices(context: _Context, records: Sequence[LayerRecord], why: str = "") -> list[_Choice]:
    """One init fix per scheme the layers need, the scheme with the most layers first."""
    groups: dict[str, list[LayerRecord]] = {}
    for record in records:
        if record.weight is None or record.kind not in ("linear", "conv"):
            continue
        groups.setdefault(_family(record), []).append(record)
    choices = []
    for family, group in sorted(groups.items(), key=lambda item: -len(item[1])):
        ratios = [r for r in (_std_ratio(x) for x in group) if r is not None]
        measured = f" (their std is ~{sorted(ratios)[len(ratios) // 2]:.2g}x the {_INIT_NAME[family]} value)" if ratios else ""
        activation = _dominant_activation(context, group)
        reason = why or f"{_names(group)} feed {activation or 'no activation'}{measured}."
        choices.append(_Choice(_INIT_FIX[family], _target(context, [r.name for r in group], activation=activation), reason))
    return choices


def _names(records: Sequence[LayerRecord], limit: int = 3) -> str:
    names = [r.name for r in records]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _activation_records(context: _Context, families: Iterable[str]) -> list[LayerRecord]:
    """The hidden activations of these families (an output activation after the last weighted layer
    sets the output's range; swapping it is not the fix)."""
    wanted = set(families)
    last = max((r.index for r in context.weighted), default=None)
    return [r for r in context.layers
            if r.kind == "activation" and r.activation_kind in wanted and (last is None or r.index < last)]


def _hidden_feeders(context: _Context) -> list[LayerRecord]:
    return [r for r in context.weighted if r.followed_by and r.followed_by != "none"]


# ---------------------------------------------------------------- one rule per check id


def _vanishing(finding: Finding, context: _Context) -> list[_Choice]:
    hidden = _hidden_feeders(context) or list(context.weighted)
    activation = _dominant_activation(context, hidden)
    choices: list[_Choice] = []
    small = _misscaled(hidden, "small")
    if activation in SATURATING:
        # The cause is the activation's slope (at most 1/4 for sigmoid), compounding layer after
        # layer: activations whose slope is 1 fix it, SELU first in a plain dense stack (made for
        # one: it also keeps the scale), then ReLU; a norm layer resets the scale. Re-scaling the
        # weights for the sigmoid (Glorot) leaves the slope as it is: measured, it does not cure
        # it, so it comes last.
        acts = _activation_records(context, [activation])
        relu = _Choice("relu", _target(context, [r.name for r in acts], activation=activation),
                       f"The hidden layers use {activation} ({len(acts)} calls per forward).")
        if context.plain_dense:
            choices.append(_Choice("selu", _target(context),
                                   f"This is a plain stack of dense layers with {activation} between them."))
        choices.append(relu)
    elif activation == "selu":
        choices += _init_choices(context, hidden)
    else:
        choices += _init_choices(context, small)
    if not context.has_norm and not context.has_recurrent:
        choices.append(_Choice("batch-norm", _target(context, [r.name for r in hidden]),
                               "No normalisation layer resets the scale between these layers."))
    if activation in SATURATING and small:
        choices += _init_choices(context, small)
    if context.depth >= VERY_DEEP:
        choices.append(_Choice("residual-connections", _target(context, [r.name for r in hidden]),
                               f"The stack has {context.depth} weighted layers and no skip path."))
    if activation in RELU_LIKE and not small:
        choices += _init_choices(context, hidden)
    return choices


def _exploding(finding: Finding, context: _Context) -> list[_Choice]:
    hidden = _hidden_feeders(context) or list(context.weighted)
    large = _misscaled(hidden, "large")
    clip = _Choice("gradient-clipping", _target(context),
                   "Recurrent layers repeat the same weights at every time step, so gradients compound."
                   if context.has_recurrent else "")
    lower = _Choice("lower-lr", _target(context), "")
    norm = _Choice("batch-norm", _target(context, [r.name for r in hidden]), "")
    if context.has_recurrent:
        return [clip, lower] + _init_choices(context, large)
    if large:
        # The init is the cause: re-scaling it, or a norm layer that resets the scale, cures it;
        # clipping and a lower rate only bound the steps of a network that still explodes at init.
        choices = _init_choices(context, large)
        if not context.has_norm:
            choices.append(norm)
        return choices + [clip, lower]
    choices = [clip, lower] + _init_choices(context, hidden)
    if not context.has_norm:
        choices.append(norm)
    return choices


def _dead_relu(finding: Finding, context: _Context) -> list[_Choice]:
    dead = [r for r in _records(context, finding.layers) if r.kind == "activation"]
    feeders = [f for f in (preceding_weighted(context.layers, r) for r in dead) if f is not None]
    negative = [f for f in feeders if _bias_dominates(f, negative_only=True)]
    during_run = bool(finding.evidence.get("died_during_run"))
    choices: list[_Choice] = []
    large = _misscaled(feeders, "large")
    if large and during_run:
        # Units knocked out in the run by an oversized init: the first steps are huge whatever the
        # rate (a lower one measurably still diverges); the init's scale is the cause.
        choices += _init_choices(context, large)
    if negative:
        mean = negative[0].weight.bias_mean
        choices.append(_Choice("fix-bias-init", _target(context, [f.name for f in negative]),
                               f"{_names(negative)} have biases around {mean:.3g}, below the spread of their outputs."))
    if during_run:
        choices.append(_Choice("lower-lr", _target(context), "Units died during the short run, not at initialisation."))
    modules = [r.name for r in dead]
    choices.append(_Choice("leaky-relu", _target(context, modules, activation="relu"), ""))
    choices.append(_Choice("elu", _target(context, modules, activation="relu"), ""))
    # Re-initialising only helps layers whose scale is off; at the right scale it changes nothing.
    choices += _init_choices(context, _misscaled(feeders, "small") + _misscaled(feeders, "large"))
    choices.append(_Choice("lower-lr", _target(context), ""))
    return choices


def _bias_dominates(record: LayerRecord, negative_only: bool = False) -> bool:
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


def _saturated(finding: Finding, context: _Context) -> list[_Choice]:
    acts = [r for r in _records(context, finding.layers) if r.kind == "activation"]
    feeders = _weighted_of(context, finding)
    activation = str(finding.evidence.get("activation") or _dominant_activation(context, feeders) or "tanh")
    large = _misscaled(feeders, "large")
    biased = [f for f in feeders if _bias_dominates(f)]
    choices: list[_Choice] = []
    if large:
        choices += _init_choices(context, large)
    if biased:
        choices.append(_Choice("fix-bias-init", _target(context, [f.name for f in biased]),
                               f"The biases of {_names(biased)} are large next to their outputs' spread."))
    if context.inputs_unscaled:
        choices.append(_Choice("normalize-inputs", _target(context), "The real inputs are not standardised."))
    if not context.has_recurrent:
        choices.append(_Choice("relu", _target(context, [r.name for r in acts], activation=activation), ""))
    if not context.has_norm and not context.has_recurrent:
        choices.append(_Choice("batch-norm", _target(context, [f.name for f in feeders]), ""))
    if not large:
        choices += _init_choices(context, feeders)
    return choices


def _variance(finding: Finding, context: _Context) -> list[_Choice]:
    run = _weighted_of(context, finding)
    # The hidden layers carry the trend; the output layer's own scheme (Glorot, no activation)
    # re-scales one layer and measurably leaves the trend as it is.
    hidden = [r for r in run if r.followed_by and r.followed_by != "none"] or run
    choices = _init_choices(context, hidden)
    if not context.has_norm:
        choices.append(_Choice("batch-norm", _target(context, [r.name for r in run]), ""))
    if finding.id == "activation-variance-collapse" and len(run) >= VERY_DEEP:
        choices.append(_Choice("residual-connections", _target(context, [r.name for r in run]),
                               f"The plain run is {len(run)} layers deep."))
    if finding.id == "activation-variance-explosion":
        choices.append(_Choice("gradient-clipping", _target(context), ""))
    return choices


def _residual_growth(finding: Finding, context: _Context) -> list[_Choice]:
    layers = list(finding.layers)
    return [
        _Choice("batch-norm", _target(context, layers),
                "Each residual branch adds its variance to the stream and nothing resets it; a norm layer after "
                "each conv (or a zero-initialised gain on each branch, as in Fixup and SkipInit) keeps the "
                "stream at the scale of its input."),
        _Choice("gradient-clipping", _target(context), "A stopgap while the growth is there: it bounds the first steps."),
    ]


def _recurrent_flow(finding: Finding, context: _Context) -> list[_Choice]:
    growth = finding.evidence.get("gradient_growth_back_in_time")
    if isinstance(growth, float):
        # The recurrent matrix's gain above 1 is the cause: an orthogonal one has gain 1 and cures it
        # (measured on the corpus's chaotic RNN); clipping and a lower rate only bound the steps.
        return [
            _Choice("glorot-init", _target(context, finding.layers, recurrent_weights=True),
                    f"The gradient grows {growth:.3g}x back through the sequence: the recurrent weights amplify "
                    "at every step."),
            _Choice("gradient-clipping", _target(context),
                    f"The gradient grows {growth:.3g}x back through the sequence: clipping bounds each update."),
            _Choice("lower-lr", _target(context), ""),
        ]
    choices = []
    bias = finding.evidence.get("forget_bias")
    if finding.evidence.get("type") == "LSTM":
        why = (f"The forget-gate bias is {bias:.3g}: the cell state is multiplied by ~sigmoid({bias:.3g}) at every step."
               if isinstance(bias, float) else "An LSTM remembers by default with a forget-gate bias of +1.")
        choices.append(_Choice("fix-bias-init", _target(context, finding.layers, forget_gate=True), why))
    choices.append(_Choice("gradient-clipping", _target(context), ""))
    return choices


def _poor_init(finding: Finding, context: _Context) -> list[_Choice]:
    if finding.evidence.get("scheme") == "lecun" and finding.evidence.get("median_gain"):
        # Layers reading a norm layer's output: the variance-preserving scale is 1/sqrt(fan_in)
        # whatever follows (transformer recipes use about that or less: N(0, 0.02)).
        layers = list(finding.layers)
        gain = finding.evidence["median_gain"]
        return [_Choice(
            "lecun-init", _target(context, layers),
            f"{_names(_records(context, layers))} read normalised features and amplify them ~{gain:.2g}x; "
            "std 1/sqrt(fan_in) keeps their output at the scale of their input (GPT-2 and BERT use 0.02).",
        )]
    records = _weighted_of(context, finding)
    choices = _init_choices(context, records)
    activation = _dominant_activation(context, records)
    effect = finding.evidence.get("effect_value")
    if (activation in SATURATING and finding.evidence.get("effect") == "gradient_ratio_first_last"
            and isinstance(effect, float) and effect < VANISHED):
        # At the Glorot scale a deep sigmoid/tanh stack still shrinks the gradient by the
        # activation's slope at every layer (measured: the ratio stays orders of magnitude low), so
        # the scale alone does not make it train: ReLU with He init fixes the scale and the slope.
        acts = _activation_records(context, [activation])
        choices.insert(0, _Choice("relu", _target(context, [r.name for r in acts], activation=activation),
                                  f"The gradient falls {effect:.1e}x through {activation} layers; the right "
                                  f"scale for {activation} does not change its slope."))
    return choices


def _selu(finding: Finding, context: _Context) -> list[_Choice]:
    evidence = finding.evidence
    choices: list[_Choice] = []
    if evidence.get("not_lecun_layers"):
        feeders = [r for r in context.layers if r.weight is not None and r.followed_by == "selu"]
        choices.append(_Choice("lecun-init", _target(context, [r.name for r in _misscaled(feeders, "small") + _misscaled(feeders, "large")] or [r.name for r in feeders], activation="selu"),
                               "The layers feeding SELU are not LeCun-normal."))
    if evidence.get("norm_layers") or evidence.get("dropout_layers") or evidence.get("recurrent_layers"):
        choices.append(_Choice("selu", _target(context), "Self-normalisation needs a plain dense stack with AlphaDropout only."))
    if "input_std" in evidence:
        choices.append(_Choice("normalize-inputs", _target(context), "SELU's fixed point assumes standardised inputs."))
    return choices


def _non_finite(finding: Finding, context: _Context) -> list[_Choice]:
    source = str(finding.evidence.get("first_source", ""))
    choices: list[_Choice] = []
    if source.startswith("input"):
        choices.append(_Choice("normalize-inputs", _target(context, nonfinite_inputs=True),
                               f"The non-finite values come from the {source}."))
    bad_weights = [r for r in _records(context, finding.layers) if r.weight is not None and not math.isfinite(r.weight.std)]
    if bad_weights:
        choices += _init_choices(context, bad_weights, why=f"The weights of {_names(bad_weights)} hold NaN/Inf: re-initialise them.")
    if source.startswith("outputs"):
        choices += _init_choices(context, _misscaled(_hidden_feeders(context), "large"))
        choices.append(_Choice("gradient-clipping", _target(context), ""))
    return choices


def _bad_initial_loss(finding: Finding, context: _Context) -> list[_Choice]:
    head = list(finding.layers[-1:])
    head_records = _records(context, head)
    choices = []
    if context.inputs_unscaled:  # the cause, when present: unscaled inputs inflate every logit
        choices.append(_Choice("normalize-inputs", _target(context), "The real inputs are not standardised."))
    large = _misscaled(_hidden_feeders(context), "large")
    if large:  # the cause, when present: hidden layers that amplify the signal inflate every logit
        choices += _init_choices(context, large)
    choices.append(_Choice("fix-bias-init", _target(context, head, head=True),
                           f"The output layer {head[0]} starts confidently wrong." if head else ""))
    choices += _init_choices(context, head_records)
    return choices


def _unnormalized(finding: Finding, context: _Context) -> list[_Choice]:
    choices = [_Choice("normalize-inputs", _target(context), "")]
    if not context.has_norm:
        first = [r.name for r in context.weighted[:1]]
        choices.append(_Choice("batch-norm", _target(context, first), "If the inputs cannot be changed, normalise inside the model."))
    return choices


def _bottleneck(finding: Finding, context: _Context) -> list[_Choice]:
    widths = tuple((r.name, r.weight.fan_out) for r in _records(context, finding.layers) if r.weight and r.weight.fan_out)
    evidence = finding.evidence
    widening = None
    if widths and all(isinstance(evidence.get(k), int) for k in ("width_in", "width_out")):
        widening = Widening(layer=widths[0][0], width=widths[0][1], width_in=evidence["width_in"],
                            next_layer=str(evidence.get("next_layer") or "the next layer"),
                            width_out=evidence["width_out"])
    return [_Choice("widen-layer", _target(context, finding.layers, widths=widths, widening=widening), "")]


def _lr_too_high(finding: Finding, context: _Context) -> list[_Choice]:
    return [_Choice(i, _target(context), "") for i in ("lower-lr", "lr-warmup", "gradient-clipping", "lr-schedule")]


def _lr_too_low(finding: Finding, context: _Context) -> list[_Choice]:
    choices = [_Choice("higher-lr", _target(context), ""), _Choice("lr-schedule", _target(context), "")]
    if context.optimizer in ("sgd", "adagrad"):
        choices.append(_Choice("change-optimizer", _target(context), f"{context.optimizer} does not adapt its step size."))
    return choices


def _loss_flat(finding: Finding, context: _Context) -> list[_Choice]:
    update = finding.evidence.get("max_update_ratio")
    choices: list[_Choice] = []
    if isinstance(update, float) and update < SMALL_UPDATE:
        choices.append(_Choice("higher-lr", _target(context), f"Weights moved at most {update:.1e} of their norm per step."))
    elif isinstance(update, float) and update > LARGE_UPDATE:
        choices.append(_Choice("lower-lr", _target(context), f"Weights moved up to {update:.2g} of their norm per step."))
    elif isinstance(update, float) and context.optimizer == "sgd":
        # Healthy-sized steps that do not lower the loss: plain SGD zig-zagging across a ravine,
        # the case momentum was made for (a rate change would not help: the steps are not too small).
        choices.append(_Choice("change-optimizer", _target(context),
                               f"Weights move {update:.1e} of their norm per step, a healthy size, yet the loss "
                               "barely moves: plain SGD zig-zags across a ravine instead of following it."))
    choices.append(_Choice("change-optimizer", _target(context), ""))
    choices.append(_Choice("lr-schedule", _target(context), ""))
    if context.inputs_unscaled:
        choices.append(_Choice("normalize-inputs", _target(context), "The real inputs are not standardised."))
    return choices


def _adagrad(finding: Finding, context: _Context) -> list[_Choice]:
    return [_Choice("change-optimizer", _target(context), ""), _Choice("lr-schedule", _target(context), "")]


def _no_fix(finding: Finding, context: _Context) -> list[_Choice]:
    return []


_RULES = {
    "vanishing-gradients": _vanishing,
    "exploding-gradients": _exploding,
    "dead-relu": _dead_relu,
    "saturated-activations": _saturated,
    "activation-variance-collapse": _variance,
    "activation-variance-explosion": _variance,
    "poor-initialization": _poor_init,
    "residual-stream-growth": _residual_growth,
    "recurrent-gradient-flow": _recurrent_flow,
    "selu-misconfigured": _selu,
    "non-finite": _non_finite,
    "no-gradient": _no_fix,  # a wiring bug: the finding's message says what to look for
    "output-loss-mismatch": _no_fix,  # a line of forward to delete: the message says which
    "eval-mode-export": _no_fix,  # re-export in train mode: the message says how
    "bad-initial-loss": _bad_initial_loss,
    "unnormalized-inputs": _unnormalized,
    "bottleneck-layer": _bottleneck,
    "lr-too-high": _lr_too_high,
    "lr-too-low": _lr_too_low,
    "loss-not-decreasing": _loss_flat,
    "adagrad-deep-network": _adagrad,
}
