"""Input fixes: standardising the data."""

from __future__ import annotations

from diagnose.fixes._model import Fix, FixTarget


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
)

FIXES = (NORMALIZE_INPUTS,)
