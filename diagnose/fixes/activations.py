"""Activation fixes: ReLU, its non-dying variants, ELU, and SELU for plain dense stacks."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from diagnose.fixes._model import Fix, FixTarget, layer_loop, name_list
from diagnose.fixes.trial import FixNotApplicable, on_a_copy
from probes.activations import ALL_FAMILIES, DYING_FAMILIES, SATURATING

if TYPE_CHECKING:
    from torch import nn

    from probes.records import LayerRecord


# Comment lines fit an 80-column terminal: the report never wraps a snippet (a wrapped line would
# break the copied code), so a long one would run off the screen.
SNIPPET_WIDTH = 78
# How each new activation is written when it is called as a function.
_FUNCTION_CALL = {
    "nn.ReLU()": "torch.relu(x)",
    "nn.LeakyReLU(0.01)": "F.leaky_relu(x, 0.01)",
    "nn.ELU()": "F.elu(x)",
}
# The calls users write for each family (torch.sigmoid, F.sigmoid and the method all exist).
_OLD_CALLS = {
    "sigmoid": "torch.sigmoid(x) / F.sigmoid(x) / x.sigmoid()",
    "tanh": "torch.tanh(x) / F.tanh(x) / x.tanh()",
    "relu": "F.relu(x) / torch.relu(x) / x.relu()",
    "relu6": "F.relu6(x)",
    "hardtanh": "F.hardtanh(x)",
    "hardsigmoid": "F.hardsigmoid(x)",
    "softsign": "F.softsign(x)",
    "logsigmoid": "F.logsigmoid(x)",
}


def _swap(target: FixTarget, new: str, comment: str, init: str | None) -> str:
    """Replace the named activation modules, say which `forward` calls to edit for functional ones,
    and re-initialise the layers feeding them with `init` (a line run on each `layer`)."""
    functional = {call.name for call in target.calls}
    names = [n for n in target.layers if n not in functional and not n.endswith(")") and ")#" not in n]
    old = {"sigmoid": "nn.Sigmoid", "tanh": "nn.Tanh", "relu": "nn.ReLU", "relu6": "nn.ReLU6"}.get(
        target.activation or "", "nn.ReLU"
    )
    lines = ["import torch.nn as nn", "", f"# {comment}"]
    if names:
        lines += [
            f"for name in {name_list(names)}:",
            "    parent_name, _, child = name.rpartition('.')",
            "    parent = model.get_submodule(parent_name) if parent_name else model",
            f"    setattr(parent, child, {new})",
        ]
    elif not target.calls:
        lines += [
            "for parent in model.modules():",
            "    for child, module in parent.named_children():",
            f"        if isinstance(module, {old}):",
            f"            setattr(parent, child, {new})",
        ]
    if target.calls:
        if names:
            lines.append("")
        lines += _forward_edits(target.calls, _FUNCTION_CALL.get(new, new))
    if init and target.feeders:
        lines += ["", "# and the layers feeding them get the initialisation the new activation needs"]
        lines += layer_loop(target.feeders, f"{init}\nif layer.bias is not None:\n    nn.init.zeros_(layer.bias)", "").splitlines()
    elif init:
        lines += ["", f"# then re-initialise the layers feeding them: {init.replace('layer.weight', 'w')}"]
    return "\n".join(lines)


def _forward_edits(calls, new_call: str) -> list[str]:
    """Comment lines naming each `forward` that calls the activation, and the edit to make there.

    A loop over modules would change nothing here (there is no module to find), so the snippet
    says where the calls are instead: the callers and the layers whose outputs they read.
    """
    by_family: dict[str, list] = {}
    for call in calls:
        by_family.setdefault(call.family, []).append(call)
    lines = []
    for family, group in by_family.items():
        owners = list(dict.fromkeys(call.owner for call in group))
        named = [repr(owner) for owner in owners if owner]
        where = ", ".join(filter(None, ["the model's own forward()" if "" in owners else "",
                                        f"the forward() of {_shorten(named)}" if named else ""]))
        count = sum(max(call.calls, 1) for call in group)
        after = [call.after for call in group if call.after]
        reads = f", on the outputs of {_shorten(after)}" if after else ""
        times = "once" if count == 1 else f"{count} times"
        sentence = (f"{family} is called as a function in {where}, {times} per forward{reads}. "
                    f"There is no module to swap: in {'that forward' if len(owners) == 1 else 'those forwards'}, change")
        lines += ["# " + line for line in textwrap.wrap(sentence, SNIPPET_WIDTH - 2)]
        lines.append(f"#     {_OLD_CALLS.get(family, family + '(x)')}  ->  {new_call}")
    return lines


def _shorten(names: list[str], limit: int = 4) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit - 1]) + f", ... {names[-1]}"


def _relu_snippet(target: FixTarget) -> str:
    return _swap(
        target, "nn.ReLU()", "swap the saturating activations for ReLU",
        "nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')",
    )


def _leaky_snippet(target: FixTarget) -> str:
    return _swap(
        target, "nn.LeakyReLU(0.01)", "a small negative slope keeps a gradient flowing below zero",
        "nn.init.kaiming_normal_(layer.weight, a=0.01, nonlinearity='leaky_relu')",
    )


def _elu_snippet(target: FixTarget) -> str:
    return _swap(
        target, "nn.ELU()", "ELU is smooth and negative below zero: no dead units",
        "nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')",
    )


def _selu_snippet(target: FixTarget) -> str:
    return (
        "import torch.nn as nn\n\n"
        "# a plain dense stack: Linear -> SELU, LeCun-normal weights, no BatchNorm, AlphaDropout only\n"
        "def selu_stack(widths, p_drop=0.0):\n"
        "    layers = []\n"
        "    for fan_in, fan_out in zip(widths[:-2], widths[1:-1]):\n"
        "        linear = nn.Linear(fan_in, fan_out)\n"
        "        nn.init.kaiming_normal_(linear.weight, nonlinearity='linear')  # LeCun normal\n"
        "        nn.init.zeros_(linear.bias)\n"
        "        layers += [linear, nn.SELU()]\n"
        "        if p_drop:\n"
        "            layers.append(nn.AlphaDropout(p_drop))\n"
        "    layers.append(nn.Linear(widths[-2], widths[-1]))\n"
        "    return nn.Sequential(*layers)\n\n"
        "# and standardise the inputs (zero mean, unit variance per feature)"
    )


# What each fix swaps in, the families it replaces (a unit of a dying family can be cured by the
# non-dying ones; SELU's self-normalisation needs every hidden activation to be SELU), and the init
# the new activation needs.
_SWAPS: dict[str, tuple[str, frozenset[str], str]] = {
    "relu": ("relu", SATURATING, "he"),
    "leaky-relu": ("leaky_relu", SATURATING | DYING_FAMILIES, "he"),
    "elu": ("elu", SATURATING | DYING_FAMILIES, "he"),
    "selu": ("selu", ALL_FAMILIES - {"selu"}, "lecun"),
}


def _swap_in(fix_id: str, model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """Replace the hidden activations (modules and function calls) and re-initialise for the new one."""
    from diagnose.fixes._swap import Swap, swap_activations

    return swap_activations(model, Swap(*_SWAPS[fix_id]), layers)


def _make_self_normalizing(fix_id: str, model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """A plain dense SELU stack, as self-normalisation needs it.

    Every hidden activation becomes SELU, norm layers go (SELU does their job, and they break its
    fixed point), Dropout becomes AlphaDropout (which keeps the mean and variance SELU relies on),
    and the weights are drawn LeCun-normal.
    """
    from torch import nn

    from diagnose.fixes._reinit import reinitialize
    from diagnose.fixes._surgery import module_nodes, set_submodule

    structural = sorted({r.type for r in layers if r.kind in ("conv", "recurrent", "attention")})
    if structural:
        raise FixNotApplicable(
            f"SELU's self-normalisation holds for plain dense stacks; this model has {', '.join(structural)} layers"
        )
    parts = []
    try:
        parts.append(_swap_in(fix_id, model, layers))
    except FixNotApplicable:
        pass  # every hidden activation is SELU already
    norms = dropouts = 0
    for node in module_nodes(model):
        if not node.name:
            continue
        if node.kind == "norm":
            set_submodule(model, node.name, nn.Identity())
            norms += 1
        elif node.type_name == "Dropout":
            set_submodule(model, node.name, nn.AlphaDropout(getattr(node.module, "p", 0.0)))
            dropouts += 1
    if norms:
        parts.append(f"removed {norms} norm layer{'s' if norms != 1 else ''}")
    if dropouts:
        parts.append(f"{dropouts} Dropout -> AlphaDropout")
    if not parts:
        raise FixNotApplicable("the model already is a plain SELU stack without norm layers or plain dropout")
    if not any("initialisation" in part for part in parts):
        count = reinitialize(model, "lecun")
        parts.append(f"LeCun initialisation on {count} layers")
    return "; ".join(parts)


RELU = Fix(
    id="relu",
    title="Replace saturating activations with ReLU",
    summary="replace saturating hidden activations (sigmoid, tanh) with ReLU, with He init",
    rationale=(
        "Sigmoid and tanh flatten out on both sides, and sigmoid's slope is at most 0.25, so every "
        "layer shrinks the gradient going back. ReLU's slope is exactly 1 for positive inputs: it "
        "does not saturate there and, with He init, keeps the gradient level through a deep stack."
    ),
    doc="""## What it does
Swaps the hidden sigmoid/tanh activations for `nn.ReLU()` and re-initialises the layers in front
of them with He init. The output activation (a final sigmoid for a binary probability) stays.

## Why it works
Backpropagation multiplies the gradient by the activation's derivative at every layer. Sigmoid's
derivative is 0.25 at best and close to zero once a unit drifts to either side; ten such layers
divide the gradient by more than a million. ReLU passes the gradient through unchanged wherever the
unit is active and is cheap to compute, which is why deep networks became trainable with it.

## When not to use
Recurrent cells (their gates need a bounded sigmoid/tanh); outputs that must be bounded; a model
that already trains well. Watch for dead units afterwards (`dead-relu`); `leaky-relu` or `elu`
avoid them.

## Example
```python
model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
for m in model:
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
```
""",
    snippet=_relu_snippet,
    apply=on_a_copy(_swap_in),
)

LEAKY_RELU = Fix(
    id="leaky-relu",
    title="Use LeakyReLU (or RReLU / PReLU) instead of ReLU",
    summary="LeakyReLU / RReLU / PReLU instead of ReLU, so units cannot die",
    rationale=(
        "A ReLU unit whose input stays negative outputs zero and gets zero gradient, so it can never "
        "come back. A leaky variant keeps a small slope below zero: the unit still learns and can "
        "recover. RReLU randomises that slope during training, PReLU learns it."
    ),
    doc="""## What it does
Replaces `nn.ReLU` with `nn.LeakyReLU(0.01)` (or `nn.RReLU()`, `nn.PReLU()`), keeping He init with
the matching gain.

## Why it works
Below zero a ReLU is flat, so a unit pushed there for every input (by a large update or a negative
bias) receives no gradient and stays dead. A small negative slope guarantees some gradient always
flows, so such units drift back. RReLU's random slope also acts as a mild regulariser; PReLU's
learned slope tends to help on large image datasets and can overfit small ones.

## When not to use
When few units are dead: plain ReLU's exact zeros give sparse, cheap activations and rarely hurt.

## Example
```python
model = nn.Sequential(nn.Linear(128, 128), nn.LeakyReLU(0.01), nn.Linear(128, 10))
nn.init.kaiming_normal_(model[0].weight, a=0.01, nonlinearity="leaky_relu")
```
""",
    snippet=_leaky_snippet,
    apply=on_a_copy(_swap_in),
)

ELU = Fix(
    id="elu",
    title="Use ELU instead of ReLU",
    summary="ELU instead of ReLU: negative outputs, no dead units, mean closer to zero",
    rationale=(
        "ELU follows the identity for positive inputs and bends smoothly to -alpha below zero. Its "
        "slope never reaches zero, so units cannot die, and its negative outputs pull the mean "
        "activation toward zero, which tends to speed up training."
    ),
    doc="""## What it does
Replaces `nn.ReLU` with `nn.ELU()` (alpha = 1), keeping He-style init.

## Why it works
ELU is alpha(exp(z) - 1) below zero and z above. Because it has a non-zero gradient everywhere, no
unit gets stuck at zero; because it can go negative, a layer's average output sits closer to zero,
which keeps the next layer's inputs centred; and because it is smooth at zero, optimisation is a bit
better behaved. Several comparisons found it ahead of ReLU and its leaky variants.

## When not to use
When inference speed matters most: the exponential makes ELU slower than ReLU. Use `selu` if you
want the self-normalising variant for a plain dense stack.

## Example
```python
model = nn.Sequential(nn.Linear(128, 128), nn.ELU(), nn.Linear(128, 10))
```
""",
    snippet=_elu_snippet,
    apply=on_a_copy(_swap_in),
)

SELU = Fix(
    id="selu",
    title="Use SELU with LeCun init (plain dense stack)",
    summary="SELU with LeCun-normal init for a plain stack of dense layers",
    rationale=(
        "In a plain stack of dense layers, SELU with LeCun-normal weights and standardised inputs "
        "keeps every layer's output close to zero mean and unit variance by itself, so deep dense "
        "networks train without batch norm and without vanishing or exploding signals."
    ),
    doc="""## What it does
Uses `nn.SELU()` as every hidden activation of a dense stack, with LeCun-normal weights, zero
biases, standardised inputs, and `nn.AlphaDropout` instead of `nn.Dropout`; no BatchNorm.

## Why it works
SELU's two constants make zero mean and unit variance an attracting fixed point of the map from one
dense layer's output statistics to the next, under exactly those conditions. Each layer then
re-normalises the signal on its own, which is what batch norm would otherwise be needed for.

## When not to use
Convolutional, recurrent or residual architectures, or stacks with normalisation layers: the
guarantee is for plain dense layers. Plain dropout also breaks it (use AlphaDropout).

## Example
```python
layers = []
for fan_in, fan_out in [(784, 256), (256, 256), (256, 256)]:
    linear = nn.Linear(fan_in, fan_out)
    nn.init.kaiming_normal_(linear.weight, nonlinearity="linear")
    layers += [linear, nn.SELU()]
model = nn.Sequential(*layers, nn.Linear(256, 10))
```
""",
    snippet=_selu_snippet,
    apply=on_a_copy(_make_self_normalizing),
)

FIXES = (RELU, LEAKY_RELU, ELU, SELU)
