"""Re-drawing a model's weights from an init scheme, and resetting its biases: what the init fixes
and the activation swaps do to a copy."""

from __future__ import annotations

import math

import torch
from torch import nn

from diagnose.fixes._surgery import weighted_nodes
from diagnose.fixes.trial import FixNotApplicable


def reinitialize(model: nn.Module, scheme: str, *, leaky_slope: float = 0.0, only: set[str] | None = None) -> int:
    """Re-draw linear/conv weights (all, or those named in `only`) from `scheme`, biases to zero."""
    count = 0
    for node in weighted_nodes(model):
        if only is not None and node.name not in only:
            continue
        with torch.no_grad():
            draw(node.module.weight, scheme, leaky_slope=leaky_slope)
            bias = getattr(node.module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()
        count += 1
    if count == 0:
        raise FixNotApplicable("the model has no linear or convolution layer to re-initialise")
    return count


def draw(weight: torch.Tensor, scheme: str, *, leaky_slope: float = 0.0) -> None:
    """Fill `weight` from the normal init `scheme` prescribes (he, glorot or lecun)."""
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


def zero_biases(model: nn.Module) -> int:
    """Reset every linear/conv bias to zero; the number of layers that had one."""
    count = 0
    for node in weighted_nodes(model):
        bias = getattr(node.module, "bias", None)
        if isinstance(bias, torch.Tensor):
            with torch.no_grad():
                bias.zero_()
            count += 1
    return count


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
