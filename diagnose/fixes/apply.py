"""Apply one recommended fix to a fresh copy of a model, so `--try-fixes` can measure its effect.

`apply_fix(fix_id, module, workload, layers)` returns a `FixTrial`: a fixed deep copy of the
module plus the workload to run it with (a fix may change the model, the optimiser settings or
the batch). The user's module is never modified. A fix that cannot be applied to this model
automatically raises `FixNotApplicable` with the reason in one sentence.

Fixes are applied on the module tree, by qualified name, so they work alike on eager models and
on `torch.export` archives rebuilt by `unflatten` (whose submodules are `InterpreterModule`s: their
original class is read from the graph's `nn_module_stack` metadata). Activations called as
functions (`F.relu`, `torch.sigmoid`, `aten.sigmoid.default` in an exported graph) have no module
to replace, so an activation swap also installs a `TorchFunctionMode` that substitutes the
function while the fixed copy's forward runs.

`layers` are the probe records of the original model at initialisation: they say which weighted
layer is the output layer, which activation runs after it (left alone: it defines the output's
range, not the hidden dynamics), and how many functional activation calls one forward makes.
`run` is the unchanged copy's short run under the same workload: a fix whose setting is measured
(gradient clipping's threshold) reads it there, and its trial carries the snippet with that value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from diagnose.cloning import clone_module
from diagnose.evidence import LossTrace
from diagnose.fixes._model import FixTarget
from diagnose.fixes.learning_rate import LR_FIXES, apply_lr_fix
from diagnose.fixes.optimization import (
    DEFAULT_CLIP_NORM,
    clip_snippet,
    measured_clip_norm,
    optimizer_candidates,
    optimizer_snippet,
)
from diagnose.loading.inputs import Batch, describe_input
from diagnose.run import Workload
from probes.records import LayerRecord
from probes.targets import (
    ACTIVATION_MODULES,
    CONV_TYPES,
    LINEAR_TYPES,
    exported_type_names,
    function_family,
    kind_of,
    scheme_for,
    type_name_of,
)

# Saturating activations: the ones `relu` replaces (their derivative vanishes at both ends).
SATURATING_FAMILIES = frozenset({"sigmoid", "tanh", "hardtanh", "hardsigmoid", "softsign", "logsigmoid"})
# Units of these families can die (exactly zero gradient below zero): what leaky-relu/elu replace.
DYING_FAMILIES = frozenset({"relu", "relu6"})
# SELU's self-normalisation needs every hidden activation to be SELU, so it replaces them all.
ALL_FAMILIES = frozenset(ACTIVATION_MODULES.values())

# The LeakyReLU slope PyTorch and Keras default to; small enough to keep ReLU's sparsity.
LEAKY_SLOPE = 0.01
# Input standardisation divides by the std; a constant feature would divide by zero.
MIN_STD = 1e-8

# Fixes that change the architecture in ways only the model's author can do soundly.
NOT_AUTOMATIC: dict[str, str] = {
    "residual-connections": (
        "adding skip connections changes the model's structure and needs matching shapes at "
        "each junction; add them in the model's code"
    ),
    "lr-schedule": (
        "a schedule pays off over many epochs, which a short run of a few steps cannot show"
    ),
}


class FixNotApplicable(Exception):
    """This fix cannot be applied automatically to this model; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FixTrial:
    """A fixed copy of the model and the workload to measure it with."""

    module: nn.Module
    workload: Workload
    change: str  # what was done, in words: "replaced 7 sigmoid activations with relu; He init on 8 layers"
    snippet: str | None = None  # the fix's snippet for the values measured here (None: the recommender's stands)


def apply_fix(
    fix_id: str, module: nn.Module, workload: Workload, layers: Sequence[LayerRecord], run: LossTrace | None = None
) -> FixTrial:
    """Apply `fix_id` to a deep copy of `module` (and/or to the workload); raise FixNotApplicable."""
    if fix_id in NOT_AUTOMATIC:
        raise FixNotApplicable(NOT_AUTOMATIC[fix_id])
    if fix_id == "gradient-clipping":
        return clip_gradients(module, workload, run)
    if fix_id == "change-optimizer":
        return change_optimizer(module, workload)
    if fix_id in LR_FIXES:
        lr_change = apply_lr_fix(fix_id, module, workload)  # an LR range test on the model picks the rate
        return FixTrial(module=module, workload=lr_change.workload, change=lr_change.change, snippet=lr_change.snippet)
    if fix_id == "normalize-inputs":
        batch, change = standardize_batch(workload.batch)
        return FixTrial(module=module, workload=replace(workload, batch=batch), change=change)
    if fix_id not in _MODEL_FIXES:
        raise FixNotApplicable(f"diagnose does not know how to apply {fix_id!r} automatically")
    if isinstance(module, torch.jit.ScriptModule):
        raise FixNotApplicable("a TorchScript model's structure and forward cannot be rebuilt; apply it in the source")
    fixed = clone_module(module)
    with torch.random.fork_rng(devices=[workload.device] if workload.device.type == "cuda" else []):
        torch.manual_seed(workload.seed)  # re-initialisation is reproducible and leaves the global RNG alone
        change = _MODEL_FIXES[fix_id](fixed, layers)
    return FixTrial(module=fixed, workload=workload, change=change)


# ---------------------------------------------------------------------------------------------
# The module tree


@dataclass(frozen=True, slots=True)
class _Node:
    name: str
    module: nn.Module
    type_name: str  # the eager class name, also for InterpreterModules
    kind: str | None


def _nodes(model: nn.Module) -> list[_Node]:
    """Every registration of every module (shared modules under each name), with its eager type."""
    exported = exported_type_names(model)
    nodes = []
    for name, module in model.named_modules(remove_duplicate=False):
        type_name = type_name_of(module, name, exported)
        has_params = any(True for _ in module.parameters(recurse=False))
        nodes.append(_Node(name, module, type_name, kind_of(type_name, has_params)))
    return nodes


def _weighted(model: nn.Module) -> list[_Node]:
    """Linear and convolution layers: the ones an init scheme or batch norm applies to."""
    seen: set[int] = set()
    weighted = []
    for node in _nodes(model):
        if node.kind in ("linear", "conv") and id(node.module) not in seen:
            weight = getattr(node.module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
                seen.add(id(node.module))
                weighted.append(node)
    return weighted


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _last_weighted_index(layers: Sequence[LayerRecord]) -> int | None:
    indices = [r.index for r in layers if r.kind in ("linear", "conv") and r.weight is not None]
    return max(indices) if indices else None


# ---------------------------------------------------------------------------------------------
# Initialisation schemes


def reinitialize(model: nn.Module, scheme: str, *, leaky_slope: float = 0.0, only: set[str] | None = None) -> int:
    """Re-draw linear/conv weights (all, or those named in `only`) from `scheme`, biases to zero."""
    count = 0
    for node in _weighted(model):
        if only is not None and node.name not in only:
            continue
        weight = node.module.weight
        with torch.no_grad():
            if scheme == "he":
                nonlinearity = "leaky_relu" if leaky_slope else "relu"
                nn.init.kaiming_normal_(weight, a=leaky_slope, nonlinearity=nonlinearity)
            elif scheme == "glorot":
                nn.init.xavier_normal_(weight)
            elif scheme == "lecun":
                fan_in = nn.init._calculate_fan_in_and_fan_out(weight)[0]
                nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(fan_in))
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
            bias = getattr(node.module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()
        count += 1
    if count == 0:
        raise FixNotApplicable("the model has no linear or convolution layer to re-initialise")
    return count


def _init_fix(scheme: str, label: str) -> Callable[[nn.Module, Sequence[LayerRecord]], str]:
    def fix(model: nn.Module, layers: Sequence[LayerRecord]) -> str:
        # The layers whose activation wants this scheme (He for ReLU-like, LeCun for SELU, Glorot for
        # the rest), as the recommender groups them; when none does, the user asked for the scheme
        # everywhere.
        wanting = {
            r.name for r in layers
            if r.kind in ("linear", "conv") and r.source == "module" and scheme_for(r.followed_by) == scheme
        }
        # Recurrent layers run tanh/sigmoid inside: Glorot's, with orthogonal recurrent weights.
        recurrent = {r.name for r in layers if r.kind == "recurrent"} if scheme == "glorot" else set()
        done = []
        if wanting or not recurrent:
            count = reinitialize(model, scheme, only=wanting or None)
            done.append(f"{label} initialisation on {count} layer{'s' if count != 1 else ''}, biases zeroed")
        if recurrent:
            count = reinitialize_recurrent(model, recurrent)
            done.append(f"Glorot input and orthogonal recurrent weights in {count} recurrent "
                        f"layer{'s' if count != 1 else ''}")
        return "; ".join(done)

    return fix


def reinitialize_recurrent(model: nn.Module, only: set[str]) -> int:
    """Keras' recipe for RNN/LSTM/GRU layers: Glorot-uniform input weights and orthogonal recurrent
    weights, gate by gate, biases zero (an LSTM's forget gate +1).

    An orthogonal matrix keeps a vector's norm, so the recurrent step neither shrinks nor grows the
    gradient going back through time beyond what the gates' slopes do (Saxe et al. 2014).
    """
    count = 0
    for name, module in model.named_modules():
        if name not in only or not isinstance(module, nn.RNNBase):
            continue
        hidden = module.hidden_size
        with torch.no_grad():
            for param_name, param in module.named_parameters():
                if param_name.startswith("weight_ih"):
                    for gate in param.split(hidden):
                        nn.init.xavier_uniform_(gate)
                elif param_name.startswith("weight_hh"):
                    for gate in param.split(hidden):
                        nn.init.orthogonal_(gate)
                elif param_name.startswith("bias"):
                    param.zero_()
        count += 1
    if count == 0:
        raise FixNotApplicable("the recurrent layers are not torch RNN/LSTM/GRU modules diagnose can re-initialise")
    reset_forget_gates(model)
    return count


def zero_biases(model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """Reset every linear/conv bias to zero, the neutral start that puts no unit in a dead or flat zone."""
    count = 0
    for node in _weighted(model):
        bias = getattr(node.module, "bias", None)
        if isinstance(bias, torch.Tensor):
            with torch.no_grad():
                bias.zero_()
            count += 1
    lstms = reset_forget_gates(model)
    if count == 0 and lstms == 0:
        raise FixNotApplicable("the model's linear, convolution and LSTM layers have no biases to reset")
    done = [f"biases of {count} layer{'s' if count != 1 else ''} reset to zero"] if count else []
    if lstms:
        done.append(f"forget-gate bias of {lstms} LSTM{'s' if lstms != 1 else ''} set to +1")
    return "; ".join(done)


def reset_forget_gates(model: nn.Module) -> int:
    """The LSTM recipe: forget-gate bias +1 (b_ih), 0 (b_hh), other gate biases 0 (Jozefowicz et al. 2015)."""
    count = 0
    for module in model.modules():
        if not isinstance(module, nn.LSTM) or not module.bias:
            continue
        hidden = module.hidden_size
        with torch.no_grad():
            for name, param in module.named_parameters():
                if name.startswith("bias_"):
                    param.zero_()
                    if name.startswith("bias_ih"):
                        param[hidden:2 * hidden].fill_(1.0)
        count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Activation swaps


@dataclass(frozen=True, slots=True)
class _Swap:
    family: str  # the new activation's family
    sources: frozenset[str]  # families it replaces
    scheme: str  # the init the new activation needs


_SWAPS: dict[str, _Swap] = {
    "relu": _Swap("relu", SATURATING_FAMILIES, "he"),
    "leaky-relu": _Swap("leaky_relu", SATURATING_FAMILIES | DYING_FAMILIES, "he"),
    "elu": _Swap("elu", SATURATING_FAMILIES | DYING_FAMILIES, "he"),
    "selu": _Swap("selu", ALL_FAMILIES - {"selu"}, "lecun"),
}

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

    def __init__(self, swap: _Swap, swap_calls: int) -> None:
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


def swap_activations(model: nn.Module, fix_id: str, layers: Sequence[LayerRecord]) -> str:
    """Replace hidden activations (modules and function calls) and re-initialise for the new one."""
    swap = _SWAPS[fix_id]
    last_weighted = _last_weighted_index(layers)
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
    for node in _nodes(model):
        family = ACTIVATION_MODULES.get(node.type_name)
        if node.kind != "activation" or family not in swap.sources or not node.name:
            continue
        if node.name in output_activations:
            object.__setattr__(node.module, "forward", _ForwardUnswapped(node.module, mode))
            continue
        _set_submodule(model, node.name, _NEW_MODULE[swap.family]())
        replaced += 1
    swapped_calls = total_calls - output_calls
    if replaced == 0 and swapped_calls <= 0:
        present = sorted({r.activation_kind for r in layers if r.kind == "activation" and r.activation_kind})
        raise FixNotApplicable(
            f"the model has no hidden {' / '.join(sorted(swap.sources & SATURATING_FAMILIES) or swap.sources)} "
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


def _swap_fix(fix_id: str) -> Callable[[nn.Module, Sequence[LayerRecord]], str]:
    return lambda model, layers: swap_activations(model, fix_id, layers)


def make_self_normalizing(model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """The `selu` fix: a plain dense SELU stack, as self-normalisation needs it.

    Every hidden activation becomes SELU, norm layers go (SELU does their job, and they break its
    fixed point), Dropout becomes AlphaDropout (which keeps the mean and variance SELU relies on),
    and the weights are drawn LeCun-normal.
    """
    structural = sorted({r.type for r in layers if r.kind in ("conv", "recurrent", "attention")})
    if structural:
        raise FixNotApplicable(
            f"SELU's self-normalisation holds for plain dense stacks; this model has {', '.join(structural)} layers"
        )
    parts = []
    try:
        parts.append(swap_activations(model, "selu", layers))
    except FixNotApplicable:
        pass  # every hidden activation is SELU already
    norms = dropouts = 0
    for node in _nodes(model):
        if not node.name:
            continue
        if node.kind == "norm":
            _set_submodule(model, node.name, nn.Identity())
            norms += 1
        elif node.type_name == "Dropout":
            _set_submodule(model, node.name, nn.AlphaDropout(getattr(node.module, "p", 0.0)))
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


# ---------------------------------------------------------------------------------------------
# Batch normalisation


def insert_batch_norm(model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """Put a BatchNorm after each hidden linear/conv layer that feeds an activation.

    The layer becomes `Sequential(layer, BatchNorm)`, so the norm sits between the layer and its
    activation (the placement the BatchNorm paper argues for). The BN's rank follows the layer's
    output: (N, F) -> BatchNorm1d, (N, C, L) -> 1d, (N, C, H, W) -> 2d, (N, C, D, H, W) -> 3d.
    """
    last_weighted = _last_weighted_index(layers)
    records = {r.name: r for r in layers if r.source == "module"}
    inserted, skipped = 0, []
    for node in _weighted(model):
        record = records.get(node.name)
        if record is None or record.index == last_weighted:
            continue  # never ran, or the output layer: normalising logits is not the fix
        if record.followed_by in (None, "none") or (record.weight is not None and record.weight.normalized):
            continue
        layer = _eager_layer(node)
        if layer is None:
            skipped.append(node.name)
            continue
        norm = _batch_norm_for(layer, node.kind, record.output_shape)
        if norm is None:
            skipped.append(node.name)
            continue
        weight = layer.weight
        _set_submodule(model, node.name, nn.Sequential(layer, norm.to(device=weight.device, dtype=weight.dtype)))
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


def _eager_layer(node: _Node) -> nn.Module | None:
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


# ---------------------------------------------------------------------------------------------
# Widening a bottleneck


def widen_bottlenecks(model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """Widen each bottleneck the check finds to its narrower neighbour's width (and the next layer's input)."""
    from diagnose.checks.bottleneck_layer import bottlenecks

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


def widen_layer(model: nn.Module, name: str, next_name: str, width: int, layers: Sequence[LayerRecord]) -> None:
    """Give layer `name` `width` outputs and `next_name`, which reads them, `width` inputs, in place.

    Handles the stacks where only width-agnostic modules (activations, dropout) and per-unit norms
    (BatchNorm, LayerNorm over the units) sit between the two: Linear -> act -> Linear and
    Conv -> BN -> act -> Conv, in a Sequential or in a forward that calls them in turn. The old
    units keep their weights (and a norm its statistics); the new ones are drawn from the init
    scheme each layer's activation needs, their biases zero.
    """
    records = {r.name: r for r in layers}
    nodes = {node.name: node for node in _nodes(model)}
    if name not in nodes or next_name not in nodes or name not in records or next_name not in records:
        raise FixNotApplicable(f"{name} or {next_name} is not a module of the model")
    first, second = _eager_layer(nodes[name]), _eager_layer(nodes[next_name])
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
    _set_submodule(model, name, _widened(first, width, records[name], outputs=True))
    _set_submodule(model, next_name, _widened(second, width, records[next_name], outputs=False))
    for norm_name, norm in norms:
        _set_submodule(model, norm_name, _widened_norm(norm, width))


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
        _draw(new.weight, scheme)
        old = weight.shape[0] if outputs else weight.shape[1]
        if outputs:
            new.weight[:old].copy_(weight)
        else:
            new.weight[:, :old].copy_(weight)
        if bias is not None:
            new.bias.zero_()
            new.bias[: bias.shape[0]].copy_(bias)
    return new


def _draw(weight: torch.Tensor, scheme: str) -> None:
    if scheme == "he":
        nn.init.kaiming_normal_(weight, nonlinearity="relu")
    elif scheme == "lecun":
        nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(weight)[0]))
    else:
        nn.init.xavier_normal_(weight)


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


# ---------------------------------------------------------------------------------------------
# Workload fixes: the optimiser settings and the batch


def clip_gradients(module: nn.Module, workload: Workload, run: LossTrace | None) -> FixTrial:
    """Clip by global norm at the threshold the unchanged copy's run measured (or the default)."""
    measured = measured_clip_norm(run.history, run.gradient_norms) if run is not None else None
    if measured is None:
        target = FixTarget()
        change = f"gradients clipped to global norm {DEFAULT_CLIP_NORM:g} (no gradient norm measured)"
        threshold = DEFAULT_CLIP_NORM
    else:
        threshold, steps = measured
        target = FixTarget(clip_norm=threshold, clip_steps=steps)
        change = f"gradients clipped to global norm {threshold:.3g}, the 90th percentile of {steps} measured norms"
    return FixTrial(module=module, workload=replace(workload, clip_grad_norm=threshold), change=change,
                    snippet=clip_snippet(target))


def change_optimizer(module: nn.Module, workload: Workload) -> FixTrial:
    """The candidate optimizer whose short run on a copy ends at the lowest loss (one run each)."""
    from diagnose import progress
    from diagnose.run import measure

    candidates = optimizer_candidates(workload.optimizer, workload.lr)
    finals: list[tuple[float, int]] = []
    if len(candidates) > 1:
        for position, (name, lr) in enumerate(candidates):
            progress.stage(f"change-optimizer: a short run with {name} at lr {lr:g}", total=workload.steps + 1)
            final = measure(module, replace(workload, optimizer=name, lr=lr)).loss.final
            finals.append((final if final is not None and math.isfinite(final) else math.inf, position))
    best = min(finals)[1] if finals else 0
    name, lr = candidates[best]
    change = f"optimizer {workload.optimizer} (lr {workload.lr:g}) -> {name} (lr {lr:g})"
    if finals:
        tried = ", ".join(f"{n} (lr {r:g}) {loss:.3g}" for (n, r), (loss, _) in zip(candidates, finals))
        change += f", the lowest short-run loss of {tried}"
    others = [c for i, c in enumerate(candidates) if i != best]
    return FixTrial(module=module, workload=replace(workload, optimizer=name, lr=lr), change=change,
                    snippet=optimizer_snippet(workload.optimizer, (name, lr), others))


def standardize_batch(batch: Batch) -> tuple[Batch, str]:
    """The batch with each floating input standardised: per feature (N, F), per channel (N, C, ...).

    Statistics come from the finite entries; a NaN/Inf entry is imputed with its feature's mean
    (0 once standardised), as the snippet for non-finite inputs does.
    """
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


_MODEL_FIXES: dict[str, Callable[[nn.Module, Sequence[LayerRecord]], str]] = {
    "he-init": _init_fix("he", "He"),
    "glorot-init": _init_fix("glorot", "Glorot"),
    "lecun-init": _init_fix("lecun", "LeCun"),
    "relu": _swap_fix("relu"),
    "leaky-relu": _swap_fix("leaky-relu"),
    "elu": _swap_fix("elu"),
    "selu": make_self_normalizing,
    "batch-norm": insert_batch_norm,
    "fix-bias-init": zero_biases,
    "widen-layer": widen_bottlenecks,
}
