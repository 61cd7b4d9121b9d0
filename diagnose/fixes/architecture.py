"""Architecture fixes: skip connections for very deep plain stacks, and widening bottlenecks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from diagnose.fixes._model import Fix, FixTarget
from diagnose.fixes.trial import FixNotApplicable, on_a_copy

if TYPE_CHECKING:
    from torch import nn

    from probes.records import LayerRecord


def _residual_snippet(target: FixTarget) -> str:
    where = f"  # e.g. around {', '.join(target.layers[:3])}" if target.layers else ""
    return (
        "import torch.nn as nn\n\n"
        "class Residual(nn.Module):\n"
        "    \"\"\"x + f(x): the identity path carries signal and gradient past f.\"\"\"\n\n"
        "    def __init__(self, width):\n"
        "        super().__init__()\n"
        "        self.f = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))\n"
        "        nn.init.zeros_(self.f[-1].weight)  # start as the identity\n\n"
        "    def forward(self, x):\n"
        "        return x + self.f(x)\n\n"
        f"# replace runs of same-width layers with Residual blocks{where}"
    )


def _widen_snippet(target: FixTarget) -> str:
    w = target.widening
    if w is not None:
        # The width lives in the model's constructor: the snippet names the two lines to change.
        return "\n".join([
            f"# {w.layer} squeezes {w.width_in} features into {w.width}, and {w.next_layer} reads them;",
            f"# in the model's __init__, give both {w.new_width} (as wide as the narrower neighbour):",
            f"#     nn.Linear({w.width_in}, {w.width})  ->  nn.Linear({w.width_in}, {w.new_width})   # {w.layer}",
            f"#     nn.Linear({w.width}, {w.width_out})  ->  nn.Linear({w.new_width}, {w.width_out})   # {w.next_layer}",
            "# (and any BatchNorm1d/LayerNorm between them to the same width)",
        ])
    if not target.widths:
        return "# give the narrow layer at least as many units as the layers around it"
    lines = ["import torch.nn as nn", ""]
    for name, width in target.widths:
        lines.append(f"# {name}: {width} units; e.g. {max(width * 8, 64)} instead, and the next layer's in_features to match")
    return "\n".join(lines)


def _widen_bottlenecks(fix_id: str, model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """Widen each bottleneck the check finds to its narrower neighbour's width (and the next layer's input)."""
    from diagnose.checks.bottleneck_layer import bottlenecks
    from diagnose.fixes._widen import widen_layer

    pairs = bottlenecks(layers)
    if not pairs:
        raise FixNotApplicable("no layer is narrow enough next to its neighbours to widen")
    done, reasons = [], []
    for narrow, following in pairs:
        width = min(narrow.weight.fan_in, following.weight.fan_out)
        try:
            widen_layer(model, narrow.name, following.name, width, layers)
        except FixNotApplicable as exc:
            reasons.append(str(exc))
            continue
        done.append(f"{narrow.name} {narrow.weight.fan_out} -> {width} units")
    if not done:
        raise FixNotApplicable("; ".join(reasons))
    skipped = f"; not widened: {'; '.join(reasons)}" if reasons else ""
    return f"widened {', '.join(done)} (and the next layer's inputs), existing weights kept{skipped}"


RESIDUAL_CONNECTIONS = Fix(
    id="residual-connections",
    title="Add residual (skip) connections",
    summary="add skip connections to a very deep plain stack",
    rationale=(
        "A skip connection adds a block's input to its output, so each block only has to learn a "
        "correction to the identity. The identity path carries the signal forward and the gradient "
        "back undiminished, which is what makes networks with tens or hundreds of layers trainable."
    ),
    doc="""## What it does
Wraps groups of layers of equal width in blocks computing x + f(x), optionally with the last
layer of f initialised to zero so each block starts as the identity.

## Why it works
In a plain stack, the gradient reaching layer 1 is a product of one factor per layer above it, and
any systematic bias in those factors compounds with depth. With x + f(x), the derivative is
1 + f'(x): there is always a direct path on which the gradient is passed unchanged, so depth no
longer multiplies the problem. Networks that fail to train at 30 plain layers train at 100+ with
skips.

## When not to use
Shallow networks (a handful of layers gain little); where block input and output widths differ
you need a projection on the skip path.

## Example
```python
class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x):
        return x + self.f(x)
```
""",
    snippet=_residual_snippet,
    not_applicable=(
        "adding skip connections changes the model's structure and needs matching shapes at "
        "each junction; add them in the model's code"
    ),
)

WIDEN_LAYER = Fix(
    id="widen-layer",
    title="Widen the bottleneck layer",
    summary="give a too-narrow hidden layer as many units as its neighbours",
    rationale=(
        "Whatever a narrow layer cannot represent is lost for the layers after it, however wide they "
        "are. It is usually better to start too wide and let early stopping or regularisation rein "
        "the model in than to cut capacity in one layer."
    ),
    doc="""## What it does
Increases the `out_features` of the narrow layer (and the `in_features` of the next one, and the
width of any norm layer between them) to the width of its narrower neighbour. `--try-fixes` does
this on a copy, keeping the trained or initialised weights of the existing units and drawing the
new ones from the init scheme of each layer's activation, and compares the short-run loss with the
unchanged copy's. It rebuilds Linear -> activation -> Linear and Conv -> norm -> activation -> Conv
stacks; where something else reads the narrow layer's output (a skip path, a second head) the report
says so and leaves the change to the model's code.

## Why it works
Each layer can only pass on what fits in its units: a 4-unit layer between two 512-unit layers
squeezes everything into 4 numbers per sample, and no later layer can recover what was dropped.
Widening restores the capacity; extra width is cheap to regularise, a missing one cannot be
trained back.

## When not to use
When the narrow layer is intended: an autoencoder's code, a low-rank adapter, a projection for
retrieval. Ignore the finding for that layer instead.

## Example
```python
model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
```
""",
    snippet=_widen_snippet,
    apply=on_a_copy(_widen_bottlenecks),
)

FIXES = (RESIDUAL_CONNECTIONS, WIDEN_LAYER)
