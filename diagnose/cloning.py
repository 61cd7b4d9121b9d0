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
        return copy.deepcopy(module, memo)
