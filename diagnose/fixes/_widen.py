"""Widening a bottleneck layer on a copy: more outputs for it, as many more inputs for the layer
that reads them, the old units' weights kept."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from diagnose.fixes._reinit import draw
from diagnose.fixes._surgery import eager_layer, module_nodes, set_submodule
from diagnose.fixes.trial import FixNotApplicable
from probes.records import LayerRecord
from probes.targets import scheme_for


def widen_layer(model: nn.Module, name: str, next_name: str, width: int, layers: Sequence[LayerRecord]) -> None:
    """Give layer `name` `width` outputs and `next_name`, which reads them, `width` inputs, in place.

    Handles the stacks where only width-agnostic modules (activations, dropout) and per-unit norms
    (BatchNorm, LayerNorm over the units) sit between the two: Linear -> act -> Linear and
    Conv -> BN -> act -> Conv, in a Sequential or in a forward that calls them in turn. The old
    units keep their weights (and a norm its statistics); the new ones are drawn from the init
    scheme each layer's activation needs, their biases zero.
    """
    records = {r.name: r for r in layers}
    nodes = {node.name: node for node in module_nodes(model)}
    if name not in nodes or next_name not in nodes or name not in records or next_name not in records:
        raise FixNotApplicable(f"{name} or {next_name} is not a module of the model")
    first, second = eager_layer(nodes[name]), eager_layer(nodes[next_name])
    if first is None or second is None or type(first) is not type(second) and not (
        isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
    ):
        raise FixNotApplicable(f"{name} -> {next_name} is not a Linear -> Linear or Conv -> Conv pair diagnose can rebuild")
    if getattr(first, "groups", 1) != 1 or getattr(second, "groups", 1) != 1:
        raise FixNotApplicable(f"{name} or {next_name} is a grouped convolution; widen it in the model's code")
    old = first.weight.shape[0]
    between = [r for r in layers if records[name].index < r.index < records[next_name].index]
    norms = []
    for record in between:
        if record.kind == "activation" or record.type in ("Dropout", "AlphaDropout", "Identity"):
            continue
        norm = nodes[record.name].module if record.name in nodes else None
        if record.kind == "norm" and _per_unit_norm(norm, old):
            norms.append((record.name, norm))
            continue
        raise FixNotApplicable(f"{record.name} ({record.type}) sits between {name} and {next_name}; "
                               "widen them in the model's code")
    readers = {name, *(r.name for r in between)}
    for record in layers:
        if record.input_from in readers and record.name not in readers and record.name != next_name:
            raise FixNotApplicable(f"{record.name} also reads the output of {name}; widen it in the model's code")
    set_submodule(model, name, _widened(first, width, records[name], outputs=True))
    set_submodule(model, next_name, _widened(second, width, records[next_name], outputs=False))
    for norm_name, norm in norms:
        set_submodule(model, norm_name, _widened_norm(norm, width))


def _per_unit_norm(module: nn.Module | None, units: int) -> bool:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features == units
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape) == (units,)
    return False


def _widened(layer: nn.Module, width: int, record: LayerRecord, *, outputs: bool) -> nn.Module:
    """A copy of `layer` with `width` outputs (or inputs): old weights in the old slice, new ones by scheme."""
    weight = layer.weight
    bias = layer.bias
    if isinstance(layer, nn.Linear):
        shape = (width, weight.shape[1]) if outputs else (weight.shape[0], width)
        new = nn.Linear(shape[1], shape[0], bias=bias is not None)
    else:
        channels = (layer.in_channels, width) if outputs else (width, layer.out_channels)
        new = type(layer)(*channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, bias=bias is not None, padding_mode=layer.padding_mode)
    new = new.to(device=weight.device, dtype=weight.dtype)
    scheme = record.weight.scheme if record.weight is not None and record.weight.scheme else scheme_for(record.followed_by)
    with torch.no_grad():
        draw(new.weight, scheme)
        old = weight.shape[0] if outputs else weight.shape[1]
        if outputs:
            new.weight[:old].copy_(weight)
        else:
            new.weight[:, :old].copy_(weight)
        if bias is not None:
            new.bias.zero_()
            new.bias[: bias.shape[0]].copy_(bias)
    return new


def _widened_norm(norm: nn.Module, width: int) -> nn.Module:
    """The norm over `width` units: the old units' parameters and running statistics kept, new ones neutral."""
    old = norm.num_features if isinstance(norm, nn.modules.batchnorm._BatchNorm) else norm.normalized_shape[0]
    if isinstance(norm, nn.LayerNorm):
        new = nn.LayerNorm(width, eps=norm.eps, elementwise_affine=norm.elementwise_affine)
    else:
        new = type(norm)(width, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                         track_running_stats=norm.track_running_stats)
    reference = next(iter(norm.parameters()), None)
    if reference is None:
        reference = next(iter(norm.buffers()), None)
    if reference is not None:
        new = new.to(device=reference.device, dtype=reference.dtype)
    new.train(norm.training)
    with torch.no_grad():
        for key, value in norm.state_dict().items():
            target = new.state_dict()[key]
            if value.dim() == 0:
                target.copy_(value)  # num_batches_tracked
            else:
                target[:old].copy_(value)
    return new
