"""Reading signal and gradient flow out of per-layer records: the helpers several checks share.

Pure functions over `LayerRecord`s; no torch. Missing measurements (a TorchScript model has no
activations) come back as `None` or are left out, never as zeros: unknown is not healthy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from diagnose.checks._model import DECADES, Measure
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from diagnose.findings import Finding
    from probes.records import LayerRecord

# Layers whose output carries the signal from one stage to the next and whose parameters shape it.
FLOW_KINDS = ("linear", "conv", "recurrent", "attention", "embedding")
# Layers that form a plain feed-forward stack: an un-normalised run of them multiplies the signal's
# scale by each layer's gain, so init mistakes compound over depth.
STACK_KINDS = ("linear", "conv")
# Records of these kinds break a plain stack: they reset or re-mix the signal's scale.
STACK_BREAKERS = ("norm", "attention", "recurrent", "embedding")


def by_index(layers: Iterable[LayerRecord]) -> list[LayerRecord]:
    return sorted(layers, key=lambda r: r.index)


def numel(shape: Sequence[int] | None) -> int | None:
    if not shape:
        return None
    return math.prod(shape)


def is_finite_positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0.0


def output_gradient_norm(record: LayerRecord) -> float | None:
    """The L2 norm of dLoss/d(output) over the whole output tensor.

    The norm, not the per-element RMS: under a fan-in-preserving init the norm stays level through
    layers of any width, while the RMS jumps wherever the width changes (a 512-wide hidden layer
    under a 10-class head has a ~7x smaller RMS for no fault of its own).
    """
    rms = record.gradient.output_rms
    if not is_finite_positive(rms):
        return None
    count = numel(record.output_shape)
    return rms if count is None else rms * math.sqrt(count)


def flow_layers(layers: Iterable[LayerRecord]) -> list[LayerRecord]:
    """Weighted layers that train, in execution order."""
    return [r for r in by_index(layers) if r.kind in FLOW_KINDS and r.trainable_parameters > 0]


def log_linear_change(values: Sequence[float]) -> float:
    """Total change from the first to the last point of a least-squares line through log10(values).

    A fit over every layer, not one ratio: one odd layer (a wide head, a narrow embedding) cannot
    make or break the trend.
    """
    count = len(values)
    logs = [math.log10(v) for v in values]
    mean_x = (count - 1) / 2.0
    mean_y = sum(logs) / count
    spread = sum((x - mean_x) ** 2 for x in range(count))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(logs)) / spread
    return 10.0 ** (slope * (count - 1))


def flow_gradient_norm(record: LayerRecord, norm_after: LayerRecord | None = None) -> float | None:
    """The output-gradient norm that measures how much learning signal reaches `record`.

    For a layer whose output feeds a normalisation layer, the raw norm is not a property of the
    network but of the layer's weight scale: the norm divides its input by its std s, so
    dLoss/d(output) carries a factor 1/s (double the weights, halve the gradient; the loss is
    unchanged). What reaches such a layer is the gradient with respect to the normalised output.
    When the norm layer reads this layer's output directly (`norm_after`), that is the norm
    layer's own output gradient times its output std (the affine gain at init: 1, or 0 for a
    zero-initialised gain), which no bias or per-channel offset of this layer can change. Else it
    is approximated by the raw norm times this layer's output std. Without this, a batch-norm
    net's flow depends on each conv's init scale and on the input size.
    """
    if record.weight is not None and record.weight.normalized:
        if norm_after is not None:
            after, gain = output_gradient_norm(norm_after), norm_after.activation.std
            if after is not None and gain is not None and math.isfinite(gain):
                return after * gain
        norm, std = output_gradient_norm(record), record.activation.std
        if norm is None or not is_finite_positive(std):
            return None
        return norm * std
    return output_gradient_norm(record)


def gradient_flow(layers: Iterable[LayerRecord]) -> tuple[list[LayerRecord], list[float]]:
    """Weighted layers with a measured learning signal, and its norm (`flow_gradient_norm`), input side first."""
    layers = list(layers)
    norm_reading = {r.input_from: r for r in by_index(layers) if r.kind == "norm" and r.input_from}
    chosen, norms = [], []
    for record in flow_layers(layers):
        norm = flow_gradient_norm(record, norm_reading.get(record.name))
        if norm is not None and norm > 0:
            chosen.append(record)
            norms.append(norm)
    return chosen, norms


def trained_normally(evidence) -> tuple[bool, str]:
    """Whether the short run shows training going well, and the loss change in words.

    "Well": every loss finite, the best loss after the first step clearly below the initial one
    (by `TRAINED_DROP` of it), the final loss not having given back more than half of the gain
    (`GIVEN_BACK`), and, where chance level is known (cross-entropy: ln C), the best loss below
    it: a loss that starts at 50 and falls to 40 for 1000 classes (chance 6.9) is not training
    normally. Below chance is not enough either when the batch's labels are known: a network
    that ignores its inputs (every unit dead) still learns their frequencies through its output
    biases, down to `LossTrace.constant_floor`; the best loss must get under that. A one-pass
    trend that training shrugs off is not an error.
    """
    loss = evidence.loss
    if evidence.run.steps == 0 or loss is None or len(loss.history) < 2:
        return False, ""
    history = loss.history
    if not all(math.isfinite(v) for v in history) or evidence.nonfinite_loss_step is not None:
        return False, ""
    initial, best, final = history[0], min(history[1:]), history[-1]
    words = f"loss {initial:.3g} -> {final:.3g} in {len(history)} steps"
    if initial <= 0 or best > initial * (1 - TRAINED_DROP):
        return False, words
    if final - best > GIVEN_BACK * (initial - best):
        return False, words
    if loss.expected_initial and best > loss.expected_initial:
        # Down from far above chance but still above it: the run is undoing a bad start, not learning.
        return False, words
    if loss.constant_floor is not None and best >= loss.constant_floor:
        # No lower than predicting the batch's label frequencies, which a network that ignores its
        # inputs (all units dead, say) reaches as well: not learning from the inputs.
        return False, words
    return True, words


def relaxed_when_trained(evidence, finding: Finding, title: str | None = None) -> Finding:
    """`finding` as an `info` when the short run trains normally; unchanged otherwise.

    The short run is the judge of harm: a one-pass symptom that training shrugs off is a fact
    worth knowing, not a fault. The message says so and the evidence records it.
    """
    trained, words = trained_normally(evidence)
    if not trained:
        return finding
    return replace(
        finding, severity=Severity.INFO, title=title or finding.title,
        message=f"{finding.message}; the short run still trained ({words})",
        evidence={**finding.evidence, "short_run_trained": True},
    )


def run_outcome(evidence) -> tuple[bool, str]:
    """(trained normally, the run's outcome as a message clause; "" without a run)."""
    trained, words = trained_normally(evidence)
    if evidence.run.steps == 0:
        return trained, ""
    return trained, f"; the short run {'still trained' if trained else 'did not train'} ({words or 'loss not finite'})"


# The short run "trains" when its best loss is at least 10 % below the initial one: 20 plain-SGD
# steps on one fixed batch take most healthy nets of the corpus down by 30-99 % (docs/calibration.md),
# a stuck one (the 12-layer sigmoid MLP: 3 %) by well under 10 %. Slow starters (AlexNet at its
# default init: 1 %) get no benefit of the doubt from it: their findings stand on their own bars.
TRAINED_DROP = 0.1
# A run that ends having given back more than half of what it gained is bouncing, not training.
# (A ratio to the best loss would call 2e-5 after a best of 1e-6 a spike.)
GIVEN_BACK = 0.5


def plain_runs(layers: Iterable[LayerRecord]) -> list[list[LayerRecord]]:
    """Maximal runs of consecutive linear/conv layers with no normalisation between them.

    Each layer in a run reads the previous one's output (see `_continues`): parallel branches
    start runs of their own.

    A layer that feeds a normalisation layer ends its run (it is part of the run, since its output is
    still the signal entering the norm). Layers without a recorded output (weights used functionally
    inside another module) are left out, since their place in the flow is unknown.
    """
    ordered = by_index(layers)
    by_name = {r.name: r for r in ordered}
    runs: list[list[LayerRecord]] = []
    current: list[LayerRecord] = []
    for record in ordered:
        if record.kind in STACK_BREAKERS:
            if current:
                runs.append(current)
            current = []
            continue
        if record.kind not in STACK_KINDS or record.weight is None or record.output_shape is None:
            continue
        if current and not _continues(record, current[-1], by_name):
            runs.append(current)
            current = []
        current.append(record)
        if record.weight.normalized:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _continues(record: LayerRecord, previous: LayerRecord, by_name: dict[str, LayerRecord]) -> bool:
    """Whether `record` reads `previous`'s output (through activations only): a chain, not a branch.

    Query, key and value projections run one after the other but each reads the same input;
    treating them as three layers deep would invent a depth trend. When the probes could not
    trace the flow (records without `input_from`), consecutive layers are taken as a chain.
    """
    source = record.input_from
    for _ in range(len(by_name)):
        if source is None:
            return True
        if source == previous.name:
            return True
        upstream = by_name.get(source)
        if upstream is None or upstream.kind != "activation":
            return False
        source = upstream.input_from
    return False


def preceding_weighted(layers: Sequence[LayerRecord], record: LayerRecord) -> LayerRecord | None:
    """The last weighted layer that ran before `record` (the one feeding an activation)."""
    best = None
    for candidate in layers:
        if candidate.weight is not None and candidate.kind in STACK_KINDS and candidate.index < record.index:
            if best is None or candidate.index > best.index:
                best = candidate
    return best


def units_dim_samples(record: LayerRecord) -> int | None:
    """How many samples each unit of `record` was judged on (batch x positions), if known."""
    count = numel(record.output_shape)
    units = record.activation.units
    if count is None or not units:
        return None
    return count // units


# 25 % either way of the std an init scheme gives: sampling noise of a std estimate over a few
# thousand weights is ~1-2 %, and both textbook mistakes sit well outside (Xavier under ReLU is 0.71x
# He; the "standard" U[-1/sqrt(n), 1/sqrt(n)] is 0.58x Glorot; PyTorch's default is 0.41x He).
INIT_TOLERANCE = 1.25


def std_ratio(record: LayerRecord) -> float | None:
    """The layer's weight std over the std its init scheme gives; None when either is unknown."""
    weight = record.weight
    if weight is None or not weight.expected_std or not math.isfinite(weight.std):
        return None
    return weight.std / weight.expected_std


def zero_weight_layers(layers: Iterable[LayerRecord]) -> list[str]:
    """Layers whose main weight is exactly zero at initialisation (zero-initialised heads and gates)."""
    return [
        r.name for r in by_index(layers)
        if r.weight is not None and r.weight.std == 0.0 and r.weight.mean == 0.0
    ]


def fmt_ratio(value: float) -> str:
    """A ratio as people say it: 3e-07x, 0.02x, 250x."""
    if value == 0 or not math.isfinite(value):
        return f"{value}x"
    if 0.01 <= value < 1000:
        return f"{value:.2g}x"
    return f"{value:.0e}x"


def owner_is_activation(layers: Sequence[LayerRecord], record: LayerRecord) -> bool:
    """Whether a function-call record was made inside an activation module (tanh() inside a GELU)."""
    if record.source != "function" or not record.owner:
        return False
    return any(r.name == record.owner and r.kind == "activation" for r in layers)


def activation_trend(run: Sequence[LayerRecord]) -> tuple[float, float] | None:
    """(last/first ratio, fitted last/first change) of output std along a plain run, if measurable."""
    stds = [r.activation.std for r in run]
    if any(not is_finite_positive(s) for s in stds) or len(stds) < 2:
        return None
    return stds[-1] / stds[0], log_linear_change(stds)


def update_ratios(run_layers: Iterable[LayerRecord]) -> list[tuple[LayerRecord, float]]:
    """(layer, mean ||dW||/||W|| over the run) for weighted layers whose update was measured.

    Norm and embedding layers are left out: a LayerNorm gain starts at 1 and an embedding's update
    touches only the rows in the batch, so neither ratio says much about the learning rate.
    """
    chosen = []
    for record in by_index(run_layers):
        if record.kind not in ("linear", "conv", "recurrent", "attention"):
            continue
        if record.update_ratio is not None and math.isfinite(record.update_ratio):
            chosen.append((record, record.update_ratio))
    return chosen


def relative_loss_change(history: Sequence[float]) -> float | None:
    """(initial - best later loss) / |initial|: how much of the loss the short run removed."""
    if len(history) < 2 or not all(math.isfinite(v) for v in history) or history[0] == 0:
        return None
    return (history[0] - min(history[1:])) / abs(history[0])


def reading_normalised_input(layers) -> list[tuple[LayerRecord, float]]:
    """(layer, forward gain) of trainable linear layers whose input is a norm layer's output.

    The gain is output std / input std. A norm layer hands its reader unit-scale features, so a
    variance-preserving weight (std 1/sqrt(fan_in)) gives a gain near 1 whatever follows; the
    transformer recipes stay under it (GPT-2/BERT N(0, 0.02): ~0.3-0.6).
    """
    by_name = {r.name: r for r in layers}
    chosen = []
    for record in by_index(layers):
        if record.kind != "linear" or record.trainable_parameters == 0 or record.weight is None:
            continue
        source = by_name.get(record.input_from or "")
        if source is None or source.kind != "norm":
            continue
        out_std, in_std = record.activation.std, source.activation.std
        if out_std is None or in_std is None or not (math.isfinite(out_std) and math.isfinite(in_std)) or in_std <= 0:
            continue
        chosen.append((record, out_std / in_std))
    return chosen


# ---------------------------------------------------------------- measures a fix is verified by


def loss_ratio_metric(finding: Finding, evidence: Evidence) -> Measure:
    """The loss at the end of the short run over the loss at init: the measure of checks that judge
    the run's loss itself, and of those whose trigger is several conditions with no one number."""
    loss = evidence.loss
    if loss is None or loss.initial is None or loss.final is None or loss.initial == 0:
        return Measure("loss_final_over_initial", None)
    return Measure("loss_final_over_initial", loss.final / loss.initial)


# A healthy update moves a weight by about a thousandth of its norm per step (Karpathy's rule of
# thumb, and where the update-ratio checks centre their band).
HEALTHY_UPDATE_RATIO = 1e-3


def update_ratio_metric(finding: Finding, evidence: Evidence) -> Measure:
    """The largest mean update/weight ratio of the run when the finding fired on it (healthy near
    HEALTHY_UPDATE_RATIO), else the loss ratio."""
    if "max_update_ratio" not in finding.evidence:
        return loss_ratio_metric(finding, evidence)
    ratios = [v for _, v in update_ratios(evidence.run_layers)]
    return Measure("max_update_ratio", max(ratios) if ratios else None, DECADES, healthy=HEALTHY_UPDATE_RATIO)


def max_fraction(evidence: Evidence, field: str, run_field: str | None = None) -> float | None:
    """The worst share of an activation statistic over init and run; 0 when no activation is left.

    A copy whose ReLUs were swapped for ELU (or whose sigmoids became ReLU) has no unit that can
    die (or saturate): its fraction is 0 by construction, not unknown.
    """
    values = [getattr(r.activation, field) for r in (*evidence.layers, *evidence.run_layers)]
    if run_field is not None:
        values += [getattr(r.activation, run_field) for r in evidence.run_layers]
    values = [v for v in values if v is not None]
    if values:
        return max(values)
    has_activations = any(r.kind == "activation" and r.activation.count for r in evidence.layers)
    return 0.0 if has_activations else None
