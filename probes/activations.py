"""The activation families: which module classes and functions are activations, and the families'
groups (ReLU-like, saturating, dying) that probes, checks and fixes share.

Names only, no torch: `diagnose list`, `explain` and the check modules read these without it.
"""

from __future__ import annotations

# Module class name -> activation family. Names, not classes, so that modules rebuilt by
# torch.export.unflatten (InterpreterModule, original type only in node metadata) classify alike.
ACTIVATION_MODULES: dict[str, str] = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "LeakyReLU": "leaky_relu",
    "PReLU": "prelu",
    "RReLU": "rrelu",
    "ELU": "elu",
    "SELU": "selu",
    "CELU": "celu",
    "GELU": "gelu",
    "SiLU": "silu",
    "Mish": "mish",
    "Softplus": "softplus",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Hardtanh": "hardtanh",
    "Hardsigmoid": "hardsigmoid",
    "Hardswish": "hardswish",
    "Softsign": "softsign",
    "LogSigmoid": "logsigmoid",
    # Hugging Face activation modules (transformers.activations). Without these, their forward
    # would be opened up and e.g. the tanh inside GPT-2's NewGELUActivation reported as a tanh.
    "GELUActivation": "gelu",
    "NewGELUActivation": "gelu",
    "FastGELUActivation": "gelu",
    "QuickGELUActivation": "gelu",
    "AccurateGELUActivation": "gelu",
    "ClippedGELUActivation": "gelu",
    "GELUTanh": "gelu",
    "PytorchGELUTanh": "gelu",
    "SiLUActivation": "silu",
    "MishActivation": "mish",
    "ReLUSquaredActivation": "relu",
}

# Function name (F.relu, torch.relu_, Tensor.sigmoid, aten.tanh.default, ...) -> family.
# In-place variants end in "_"; aten overloads are matched on their packet name.
ACTIVATION_FUNCTIONS: dict[str, str] = {
    "relu": "relu",
    "relu_": "relu",
    "relu6": "relu6",
    "leaky_relu": "leaky_relu",
    "leaky_relu_": "leaky_relu",
    "prelu": "prelu",
    "_prelu_kernel": "prelu",
    "rrelu": "rrelu",
    "rrelu_": "rrelu",
    "rrelu_with_noise": "rrelu",
    "elu": "elu",
    "elu_": "elu",
    "selu": "selu",
    "selu_": "selu",
    "celu": "celu",
    "celu_": "celu",
    "gelu": "gelu",
    "gelu_": "gelu",
    "silu": "silu",
    "silu_": "silu",
    "mish": "mish",
    "mish_": "mish",
    "softplus": "softplus",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "tanh": "tanh",
    "tanh_": "tanh",
    "hardtanh": "hardtanh",
    "hardtanh_": "hardtanh",
    "hardsigmoid": "hardsigmoid",
    "hardsigmoid_": "hardsigmoid",
    "hardswish": "hardswish",
    "hardswish_": "hardswish",
    "softsign": "softsign",
    "logsigmoid": "logsigmoid",
    "log_sigmoid": "logsigmoid",
}

# ReLU and its smooth or leaky cousins: slope 1 (or close) above zero, so the signal keeps its scale
# with He init (variance 2/fan_in).
RELU_LIKE = frozenset(
    {"relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "celu", "gelu", "silu", "mish",
     "softplus", "hardswish"}
)
# Bounded on both sides: the derivative vanishes at both ends (sigmoid's is at most 0.25 anywhere).
SATURATING = frozenset({"sigmoid", "tanh", "hardtanh", "hardsigmoid", "softsign", "logsigmoid"})
# ReLU and ReLU6 pass exactly zero gradient below zero: a unit that never fires is dead. Leaky
# variants, ELU, GELU, SiLU always pass some gradient, so they cannot die this way.
DYING_FAMILIES = frozenset({"relu", "relu6"})
# Every family a module can be (what a swap to SELU replaces: it wants every hidden activation).
ALL_FAMILIES = frozenset(ACTIVATION_MODULES.values())
