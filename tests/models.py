"""A zoo of tiny models, healthy and broken, that every test suite can import.

Each `Case` builds a fresh model and its inputs on call (seeded inside the call; importing this
module builds nothing). `HEALTHY` must pass every check without a warning or error; each case of
`SICK` lists the check ids it must trigger. Widths and batches are tiny so the suite stays fast on
two slow cores; depths are the real ones, since depth is what the checks judge.
"""

from __future__ import annotations

import importlib.util

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

BATCH = 32  # enough samples that a healthy ReLU unit is never zero for all of them by chance


@dataclass(frozen=True)
class Case:
    """A model builder plus the inputs to probe it with."""

    name: str
    build: Callable[[], nn.Module]
    make_inputs: Callable[[], object]
    expected: tuple[str, ...] = ()  # check ids that must fire (empty for healthy cases)
    real_inputs: bool = False  # pass the inputs as the user's own data, not as synthetic ones
    options: dict = field(default_factory=dict)  # extra options for diagnose.check


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _normal_inputs(*shape: int) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return torch.randn(*shape, generator=generator)

    return make


def _token_inputs(vocab: int, *shape: int) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return torch.randint(0, vocab, shape, generator=generator)

    return make


def dense_stack(
    widths: list[int],
    activation: Callable[[], nn.Module],
    init: Callable[[nn.Linear], None] | None = None,
    norm: Callable[[int], nn.Module] | None = None,
) -> nn.Sequential:
    """Linear layers of `widths` with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(fan_in, fan_out)
        if init is not None:
            init(linear)
        layers.append(linear)
        if i < len(widths) - 2:
            if norm is not None:
                layers.append(norm(fan_out))
            layers.append(activation())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- healthy


class BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class TinyResNet(nn.Module):
    def __init__(self, channels: int = 8, blocks: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.blocks = nn.Sequential(*[BasicBlock(channels) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


def resnet_cnn() -> nn.Module:
    _seeded()
    return TinyResNet()


class EncoderClassifier(nn.Module):
    def __init__(self, activation: str, vocab: int = 50, d_model: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=2, dim_feedforward=32, dropout=0.0, activation=activation, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def transformer_encoder_relu() -> nn.Module:
    _seeded()
    return EncoderClassifier("relu")


def transformer_encoder_gelu() -> nn.Module:
    _seeded()
    return EncoderClassifier("gelu")


class GPTBlock(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.fc_out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    """A GPT-style decoder with the GPT-2 recipe: pre-LN, N(0, 0.02) init, a final LayerNorm."""

    def __init__(self, vocab: int = 64, length: int = 16, d_model: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(length, d_model)
        self.blocks = nn.ModuleList([GPTBlock(d_model, heads=2) for _ in range(blocks)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tokens(tokens) + self.positions(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def gpt_block() -> nn.Module:
    _seeded()
    return TinyGPT()


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 50, width: int = 16, hidden: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(self.embed(tokens))
        return self.head(output[:, -1])


def lstm_classifier() -> nn.Module:
    _seeded()
    return LSTMClassifier()


def lecun_normal(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, 0.0, 1.0 / math.sqrt(linear.in_features))
    nn.init.zeros_(linear.bias)


def glorot_normal(linear: nn.Linear) -> None:
    nn.init.xavier_normal_(linear.weight)
    nn.init.zeros_(linear.bias)


def he_normal(linear: nn.Linear) -> None:
    nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
    nn.init.zeros_(linear.bias)


def standard_uniform(linear: nn.Linear) -> None:
    """Glorot & Bengio's "standard" heuristic: U[-1/sqrt(n), 1/sqrt(n)]."""
    bound = 1.0 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.weight, -bound, bound)
    nn.init.zeros_(linear.bias)


def selu_lecun() -> nn.Module:
    _seeded()
    return dense_stack([32] + [64] * 6 + [10], nn.SELU, init=lecun_normal)


def tanh_glorot() -> nn.Module:
    _seeded()
    return dense_stack([32] + [64] * 5 + [10], nn.Tanh, init=glorot_normal)


def relu_mlp_default() -> nn.Module:
    _seeded()
    return dense_stack([64, 128, 128, 10], nn.ReLU)


def relu_mlp_two_layers() -> nn.Module:
    _seeded()
    return dense_stack([64, 128, 10], nn.ReLU)


def hf_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    _seeded()
    config = GPT2Config(
        vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    model.config.use_cache = False
    return model


# ---------------------------------------------------------------- sick


def deep_sigmoid_standard() -> nn.Module:
    """Glorot & Bengio's setting: 5+ sigmoid hidden layers with the standard uniform init."""
    _seeded()
    return dense_stack([32] + [64] * 6 + [10], nn.Sigmoid, init=standard_uniform)


def relu30_xavier() -> nn.Module:
    """He et al.'s 30-layer ReLU net with Xavier init: signal variance halves at every layer."""
    _seeded()
    return dense_stack([32] * 31 + [10], nn.ReLU, init=glorot_normal)


def relu_negative_bias() -> nn.Module:
    _seeded()

    def init(linear: nn.Linear) -> None:
        he_normal(linear)
        nn.init.constant_(linear.bias, -10.0)

    return dense_stack([32, 64, 64, 64, 10], nn.ReLU, init=init)


def tanh_normal_init() -> nn.Module:
    _seeded()

    def init(linear: nn.Linear) -> None:
        nn.init.normal_(linear.weight, 0.0, 1.0)
        nn.init.zeros_(linear.bias)

    return dense_stack([32] + [64] * 6 + [10], nn.Tanh, init=init)


def relu_exploding() -> nn.Module:
    """A deep ReLU stack at 3x the He std: activations and gradients grow ~3x per layer."""
    _seeded()

    def init(linear: nn.Linear) -> None:
        nn.init.normal_(linear.weight, 0.0, 3.0 * math.sqrt(2.0 / linear.in_features))
        nn.init.zeros_(linear.bias)

    return dense_stack([32] * 11 + [10], nn.ReLU, init=init)


def nan_weight() -> nn.Module:
    model = relu_mlp_default()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    return model


def nan_inputs() -> torch.Tensor:
    inputs = _normal_inputs(BATCH, 64)()
    inputs[3, 5] = float("nan")
    return inputs


class DetachedBranch(nn.Module):
    """The encoder's output is detached before the head, so the encoder never learns."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.unused_side = nn.Linear(16, 8)  # computed, then thrown away
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x).detach()
        self.unused_side(x)
        return self.head(features)


def detached_branch() -> nn.Module:
    _seeded()
    return DetachedBranch()


def overconfident_head() -> nn.Module:
    """A classifier whose last layer is 30x too large: the initial loss is far above ln C."""
    model = relu_mlp_default()
    with torch.no_grad():
        model[-1].weight.mul_(30.0)
    return model


def bottleneck_mlp() -> nn.Module:
    _seeded()
    return dense_stack([784, 512, 4, 512, 10], nn.ReLU, init=he_normal)


def selu_default_init() -> nn.Module:
    _seeded()
    return dense_stack([32] + [64] * 6 + [10], nn.SELU)


def selu_batchnorm() -> nn.Module:
    _seeded()
    return dense_stack([32] + [64] * 6 + [10], nn.SELU, init=lecun_normal, norm=nn.BatchNorm1d)


def unstandardized_inputs(shape: tuple[int, ...] = (BATCH, 32)) -> Callable[[], torch.Tensor]:
    """Raw-looking data: offset by 120 with a spread of 60 (like unscaled 0-255 pixels)."""

    def make() -> torch.Tensor:
        return 120.0 + 60.0 * _normal_inputs(*shape)()

    return make


HEALTHY: tuple[Case, ...] = (
    Case("resnet-cnn", resnet_cnn, _normal_inputs(16, 3, 8, 8)),
    Case("transformer-encoder-relu", transformer_encoder_relu, _token_inputs(50, 16, 6)),
    Case("transformer-encoder-gelu", transformer_encoder_gelu, _token_inputs(50, 16, 6)),
    Case("gpt-block", gpt_block, _token_inputs(64, 8, 16)),
    Case("lstm-classifier", lstm_classifier, _token_inputs(50, 16, 7)),
    Case("selu-lecun", selu_lecun, _normal_inputs(BATCH, 32)),
    Case("tanh-glorot", tanh_glorot, _normal_inputs(BATCH, 32)),
    Case("relu-mlp-default", relu_mlp_default, _normal_inputs(BATCH, 64)),
    Case("relu-mlp-two-layers", relu_mlp_two_layers, _normal_inputs(BATCH, 64)),
    # transformers is a dev extra; without it the GPT-2 case is left out rather than failing.
    *((Case("hf-gpt2", hf_gpt2, _token_inputs(100, 4, 16)),) if importlib.util.find_spec("transformers") else ()),
)

SICK: tuple[Case, ...] = (
    Case("deep-sigmoid-standard", deep_sigmoid_standard, _normal_inputs(BATCH, 32),
         expected=("vanishing-gradients", "poor-initialization")),
    Case("relu30-xavier", relu30_xavier, _normal_inputs(BATCH, 32),
         expected=("vanishing-gradients", "activation-variance-collapse", "poor-initialization")),
    Case("relu-negative-bias", relu_negative_bias, _normal_inputs(BATCH, 32), expected=("dead-relu",)),
    Case("tanh-normal-init", tanh_normal_init, _normal_inputs(BATCH, 32),
         expected=("saturated-activations",)),
    Case("relu-exploding", relu_exploding, _normal_inputs(BATCH, 32),
         expected=("exploding-gradients", "activation-variance-explosion", "poor-initialization")),
    Case("nan-weight", nan_weight, _normal_inputs(BATCH, 64), expected=("non-finite",)),
    Case("nan-inputs", relu_mlp_default, nan_inputs, expected=("non-finite",), real_inputs=True),
    Case("detached-branch", detached_branch, _normal_inputs(BATCH, 16), expected=("no-gradient",)),
    Case("overconfident-head", overconfident_head, _normal_inputs(BATCH, 64),
         expected=("bad-initial-loss",)),
    Case("bottleneck-mlp", bottleneck_mlp, _normal_inputs(16, 784), expected=("bottleneck-layer",)),
    Case("selu-default-init", selu_default_init, _normal_inputs(BATCH, 32),
         expected=("selu-misconfigured",)),
    Case("selu-batchnorm", selu_batchnorm, _normal_inputs(BATCH, 32), expected=("selu-misconfigured",)),
    Case("selu-unstandardized", selu_lecun, unstandardized_inputs(), expected=("selu-misconfigured",),
         real_inputs=True),
    Case("relu-unstandardized", relu_mlp_default, unstandardized_inputs((BATCH, 64)),
         expected=("unnormalized-inputs",), real_inputs=True),
)

CASES: dict[str, Case] = {case.name: case for case in HEALTHY + SICK}
