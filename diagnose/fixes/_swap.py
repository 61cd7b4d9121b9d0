"""Swapping a model's hidden activations for another family, modules and function calls alike.

Activations called as functions (`F.relu`, `torch.sigmoid`, `aten.sigmoid.default` in an exported
graph) have no module to replace, so a swap also installs a `TorchFunctionMode` that substitutes
the function while the fixed copy's forward runs. The output activation (after the last weighted
layer) is left alone: it defines the output's range, not the hidden dynamics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from diagnose.fixes._reinit import reinitialize
from diagnose.fixes._surgery import last_weighted_index, module_nodes, set_submodule
from diagnose.fixes.trial import FixNotApplicable
from probes.activations import ACTIVATION_MODULES, SATURATING
from probes.records import LayerRecord
from probes.targets import function_family

# The LeakyReLU slope PyTorch and Keras default to; small enough to keep ReLU's sparsity.
LEAKY_SLOPE = 0.01


@dataclass(frozen=True, slots=True)
class Swap:
    """What an activation fix swaps: the new family, the families it replaces, the init it needs."""

    family: str  # relu, leaky_relu, elu or selu
    sources: frozenset[str]
    scheme: str


_NEW_MODULE: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
    "elu": nn.ELU,
    "selu": nn.SELU,
}

_NEW_FUNCTION: dict[str, Callable[..., torch.Tensor]] = {
    "relu": lambda x, inplace: F.relu(x, inplace=inplace),
    "leaky_relu": lambda x, inplace: F.leaky_relu(x, LEAKY_SLOPE, inplace=inplace),
    "elu": lambda x, inplace: F.elu(x, inplace=inplace),
    "selu": lambda x, inplace: F.selu(x, inplace=inplace),
}


class ActivationSwap(TorchFunctionMode):
    """Substitutes activation functions of the source families while the fixed model runs.

    Covers `F.sigmoid`, `torch.sigmoid`, `x.sigmoid()`, their in-place forms and the `aten` ops an
    exported graph calls. The last `keep_last` source calls of each forward (the output
    activation) run unchanged, and so does everything while `suspended` (an output activation
    module that calls `torch.sigmoid` inside its own forward).
    """

    def __init__(self, swap: Swap, swap_calls: int) -> None:
        super().__init__()
        self.swap = swap
        self.swap_calls = swap_calls  # source calls per forward to substitute, in execution order
        self.seen = 0
        self.suspended = 0
        self._families: dict[object, str | None] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        family = self._family(func)
        if family not in self.swap.sources or self.suspended:
            return func(*args, **kwargs)
        ordinal = self.seen
        self.seen += 1
        if ordinal >= self.swap_calls:
            return func(*args, **kwargs)
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        if not isinstance(x, torch.Tensor):
            return func(*args, **kwargs)
        inplace = _is_inplace(func, kwargs)
        return _NEW_FUNCTION[self.swap.family](x, inplace)

    def __deepcopy__(self, memo) -> "ActivationSwap":
        # A fresh mode for the copied model: the cache holds op objects that do not deep-copy.
        return ActivationSwap(self.swap, self.swap_calls)

    def _family(self, func) -> str | None:
        try:
            if func not in self._families:
                self._families[func] = function_family(func)
            return self._families[func]
        except TypeError:  # an unhashable callable is never an activation we know
            return None


def _is_inplace(func, kwargs) -> bool:
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet if packet is not None else func, "__name__", "")
    return name.endswith("_") or bool(kwargs.get("inplace", False))


class _ForwardInMode:
    """Stored as the fixed model's own `forward`: runs its class forward inside the swap mode.

    An instance attribute rather than a wrapper module, so every layer keeps its qualified name
    (per-layer ignores and before/after layer names line up). It survives `copy.deepcopy`, which
    copies `module` through the memo to the new model.
    """

    def __init__(self, module: nn.Module, mode: ActivationSwap) -> None:
        self.module = module
        self.mode = mode

    def __call__(self, *args, **kwargs):
        self.mode.seen = 0
        with self.mode:
            return type(self.module).forward(self.module, *args, **kwargs)


class _ForwardUnswapped:
    """Stored as an output activation module's `forward`: its internal call is left as it is."""

    def __init__(self, module: nn.Module, mode: ActivationSwap) -> None:
        self.module = module
        self.mode = mode

    def __call__(self, *args, **kwargs):
        self.mode.suspended += 1
        try:
            return type(self.module).forward(self.module, *args, **kwargs)
        finally:
            self.mode.suspended -= 1


def swap_activations(model: nn.Module, swap: Swap, layers: Sequence[LayerRecord]) -> str:
    """Replace hidden activations (modules and function calls) and re-initialise for the new one."""
    last_weighted = last_weighted_index(layers)
    output_activations = {
        r.name for r in layers
        if r.kind == "activation" and r.source == "module" and last_weighted is not None and r.index > last_weighted
    }
    function_records = [
        r for r in layers if r.kind == "activation" and r.source == "function" and r.activation_kind in swap.sources
    ]
    # Calls are counted per forward in execution order; the ones after the last weighted layer
    # produce the model's output and stay as they are.
    total_calls = sum(max(r.calls, 1) for r in function_records)
    output_calls = sum(
        max(r.calls, 1) for r in function_records if last_weighted is not None and r.index > last_weighted
    )
    # Calls the probes did not record (none at all: a model without functional activations) stay
    # as they are: only what was seen and judged is changed.
    mode = ActivationSwap(swap, total_calls - output_calls)

    replaced = 0
    for node in module_nodes(model):
        family = ACTIVATION_MODULES.get(node.type_name)
        if node.kind != "activation" or family not in swap.sources or not node.name:
            continue
        if node.name in output_activations:
            object.__setattr__(node.module, "forward", _ForwardUnswapped(node.module, mode))
            continue
        set_submodule(model, node.name, _NEW_MODULE[swap.family]())
        replaced += 1
    swapped_calls = total_calls - output_calls
    if replaced == 0 and swapped_calls <= 0:
        present = sorted({r.activation_kind for r in layers if r.kind == "activation" and r.activation_kind})
        raise FixNotApplicable(
            f"the model has no hidden {' / '.join(sorted(swap.sources & SATURATING) or swap.sources)} "
            f"activation to replace with {swap.family} (it uses: {', '.join(present) or 'none'})"
        )
    object.__setattr__(model, "forward", _ForwardInMode(model, mode))
    leaky = LEAKY_SLOPE if swap.family == "leaky_relu" else 0.0
    count = reinitialize(model, swap.scheme, leaky_slope=leaky)
    parts = []
    if replaced:
        parts.append(f"{replaced} activation module{'s' if replaced != 1 else ''}")
    if swapped_calls > 0:
        parts.append(f"{swapped_calls} functional activation call{'s' if swapped_calls != 1 else ''} per forward")
    scheme = {"he": "He", "lecun": "LeCun", "glorot": "Glorot"}[swap.scheme]
    return f"replaced {' and '.join(parts)} with {swap.family}; {scheme} initialisation on {count} layers"
