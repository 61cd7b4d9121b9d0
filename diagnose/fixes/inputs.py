"""Input fixes: standardising the data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from diagnose.fixes._model import Fix, FixTarget
from diagnose.fixes.trial import FixNotApplicable, FixTrial

if TYPE_CHECKING:
    from torch import nn

    from diagnose.evidence import LossTrace
    from diagnose.loading.inputs import Batch
    from diagnose.run import Workload
    from probes.records import LayerRecord

# Input standardisation divides by the std; a constant feature would divide by zero.
MIN_STD = 1e-8


def _normalize_snippet(target: FixTarget) -> str:
    if target.nonfinite_inputs:
        return (
            "# NaN/Inf in the inputs: drop those rows, or impute each feature's mean, then standardise\n"
            "# (statistics from the finite values of the training set, reused for validation and test)\n"
            "train_x = torch.where(torch.isfinite(train_x), train_x, torch.nan)\n"
            "mean = train_x.nanmean(dim=0, keepdim=True)\n"
            "std = (train_x - mean).pow(2).nanmean(dim=0, keepdim=True).sqrt().clamp_min(1e-8)\n"
            "normalize = lambda x: torch.nan_to_num((x - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)"
        )
    return (
        "# statistics from the training set only, reused for validation and test\n"
        "mean = train_x.mean(dim=0, keepdim=True)\n"
        "std = train_x.std(dim=0, keepdim=True).clamp_min(1e-8)\n"
        "normalize = lambda x: (x - mean) / std\n"
        "# images: torchvision.transforms.Normalize(mean=per_channel_mean, std=per_channel_std)\n"
        "# and drop or impute rows with NaN/Inf first: x = x[torch.isfinite(x).all(dim=1)]"
    )


def _standardize_inputs(
    fix_id: str, module: nn.Module, workload: Workload, layers: Sequence[LayerRecord], run: LossTrace | None
) -> FixTrial:
    """The same model on the batch standardised (the model is left as it is)."""
    batch, change = standardize_batch(workload.batch)
    return FixTrial(module=module, workload=replace(workload, batch=batch), change=change)


def standardize_batch(batch: Batch) -> tuple[Batch, str]:
    """The batch with each floating input standardised: per feature (N, F), per channel (N, C, ...).

    Statistics come from the finite entries; a NaN/Inf entry is imputed with its feature's mean
    (0 once standardised), as the snippet for non-finite inputs does.
    """
    import torch

    from diagnose.loading.inputs import describe_input

    changed = 0
    imputed = 0

    def standardize(value):
        nonlocal changed, imputed
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() == 0 or value.shape[0] < 2:
            return value
        dims = [0] + list(range(2, value.dim())) if value.dim() >= 2 else [0]
        finite = torch.isfinite(value)
        count = finite.sum(dim=dims, keepdim=True).clamp_min(1)
        mean = torch.where(finite, value, 0.0).sum(dim=dims, keepdim=True) / count
        centred = torch.where(finite, value - mean, 0.0)
        std = (centred.pow(2).sum(dim=dims, keepdim=True) / count).sqrt().clamp_min(MIN_STD)
        changed += 1
        imputed += int((~finite).sum())
        return centred / std

    args = tuple(standardize(a) for a in batch.args)
    kwargs = {k: standardize(v) for k, v in batch.kwargs.items()}
    if changed == 0:
        raise FixNotApplicable("the model has no floating-point input to standardise (token ids stay as they are)")
    # The input stats (what unnormalized-inputs judges) follow the new tensors, same names and order.
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    stats = tuple(
        describe_input(old.name, tensor, synthetic=old.synthetic) for old, tensor in zip(batch.stats, tensors)
    )
    change = f"standardised {changed} input{'s' if changed != 1 else ''} to zero mean, unit variance per feature"
    if imputed:
        change += f"; {imputed} NaN/Inf entries imputed with their feature's mean"
    return replace(batch, args=args, kwargs=kwargs, stats=stats), change


NORMALIZE_INPUTS = Fix(
    id="normalize-inputs",
    title="Standardize the inputs",
    summary="standardize inputs to zero mean and unit variance (statistics from the training set)",
    rationale=(
        "Every init scheme assumes inputs of about unit scale centred on zero. Subtracting the "
        "training-set mean and dividing by its standard deviation, per feature or per channel, puts "
        "the first layer where the init expects it and lets one learning rate suit all features."
    ),
    doc="""## What it does
Standardises each input feature (or image channel): x -> (x - mean) / std, with mean and std
computed on the training set and reused unchanged for validation, test and serving. Also the
place to drop or impute non-finite values.

## Why it works
The first layer's pre-activation scales with its input: raw 0-255 pixels make it ~100x larger
than the init assumes, saturating sigmoid/tanh units and inflating the initial loss. An offset
shared by all features makes the gradients of all first-layer weights point the same way, which
slows gradient descent. Standardised inputs remove both problems; batch norm does the same inside
the network.

## When not to use
Integer token ids or other categorical inputs (they go through an embedding); features whose
absolute value carries meaning for a downstream rule (keep a copy).

## Example
```python
mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
```
""",
    snippet=_normalize_snippet,
    apply=_standardize_inputs,
)

FIXES = (NORMALIZE_INPUTS,)
