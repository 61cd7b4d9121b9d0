"""Choose the training loss for the probe run and the targets it is computed against."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diagnose.errors import DiagnoseError
from diagnose.loading.imports import import_attribute

if TYPE_CHECKING:
    import torch
    from torch import Tensor

CROSS_ENTROPY = "cross-entropy"
MSE = "mse"
AUTO = "auto"
# Random labels come from their own seeded stream, offset from the input seed so that labels and
# synthetic inputs are not drawn from identical generator states.
TARGET_SEED_OFFSET = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LossSpec:
    """The loss function, the targets to feed it, and its chance-level value when known."""

    kind: str  # "cross-entropy" | "mse" | "model" (the model returned its own loss) | "MODULE:FN"
    fn: "Callable[[Tensor, Tensor], Tensor]"  # loss(prediction, targets) -> scalar
    targets: "torch.Tensor"  # real, or synthesized with the seed
    num_classes: int | None
    expected_initial: float | None  # ln C for C-class cross-entropy at chance; None otherwise
    # The lowest loss a prediction that ignores the inputs can reach on these targets: for
    # cross-entropy, the entropy of the batch's label frequencies (at most ln C); None otherwise.
    constant_floor: float | None = None


def resolve_loss(spec: "str | Callable", prediction: "torch.Tensor", targets: "torch.Tensor | None",
                 *, seed: int = 0) -> LossSpec:
    """Turn --loss (auto | cross-entropy | mse | MODULE:FN) or a callable into a LossSpec.

    `auto`: integer targets or (N, C>1) / (N, T, V) outputs without targets -> cross-entropy
    (random uniform labels when none are given); anything else -> MSE (standard-normal targets).
    """
    if callable(spec):
        return _custom(getattr(spec, "__name__", "custom"), spec, prediction, targets, seed)
    if spec == AUTO:
        if targets is not None:
            wants_classes = not targets.is_floating_point()
        else:
            wants_classes = _classes_of(prediction) is not None
        return _cross_entropy(prediction, targets, seed) if wants_classes else _mse(prediction, targets, seed)
    if spec == CROSS_ENTROPY:
        return _cross_entropy(prediction, targets, seed)
    if spec == MSE:
        return _mse(prediction, targets, seed)
    if isinstance(spec, str) and ":" in spec:
        return _custom(spec, _import_loss(spec), prediction, targets, seed)
    raise DiagnoseError(f"unknown loss {spec!r}; use auto, cross-entropy, mse or MODULE:FN.")


def _classes_of(prediction: "torch.Tensor") -> int | None:
    """C for (N, C) with C > 1 or V for (N, T, V) sequence logits; None for regression shapes."""
    if prediction.ndim in (2, 3) and prediction.shape[-1] > 1 and prediction.is_floating_point():
        return int(prediction.shape[-1])
    return None


def _cross_entropy(prediction: "torch.Tensor", targets: "torch.Tensor | None", seed: int) -> LossSpec:
    import torch
    import torch.nn.functional as F

    classes = _classes_of(prediction)
    if classes is None:
        raise DiagnoseError(f"cross-entropy needs (N, C) or (N, T, V) logits with C > 1, but the output has shape "
                            f"{tuple(prediction.shape)}; use --loss mse or MODULE:FN.")
    label_shape = tuple(prediction.shape[:-1])
    if targets is None:
        generator = torch.Generator(device="cpu").manual_seed(seed + TARGET_SEED_OFFSET)
        targets = torch.randint(0, classes, label_shape, generator=generator).to(prediction.device)
    else:
        _check_labels(targets, label_shape, classes)
        targets = targets.to(prediction.device)

    def cross_entropy(pred: "Tensor", labels: "Tensor") -> "Tensor":
        # (N, T, V) sequence logits are scored per token, as (N*T, V) against (N*T,) labels.
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels.reshape(-1))

    return LossSpec(kind=CROSS_ENTROPY, fn=cross_entropy, targets=targets, num_classes=classes,
                    expected_initial=math.log(classes), constant_floor=label_entropy(targets, classes))


def label_entropy(labels: "torch.Tensor", classes: int) -> float | None:
    """The entropy of the labels' frequencies: the cross-entropy of the best constant prediction.

    A network that learns only the class prior of the batch (a dead network's biases do) reaches
    exactly this, below ln C by chance alone: ~3 % for 64 labels of 10 classes, and down to
    ln(number of labels) when they outnumber the classes' draws (token models: 128 tokens of a
    large vocabulary). Only a loss below it shows the network using its inputs.
    """
    import torch

    flat = labels.reshape(-1)
    if flat.numel() == 0:
        return None
    counts = torch.bincount(flat.to("cpu", torch.int64), minlength=classes).double()
    shares = counts[counts > 0] / flat.numel()
    return float(-(shares * shares.log()).sum())


def _check_labels(targets: "torch.Tensor", label_shape: tuple[int, ...], classes: int) -> None:
    if targets.is_floating_point():
        raise DiagnoseError(f"cross-entropy needs integer class labels, but the targets are {targets.dtype}; "
                            "save them as int64, or use --loss mse.")
    if tuple(targets.shape) != label_shape:
        raise DiagnoseError(f"targets have shape {tuple(targets.shape)} but the output {label_shape + (classes,)} "
                            f"needs labels of shape {label_shape}; pass matching --targets.")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= classes):
        raise DiagnoseError(f"target labels span {int(targets.min())}..{int(targets.max())} but the model outputs "
                            f"{classes} classes (labels 0..{classes - 1}); fix --targets or the output layer.")


def _mse(prediction: "torch.Tensor", targets: "torch.Tensor | None", seed: int) -> LossSpec:
    import torch
    import torch.nn.functional as F

    if targets is None:
        generator = torch.Generator(device="cpu").manual_seed(seed + TARGET_SEED_OFFSET)
        targets = torch.randn(tuple(prediction.shape), generator=generator).to(prediction)
    else:
        targets = _regression_targets(targets, prediction)

    def mse(pred: "Tensor", target: "Tensor") -> "Tensor":
        return F.mse_loss(pred, target)

    return LossSpec(kind=MSE, fn=mse, targets=targets, num_classes=None, expected_initial=None)


def _regression_targets(targets: "torch.Tensor", prediction: "torch.Tensor") -> "torch.Tensor":
    """Targets shaped exactly like the prediction.

    (N,) targets against an (N, 1) output are reshaped: left alone, mse_loss would broadcast them to
    (N, N) and train on every pair, a classic silent bug. Any other mismatch is an error.
    """
    same_values = targets.numel() == prediction.numel()
    squeezed_equal = [d for d in targets.shape if d != 1] == [d for d in prediction.shape if d != 1]
    if tuple(targets.shape) != tuple(prediction.shape) and not (same_values and squeezed_equal):
        raise DiagnoseError(f"targets have shape {tuple(targets.shape)} but the output has shape "
                            f"{tuple(prediction.shape)}; MSE needs them equal. Pass matching --targets.")
    return targets.reshape(prediction.shape).to(device=prediction.device, dtype=prediction.dtype)


def _custom(kind: str, fn: Callable, prediction: "torch.Tensor", targets: "torch.Tensor | None",
            seed: int) -> LossSpec:
    """A user loss gets the given targets, or those `auto` would synthesize for this output."""
    if targets is None:
        targets = resolve_loss(AUTO, prediction, None, seed=seed).targets
    return LossSpec(kind=kind, fn=fn, targets=targets.to(prediction.device), num_classes=None,
                    expected_initial=None)


def _import_loss(spec: str) -> Callable:
    fn = import_attribute(spec)
    if not callable(fn):
        raise DiagnoseError(f"--loss {spec} names a {type(fn).__name__}, not a function; "
                            "pass MODULE:FN naming a function fn(prediction, targets).")
    return fn
