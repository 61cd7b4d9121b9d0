"""Changing a model's module tree by qualified name: finding its layers (with their eager types),
replacing a submodule, and putting a BatchNorm after a layer.

Works alike on eager models and on `torch.export` archives rebuilt by `unflatten` (whose submodules
are `InterpreterModule`s: their original class is read from the graph's `nn_module_stack`
metadata).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diagnose.fixes.trial import FixNotApplicable
from probes.records import LayerRecord
from probes.targets import CONV_TYPES, LINEAR_TYPES, exported_type_names, kind_of, type_name_of


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    module: nn.Module
    type_name: str  # the eager class name, also for InterpreterModules
    kind: str | None


def module_nodes(model: nn.Module) -> list[Node]:
    """Every registration of every module (shared modules under each name), with its eager type."""
    exported = exported_type_names(model)
    nodes = []
    for name, module in model.named_modules(remove_duplicate=False):
        type_name = type_name_of(module, name, exported)
        has_params = any(True for _ in module.parameters(recurse=False))
        nodes.append(Node(name, module, type_name, kind_of(type_name, has_params)))
    return nodes


def weighted_nodes(model: nn.Module) -> list[Node]:
    """Linear and convolution layers: the ones an init scheme or batch norm applies to."""
    seen: set[int] = set()
    weighted = []
    for node in module_nodes(model):
        if node.kind in ("linear", "conv") and id(node.module) not in seen:
            weight = getattr(node.module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
                seen.add(id(node.module))
                weighted.append(node)
    return weighted


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def last_weighted_index(layers: Sequence[LayerRecord]) -> int | None:
    indices = [r.index for r in layers if r.kind in ("linear", "conv") and r.weight is not None]
    return max(indices) if indices else None


def insert_batch_norm(model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """Put a BatchNorm after each hidden linear/conv layer that feeds an activation.

    The layer becomes `Sequential(layer, BatchNorm)`, so the norm sits between the layer and its
    activation (the placement the BatchNorm paper argues for). The BN's rank follows the layer's
    output: (N, F) -> BatchNorm1d, (N, C, L) -> 1d, (N, C, H, W) -> 2d, (N, C, D, H, W) -> 3d.
    """
    last_weighted = last_weighted_index(layers)
    records = {r.name: r for r in layers if r.source == "module"}
    inserted, skipped = 0, []
    for node in weighted_nodes(model):
        record = records.get(node.name)
        if record is None or record.index == last_weighted:
            continue  # never ran, or the output layer: normalising logits is not the fix
        if record.followed_by in (None, "none") or (record.weight is not None and record.weight.normalized):
            continue
        layer = eager_layer(node)
        if layer is None:
            skipped.append(node.name)
            continue
        norm = _batch_norm_for(layer, node.kind, record.output_shape)
        if norm is None:
            skipped.append(node.name)
            continue
        weight = layer.weight
        set_submodule(model, node.name, nn.Sequential(layer, norm.to(device=weight.device, dtype=weight.dtype)))
        inserted += 1
    if inserted == 0:
        why = f" (could not rebuild {', '.join(skipped)})" if skipped else ""
        raise FixNotApplicable(f"no hidden linear or convolution layer feeds an activation without a norm{why}")
    tail = f"; left {', '.join(skipped)} alone (could not rebuild)" if skipped else ""
    return f"inserted BatchNorm after {inserted} layer{'s' if inserted != 1 else ''}{tail}"


def _batch_norm_for(layer: nn.Module, kind: str | None, output_shape: tuple[int, ...] | None) -> nn.Module | None:
    weight = layer.weight
    if isinstance(layer, nn.Linear):
        rank = len(output_shape) if output_shape else 2
        # BatchNorm1d on (N, T, F) would normalise over T; such a layer needs LayerNorm instead.
        return nn.BatchNorm1d(weight.shape[0]) if rank == 2 else None
    if isinstance(layer, nn.modules.conv._ConvNd):
        channels = layer.out_channels
        rank = len(output_shape) if output_shape else weight.dim()
        return {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank, lambda c: None)(channels)
    return None


def eager_layer(node: Node) -> nn.Module | None:
    """The layer as an eager nn.Linear / nn.ConvNd (an exported one rebuilt from its graph), sharing parameters.

    An `InterpreterModule` moved inside a new Sequential would lose its original type name (it is
    looked up by qualified name), and the probes would no longer see it as a linear/conv layer.
    """
    module = node.module
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return module
    graph = getattr(module, "graph", None)
    weight = getattr(module, "weight", None)
    if graph is None or not isinstance(weight, nn.Parameter):
        return None
    bias = getattr(module, "bias", None)
    calls = [n for n in graph.nodes if n.op == "call_function"]
    if len(calls) != 1:
        return None
    op = getattr(getattr(calls[0].target, "overloadpacket", None), "__name__", "")
    args = list(calls[0].args) + [None] * 7
    if node.type_name in LINEAR_TYPES and op == "linear" and weight.dim() == 2:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    elif node.type_name in CONV_TYPES and op in ("conv1d", "conv2d", "conv3d") and not node.type_name.startswith("ConvT"):
        dims = weight.dim() - 2
        stride, padding, dilation, groups = args[3] or 1, args[4] or 0, args[5] or 1, args[6] or 1
        if isinstance(padding, str):
            return None
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        layer = conv(
            weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias is not None, device="meta",
        )
    else:
        return None
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer
