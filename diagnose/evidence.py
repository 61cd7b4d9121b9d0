"""Evidence: everything the checks may look at, as plain host data (no tensors, no modules)."""

from __future__ import annotations

from dataclasses import dataclass

from probes.records import LayerRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class LossTrace:
    """The loss at initialisation and along the short run (history[0] is the initial loss).

    `gradient_norms[i]` is the total L2 norm of all parameter gradients at step i of the run,
    before any clipping (empty without a run; one shorter than `history` when the run stopped at
    a non-finite loss).
    """

    kind: str  # "cross-entropy", "mse", or the user's MODULE:FN
    initial: float | None
    expected_initial: float | None  # chance level: ln C for C-class cross-entropy, else None
    num_classes: int | None
    final: float | None = None
    history: tuple[float, ...] = ()
    model_computed: bool = False  # the model returned its own loss (HF-style `loss` field)
    gradient_norms: tuple[float, ...] = ()
    # the best loss a prediction that ignores the inputs reaches on the batch's targets (for
    # cross-entropy, the entropy of its label frequencies); None when unknown
    constant_floor: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InputStats:
    """Summary of one input tensor, for the input-normalisation check."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    synthetic: bool
    integer: bool
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputStats:
    """The model's prediction at initialisation, as the loss sees it (for output/loss mismatches).

    `row_sum_error` is the largest |sum - 1| over the last axis (0 for softmax probabilities);
    `zero_fraction` the share of exact zeros (a ReLU on the logits).
    """

    shape: tuple[int, ...]
    min: float
    max: float
    row_sum_error: float
    zero_fraction: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RecurrentFlow:
    """Gradient over time in one recurrent module at initialisation (diagnose/recurrent.py).

    `step_gradient_norms[t]` is ||dLoss/d(input at step t)|| over the batch, oldest step first.
    """

    name: str
    type: str  # LSTM | GRU | RNN
    steps: int
    step_gradient_norms: tuple[float, ...]
    forget_bias: float | None = None  # LSTM: mean b_ih + b_hh over the forget gate, first layer


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelFacts:
    source: str
    format: str  # export | factory | torchscript | pickle | module
    parameters: int
    trainable_parameters: int
    layers: int
    limitations: tuple[str, ...] = ()  # probes that could not run on this model, in words
    frozen_norms: int = 0  # batch-norm ops an export archive runs with running statistics (eval-mode export)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    device: str
    seed: int
    inputs: str  # synthetic | file | example
    input_shapes: tuple[tuple[int, ...], ...]
    loss: str
    steps: int
    optimizer: str
    lr: float
    batch_size: int | None = None
    fixed_batch: bool = True  # the short run reused one batch (the overfit-one-batch test)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """What the checks judge.

    `layers` come from one forward+backward at initialisation; `run_layers` from the short training
    run (`steps` > 0; empty otherwise), with update ratios and dead-over-the-run fractions.
    """

    model: ModelFacts
    run: RunInfo
    layers: tuple[LayerRecord, ...]
    run_layers: tuple[LayerRecord, ...] = ()
    loss: LossTrace | None = None
    inputs: tuple[InputStats, ...] = ()
    nonfinite_loss_step: int | None = None  # first step whose loss was NaN/Inf, if any
    output: OutputStats | None = None  # the prediction at initialisation; None when not a float tensor
    recurrent: tuple[RecurrentFlow, ...] = ()  # gradient over time, per recurrent module
