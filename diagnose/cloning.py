"""Deep copies of models that also work for torch.export models rebuilt by `unflatten`."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def clone_module(module: nn.Module) -> nn.Module:
    """A deep copy of `module`: new parameters and buffers, shared (read-only) fx graphs.

    Modules rebuilt by `torch.export.unflatten` keep fx graphs whose node metadata holds fake
    tensors with symbolic sizes, which `copy.deepcopy` cannot copy. Running a graph never mutates
    it, so the copy shares the graph objects and their nodes while owning its own tensors.
    """
    memo: dict[int, object] = {}
    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        if isinstance(graph, torch.fx.Graph):
            memo[id(graph)] = graph
            for node in graph.nodes:
                memo[id(node)] = node
                memo[id(node.meta)] = node.meta
    with warnings.catch_warnings():
        # torch's own pytree deprecation, raised while copying export-rebuilt modules
        warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
        clone = copy.deepcopy(module, memo)
    _make_parameters_leaves(clone)
    return clone


def _make_parameters_leaves(module: nn.Module) -> None:
    """Deep-copied ScriptModules hold their parameters as autograd clones of the originals (not
    leaves: no `.grad`, no optimizer); detach them in place so the copy trains like the original."""
    with torch.no_grad():
        for param in module.parameters():
            if not param.is_leaf:
                requires_grad = param.requires_grad
                param.detach_()
                param.requires_grad_(requires_grad)
