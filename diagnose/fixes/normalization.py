"""Batch normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from diagnose.fixes._model import Fix, FixTarget, name_list
from diagnose.fixes.trial import on_a_copy

if TYPE_CHECKING:
    from torch import nn

    from probes.records import LayerRecord


def _batch_norm_snippet(target: FixTarget) -> str:
    norm = "nn.BatchNorm2d(layer.out_channels)" if target.conv else "nn.BatchNorm1d(layer.out_features)"
    names = list(target.layers)
    if not names:
        return (
            "import torch.nn as nn\n\n"
            "# put a batch-norm layer between each weighted layer and its activation, e.g.\n"
            "block = nn.Sequential(nn.Linear(256, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU())"
        )
    return (
        "import torch.nn as nn\n\n"
        "# normalise each layer's output before its activation (its bias becomes redundant)\n"
        f"for name in {name_list(names)}:\n"
        "    parent_name, _, child = name.rpartition('.')\n"
        "    parent = model.get_submodule(parent_name) if parent_name else model\n"
        "    layer = getattr(parent, child)\n"
        f"    setattr(parent, child, nn.Sequential(layer, {norm}))"
    )


def _insert_batch_norm(fix_id: str, model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """A BatchNorm between each hidden linear/conv layer and its activation."""
    from diagnose.fixes._surgery import insert_batch_norm

    return insert_batch_norm(model, layers)


BATCH_NORM = Fix(
    id="batch-norm",
    title="Add batch normalization",
    summary="add batch normalization between weighted layers and their activations",
    rationale=(
        "Batch norm rescales each unit's pre-activation to zero mean and unit variance over the "
        "mini-batch, then lets the network learn the scale and shift it wants. Whatever the init or "
        "the depth, every layer then sees inputs of a sane scale, which stops signals and gradients "
        "from shrinking or growing with depth and usually allows a larger learning rate."
    ),
    doc="""## What it does
Inserts `nn.BatchNorm1d` / `nn.BatchNorm2d` after each weighted layer, before its activation.

## Why it works
For every unit, batch norm subtracts the mini-batch mean and divides by the mini-batch standard
deviation, then applies a learned scale and offset (two trainable parameters per unit; the running
mean and variance used at inference are not trained). Because each layer's input is re-standardised,
a bad weight scale in one layer no longer compounds through the next ones, units stay out of the
saturated zones, and training typically converges in fewer steps. At inference the layer can be
folded into the preceding linear or conv layer, so its run-time cost disappears.

## When not to use
Recurrent networks (statistics across time steps are awkward: use `gradient-clipping`, or layer
norm), very small batches (noisy statistics), SELU networks (it breaks self-normalisation). It costs
compute during training.

## Example
```python
model = nn.Sequential(
    nn.Linear(784, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
    nn.Linear(256, 10),
)
```
""",
    snippet=_batch_norm_snippet,
    apply=on_a_copy(_insert_batch_norm),
)

FIXES = (BATCH_NORM,)
