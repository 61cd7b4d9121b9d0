"""Which modules and functions are probed: their kinds, eager type names, own parameters and init
schemes (the activations' names and families are in probes/activations.py)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from probes.activations import ACTIVATION_FUNCTIONS, ACTIVATION_MODULES, RELU_LIKE

# Bounded activations and the outputs counted as saturated (derivative ~0). The margins:
# sigmoid at 0.01/0.99 has derivative < 0.0099 (4 % of its 0.25 peak); tanh at |y| > 0.99 has
# 1 - y^2 < 0.02 (2 % of its peak); softsign at |y| > 0.99 has (1 - |y|)^2 < 1e-4; the hard
# variants have derivative exactly 0 at their bounds.
SATURATION_BOUNDS: dict[str, tuple[float, float, bool]] = {
    # family: (low, high, inclusive)
    "sigmoid": (0.01, 0.99, False),
    "tanh": (-0.99, 0.99, False),
    "softsign": (-0.99, 0.99, False),
    "hardtanh": (-1.0, 1.0, True),
    "hardsigmoid": (0.0, 1.0, True),
}

# SELU's constants make unit variance a fixed point only with LeCun-normal weights (1/fan_in).
LECUN_FAMILIES = frozenset({"selu"})

LINEAR_TYPES = frozenset({"Linear", "LazyLinear", "Bilinear", "NonDynamicallyQuantizableLinear"})
CONV_TYPES = frozenset(
    {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
     "LazyConv1d", "LazyConv2d", "LazyConv3d"}
)
EMBEDDING_TYPES = frozenset({"Embedding", "EmbeddingBag"})
RECURRENT_TYPES = frozenset({"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"})
NORM_TYPES = frozenset(
    {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm",
     "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm",
     "LlamaRMSNorm", "T5LayerNorm"}
)
ATTENTION_TYPES = frozenset({"MultiheadAttention"})
# Hugging Face's GPT-2 "Conv1D" is a linear layer whose weight is stored (fan_in, fan_out).
TRANSPOSED_LINEAR_TYPES = frozenset({"Conv1D"})

WEIGHTED_KINDS = frozenset({"linear", "conv", "embedding", "recurrent", "attention", "other"})


def kind_of(type_name: str, has_direct_params: bool) -> str | None:
    """The probe kind of a module, or None when it is not probed (a plain container)."""
    if type_name in ACTIVATION_MODULES:
        return "activation"
    if type_name in LINEAR_TYPES or type_name in TRANSPOSED_LINEAR_TYPES:
        return "linear"
    if type_name in CONV_TYPES:
        return "conv"
    if type_name in EMBEDDING_TYPES:
        return "embedding"
    if type_name in RECURRENT_TYPES:
        return "recurrent"
    if type_name in NORM_TYPES or type_name.endswith("RMSNorm") or type_name.endswith("LayerNorm"):
        return "norm"
    if type_name in ATTENTION_TYPES:
        return "attention"
    if has_direct_params:
        return "other"
    return None


def function_family(func: object) -> str | None:
    """The activation family of a function seen by the torch-function mode, or None."""
    packet = getattr(func, "overloadpacket", None)  # aten.relu.default -> aten.relu
    name = getattr(packet if packet is not None else func, "__name__", None)
    if not isinstance(name, str):
        return None
    return ACTIVATION_FUNCTIONS.get(name)


def function_display_name(func: object) -> str:
    """A stable short name for a probed function: relu for F.relu, torch.relu_ and aten.relu."""
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet if packet is not None else func, "__name__", "fn")
    name = name.rstrip("_") or name
    return {"log_sigmoid": "logsigmoid", "_prelu_kernel": "prelu", "rrelu_with_noise": "rrelu"}.get(
        name, name
    )


def exported_type_names(model: nn.Module) -> dict[str, str]:
    """Original module class names of an unflattened torch.export model, by qualified name.

    `torch.export.unflatten` rebuilds the hierarchy from `InterpreterModule`s; each graph node's
    `meta["nn_module_stack"]` still names the eager class of every module it ran inside.
    """
    names: dict[str, str] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            continue  # a TorchScript graph: `nodes` is a method there, and no nn_module_stack
        graph = getattr(module, "graph", None)
        if graph is None or not hasattr(graph, "nodes"):
            continue
        for node in graph.nodes:
            stack = node.meta.get("nn_module_stack") if hasattr(node, "meta") else None
            if not stack:
                continue
            for path, type_ref in stack.values():
                type_name = type_ref if isinstance(type_ref, str) else getattr(type_ref, "__name__", "")
                type_name = type_name.rsplit(".", 1)[-1]
                if path not in names:
                    names[path] = type_name
    return names


def type_name_of(module: nn.Module, qualified_name: str, exported: dict[str, str]) -> str:
    if isinstance(module, torch.jit.ScriptModule):
        return module.original_name  # the eager class name it was scripted (or traced) from
    if parametrize.is_parametrized(module):  # weight_norm/spectral_norm: "ParametrizedLinear"
        return parametrize.type_before_parametrizations(module).__name__
    exported_name = exported.get(qualified_name)
    cls_name = type(module).__name__
    if exported_name and cls_name in ("InterpreterModule", "UnflattenedModule", "GraphModule"):
        return exported_name
    return cls_name


def in_parametrization(qualified_name: str) -> bool:
    """A module of torch.nn.utils.parametrize's machinery (`layer.parametrizations.weight[.0]`):
    it computes a parametrized tensor for its owner and is not a layer of the model."""
    return "parametrizations" in qualified_name.split(".")


def own_parameters(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A layer's own parameters: the direct ones, and the originals behind its parametrized
    tensors (weight_norm's `weight.original0`/`original1`), which belong to it, not to the
    parametrization modules that hold them."""
    params = list(module.named_parameters(recurse=False))
    if parametrize.is_parametrized(module):
        params += [
            (f"{tensor_name}.{local}", param)
            for tensor_name, holder in module.parametrizations.items()
            for local, param in holder.named_parameters()
        ]
    return params


def is_uninitialized(tensor: torch.Tensor) -> bool:
    """A lazy module's parameter (or buffer) before its first forward: it has no shape yet."""
    return isinstance(tensor, nn.parameter.UninitializedTensorMixin)


def main_weight(module: nn.Module, kind: str) -> tuple[str, torch.Tensor] | None:
    """The parameter whose scale is judged against an init scheme, if the layer has one."""
    if kind in ("norm", "activation"):
        return None
    params = {name: p for name, p in module.named_parameters(recurse=False) if not is_uninitialized(p)}
    if kind == "attention" and "in_proj_weight" in params:
        return "in_proj_weight", params["in_proj_weight"]
    if "weight" in params and params["weight"].dim() >= 2:
        return "weight", params["weight"]
    if kind == "recurrent":
        for name, value in params.items():
            if name.startswith("weight_ih"):
                return name, value
    for name, value in params.items():
        if value.dim() >= 2:
            return name, value
    return None


def fans(weight: torch.Tensor, type_name: str) -> tuple[int, int]:
    """fan_in, fan_out as torch.nn.init computes them (HF Conv1D stores its weight transposed)."""
    if type_name in TRANSPOSED_LINEAR_TYPES and weight.dim() == 2:
        return int(weight.shape[0]), int(weight.shape[1])
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return int(weight.shape[1]) * receptive, int(weight.shape[0]) * receptive


def expected_std(scheme: str, fan_in: int, fan_out: int) -> float:
    """Std of the normal init each scheme prescribes (He 2/fan_in, Glorot 2/(in+out), LeCun 1/fan_in)."""
    if scheme == "he":
        return math.sqrt(2.0 / fan_in)
    if scheme == "lecun":
        return math.sqrt(1.0 / fan_in)
    return math.sqrt(2.0 / (fan_in + fan_out))


def scheme_for(family: str | None) -> str:
    if family in RELU_LIKE:  # He init
        return "he"
    if family in LECUN_FAMILIES:
        return "lecun"
    return "glorot"
