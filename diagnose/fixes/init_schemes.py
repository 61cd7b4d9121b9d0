"""Init-scale fixes: He, Glorot and LeCun initialisation, and resetting harmful biases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from diagnose.fixes._model import Fix, FixTarget, layer_loop, name_list
from diagnose.fixes.trial import FixNotApplicable, on_a_copy

if TYPE_CHECKING:
    from torch import nn

    from probes.records import LayerRecord

_RELU_NONLINEARITY = {"leaky_relu": "leaky_relu", "prelu": "leaky_relu", "rrelu": "leaky_relu"}


def _he_snippet(target: FixTarget) -> str:
    nonlinearity = _RELU_NONLINEARITY.get(target.activation or "", "relu")
    body = (
        f"nn.init.kaiming_normal_(layer.weight, nonlinearity={nonlinearity!r})\n"
        "if layer.bias is not None:\n"
        "    nn.init.zeros_(layer.bias)"
    )
    fallback = (
        "for layer in model.modules():\n"
        "    if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):\n"
        f"        nn.init.kaiming_normal_(layer.weight, nonlinearity={nonlinearity!r})\n"
        "        if layer.bias is not None:\n"
        "            nn.init.zeros_(layer.bias)"
    )
    return "import torch.nn as nn\n\n# layers that feed a ReLU-like activation\n" + layer_loop(target.layers, body, fallback)


def _recurrent_glorot_snippet(target: FixTarget) -> str:
    return (
        "import torch.nn as nn\n\n"
        "# Keras' recipe for recurrent layers: Glorot input weights and orthogonal recurrent\n"
        "# weights (gate by gate), which keep the gradient's size through time\n"
        "modules = dict(model.named_modules())\n"
        f"for name in {name_list(target.layers)}:\n"
        "    rnn = modules[name]\n"
        "    for pname, p in rnn.named_parameters():\n"
        "        for gate in p.data.split(rnn.hidden_size):\n"
        "            if pname.startswith('weight_ih'):\n"
        "                nn.init.xavier_uniform_(gate)\n"
        "            elif pname.startswith('weight_hh'):\n"
        "                nn.init.orthogonal_(gate)\n"
        "            else:\n"
        "                nn.init.zeros_(gate)  # an LSTM then wants its forget-gate bias at +1"
    )


def _glorot_snippet(target: FixTarget) -> str:
    if target.recurrent_weights and target.layers:
        return _recurrent_glorot_snippet(target)
    gain = {"tanh": "nn.init.calculate_gain('tanh')", "sigmoid": "1.0"}.get(target.activation or "", "1.0")
    body = (
        f"nn.init.xavier_uniform_(layer.weight, gain={gain})\n"
        "if layer.bias is not None:\n"
        "    nn.init.zeros_(layer.bias)"
    )
    fallback = (
        "for layer in model.modules():\n"
        "    if isinstance(layer, nn.Linear):\n"
        f"        nn.init.xavier_uniform_(layer.weight, gain={gain})\n"
        "        nn.init.zeros_(layer.bias)"
    )
    return "import torch.nn as nn\n\n" + layer_loop(target.layers, body, fallback)


def _lecun_snippet(target: FixTarget) -> str:
    body = (
        "# LeCun normal: std = sqrt(1 / fan_in), what SELU's self-normalisation assumes\n"
        "nn.init.kaiming_normal_(layer.weight, nonlinearity='linear')\n"
        "if layer.bias is not None:\n"
        "    nn.init.zeros_(layer.bias)"
    )
    fallback = (
        "for layer in model.modules():\n"
        "    if isinstance(layer, nn.Linear):\n"
        "        nn.init.kaiming_normal_(layer.weight, nonlinearity='linear')  # LeCun normal\n"
        "        nn.init.zeros_(layer.bias)"
    )
    return "import torch.nn as nn\n\n" + layer_loop(target.layers, body, fallback)


def _bias_snippet(target: FixTarget) -> str:
    body = (
        "nn.init.zeros_(layer.bias)  # or a small positive value (0.01) in front of a ReLU"
    )
    fallback = (
        "for layer in model.modules():\n"
        "    if isinstance(layer, (nn.Linear, nn.Conv2d)) and layer.bias is not None:\n"
        "        nn.init.zeros_(layer.bias)"
    )
    text = "import torch.nn as nn\n\n" + layer_loop(target.layers, body, fallback)
    if target.forget_gate:
        names = target.layers or ("<your LSTM>",)
        text = (
            "import torch\nimport torch.nn as nn\n\n"
            "# forget-gate bias +1 (gate order: input, forget, cell, output)\n"
            f"for name in {list(names)!r}:\n"
            "    lstm = dict(model.named_modules())[name]\n"
            "    h = lstm.hidden_size\n"
            "    with torch.no_grad():\n"
            "        for pname, p in lstm.named_parameters():\n"
            "            if pname.startswith('bias_'):\n"
            "                p.zero_()\n"
            "                if pname.startswith('bias_ih'):\n"
            "                    p[h:2 * h].fill_(1.0)"
        )
    if target.head:
        head = target.layers[-1] if target.layers else "<last layer>"
        text = (
            "import torch\nimport torch.nn as nn\n\n"
            "# start the classifier at chance level: small logits, bias at the class prior (0 if balanced)\n"
            f"head = dict(model.named_modules())[{head!r}]\n"
            "with torch.no_grad():\n"
            "    head.weight.mul_(0.01)\n"
            "    if head.bias is not None:\n"
            "        nn.init.zeros_(head.bias)  # or log(class frequencies) for imbalanced data"
        )
    return text


# The scheme each init fix draws from (probes.targets' names), and how its change names it.
_SCHEMES = {"he-init": ("he", "He"), "glorot-init": ("glorot", "Glorot"), "lecun-init": ("lecun", "LeCun")}


def _reinitialize(fix_id: str, model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """Re-draw the layers whose activation wants this fix's scheme, biases zeroed."""
    from diagnose.fixes._reinit import reinitialize, reinitialize_recurrent
    from probes.targets import scheme_for

    scheme, label = _SCHEMES[fix_id]
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


def _reset_biases(fix_id: str, model: nn.Module, layers: Sequence[LayerRecord]) -> str:
    """Every linear/conv bias to zero, the neutral start that puts no unit in a dead or flat zone;
    an LSTM's forget gate to +1."""
    from diagnose.fixes._reinit import reset_forget_gates, zero_biases

    count = zero_biases(model)
    lstms = reset_forget_gates(model)
    if count == 0 and lstms == 0:
        raise FixNotApplicable("the model's linear, convolution and LSTM layers have no biases to reset")
    done = [f"biases of {count} layer{'s' if count != 1 else ''} reset to zero"] if count else []
    if lstms:
        done.append(f"forget-gate bias of {lstms} LSTM{'s' if lstms != 1 else ''} set to +1")
    return "; ".join(done)


HE_INIT = Fix(
    id="he-init",
    title="Use He (Kaiming) initialization",
    summary="He (Kaiming) initialization for layers that feed ReLU-like activations",
    rationale=(
        "A ReLU zeroes about half of its inputs, so it passes on about half the variance it gets. He "
        "init draws weights with variance 2/fan_in to make up for exactly that, which keeps the "
        "signal and the gradient at the same scale however deep the stack is."
    ),
    doc="""## What it does
Re-draws the weights of the layers that feed ReLU-like activations (ReLU, leaky ReLU, ELU, GELU,
SiLU) from N(0, 2/fan_in) (`nn.init.kaiming_normal_`) and zeroes their biases.

## Why it works
The variance of a layer's output is fan_in x Var(w) x E[x^2] of its input. A ReLU keeps only the
positive half of its input, so E[x^2] is half the variance before it. Choosing Var(w) = 2/fan_in
cancels that halving: every layer hands on the variance it received, forward for the signal and
backward for the gradient. Xavier's 1/fan_in loses half per layer, which is invisible in three
layers and fatal in thirty. PyTorch's default for `nn.Linear` (a uniform with variance
1/(3 fan_in)) is smaller still.

## When not to use
Layers that feed tanh or sigmoid (use `glorot-init`) or SELU (use `lecun-init`); layers followed
by a normalisation layer, whose output scale is reset anyway; pretrained weights you want to keep.

## Example
```python
for layer in model.modules():
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
```
""",
    snippet=_he_snippet,
    apply=on_a_copy(_reinitialize),
)

GLOROT_INIT = Fix(
    id="glorot-init",
    title="Use Glorot (Xavier) initialization",
    summary="Glorot (Xavier) initialization for tanh/sigmoid/linear layers",
    rationale=(
        "Glorot init picks the weight variance 2/(fan_in + fan_out), a compromise that keeps the "
        "variance of the signal going forward and of the gradient going back roughly level for "
        "activations that are close to linear around zero, such as tanh."
    ),
    doc="""## What it does
Re-draws the weights of the chosen layers from Glorot's uniform or normal distribution
(`nn.init.xavier_uniform_`), with the gain of their activation, and zeroes their biases.

## Why it works
To keep both the forward signal and the backward gradient at a constant scale, a layer would need
Var(w) = 1/fan_in and 1/fan_out at once; Glorot takes the average of the two fans. For tanh, which
is nearly the identity around zero, that keeps units out of the flat tails where the gradient
dies. A std that is much larger (e.g. N(0, 1)) pushes tanh/sigmoid units into saturation from the
first step; the old U[-1/sqrt(n), 1/sqrt(n)] heuristic is too small and lets gradients shrink
layer by layer.

## When not to use
ReLU-like activations (use `he-init`: Glorot loses half the variance per ReLU layer); SELU (use
`lecun-init`).

## Example
```python
for layer in model.modules():
    if isinstance(layer, nn.Linear):
        nn.init.xavier_uniform_(layer.weight, gain=nn.init.calculate_gain("tanh"))
        nn.init.zeros_(layer.bias)
```
""",
    snippet=_glorot_snippet,
    apply=on_a_copy(_reinitialize),
)

LECUN_INIT = Fix(
    id="lecun-init",
    title="Use LeCun normal initialization",
    summary="LeCun normal initialization (std sqrt(1/fan_in)) for SELU networks",
    rationale=(
        "SELU keeps activations at zero mean and unit variance on its own only when each layer's "
        "weights have variance 1/fan_in (LeCun normal); with any other scale the self-normalising "
        "fixed point does not hold."
    ),
    doc="""## What it does
Re-draws the weights of the layers feeding SELU from N(0, 1/fan_in)
(`nn.init.kaiming_normal_(w, nonlinearity="linear")` gives exactly that) and zeroes their biases.

## Why it works
SELU's constants were derived so that a dense layer with N(0, 1/fan_in) weights, fed by inputs
with mean 0 and variance 1, outputs mean 0 and variance 1 again, and so that nearby values are
pulled back toward that point. The derivation assumes that weight scale; PyTorch's default init is
0.58x of it, and the stack then drifts instead of normalising itself.

## When not to use
Networks that do not use SELU.

## Example
```python
for layer in model.modules():
    if isinstance(layer, nn.Linear):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")  # = LeCun normal
        nn.init.zeros_(layer.bias)
```
""",
    snippet=_lecun_snippet,
    apply=on_a_copy(_reinitialize),
)

FIX_BIAS_INIT = Fix(
    id="fix-bias-init",
    title="Reset harmful biases",
    summary="reset biases that push units into the dead or saturated zone (or an overconfident head)",
    rationale=(
        "A bias that is large compared with the spread of a unit's weighted input decides the "
        "unit's output on its own: very negative in front of a ReLU it is dead for every sample, "
        "large in front of a sigmoid it is stuck at a bound, and a large last layer makes the "
        "initial loss far worse than chance. Zero (or a small positive) biases avoid all three."
    ),
    doc="""## What it does
Sets the biases of the named layers back to zero (or to a small positive value in front of a
ReLU). For an LSTM, sets the forget-gate bias to +1 and the other gate biases to zero, so the
cell remembers by default. For an overconfident classifier head, scales the last layer's weights down and sets its bias
to zero, or to the log of the class frequencies when the classes are imbalanced.

## Why it works
A unit's pre-activation is w.x + b. When |b| dwarfs the spread of w.x, the sign and size of the
pre-activation no longer depend on the input: a ReLU with b = -10 outputs zero for everything and
passes back no gradient, a sigmoid with a big bias sits at 0 or 1. An LSTM's cell state is
multiplied by its forget gate at every step: a negative forget bias wipes it at every step, +1
keeps most of it (Gers et al. 2000; Jozefowicz et al. 2015). Starting the last layer near
zero makes the first predictions close to uniform, so the initial loss is ln C and the first steps
learn features instead of undoing the initial overconfidence.

## When not to use
Biases that were learned (pretrained weights), or that deliberately encode a prior, such as an
LSTM forget-gate bias of 1.

## Example
```python
for layer in model.modules():
    if isinstance(layer, nn.Linear):
        nn.init.zeros_(layer.bias)
```
""",
    snippet=_bias_snippet,
    apply=on_a_copy(_reset_biases),
)

FIXES = (HE_INIT, GLOROT_INIT, LECUN_INIT, FIX_BIAS_INIT)
