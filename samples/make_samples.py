"""Regenerate the bundled sample archives: `python samples/make_samples.py [NAME...] [--out DIR]`.

Each sample is a torch.export archive with a dynamic batch dimension and its own example
inputs, so `diagnose check samples/NAME.pt2` needs no other option. Healthy samples must come
out clean; each sick one shows one classic pathology from the literature.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
# 64 samples: enough for a dead-unit or saturation share to mean something; the batch dim stays dynamic.
EXAMPLE_BATCH = 64


class MLP(nn.Module):
    """A plain dense stack whose activation is called as a function in forward (as most code does)."""

    def __init__(self, widths: list[int], activation) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


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


class SmallResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(BasicBlock(16), BasicBlock(16))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _init_(model: nn.Module, weight_init, bias: float = 0.0) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            weight_init(module.weight)
            nn.init.constant_(module.bias, bias)
    return model


def healthy_mlp() -> tuple[nn.Module, torch.Tensor]:
    """784-256-256-10 ReLU MLP with He init: the baseline a check must leave alone."""
    model = _init_(MLP([784, 256, 256, 10], F.relu), lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))
    return model, torch.randn(EXAMPLE_BATCH, 784)


def healthy_resnet() -> tuple[nn.Module, torch.Tensor]:
    """A small ResNet with batch norm and default PyTorch init."""
    return SmallResNet(), torch.randn(EXAMPLE_BATCH, 3, 16, 16)


def deep_sigmoid() -> tuple[nn.Module, torch.Tensor]:
    """Glorot & Bengio (2010): a deep sigmoid net with the 'standard' U[-1/sqrt(n), 1/sqrt(n)] init."""
    def standard(w: torch.Tensor) -> None:
        bound = 1.0 / math.sqrt(w.shape[1])
        nn.init.uniform_(w, -bound, bound)

    model = _init_(MLP([64] + [64] * 8 + [10], torch.sigmoid), standard)
    return model, torch.randn(EXAMPLE_BATCH, 64)


def deep_relu_xavier() -> tuple[nn.Module, torch.Tensor]:
    """He et al. (2015): a 30-layer ReLU net with Xavier init: the signal halves its variance per layer."""
    model = _init_(MLP([64] * 31 + [10], F.relu), nn.init.xavier_normal_)
    return model, torch.randn(EXAMPLE_BATCH, 64)


def dead_relu() -> tuple[nn.Module, torch.Tensor]:
    """A ReLU net whose biases were initialised at -10: almost every unit never fires."""
    model = _init_(
        MLP([32, 128, 128, 128, 10], F.relu), lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), bias=-10.0
    )
    return model, torch.randn(EXAMPLE_BATCH, 32)


def saturated_tanh() -> tuple[nn.Module, torch.Tensor]:
    """A tanh net with N(0, 1) weights: pre-activations of size sqrt(fan_in) pin tanh at +-1."""
    model = _init_(MLP([128, 256, 256, 256, 10], torch.tanh), lambda w: nn.init.normal_(w, 0.0, 1.0))
    return model, torch.randn(EXAMPLE_BATCH, 128)


def bottleneck() -> tuple[nn.Module, torch.Tensor]:
    """784-512-4-512-10: a 4-unit layer squeezes the signal for good."""
    model = _init_(MLP([784, 512, 4, 512, 10], F.relu), lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))
    return model, torch.randn(EXAMPLE_BATCH, 784)


SAMPLES = {
    "healthy_mlp": healthy_mlp,
    "healthy_resnet": healthy_resnet,
    "deep_sigmoid": deep_sigmoid,
    "deep_relu_xavier": deep_relu_xavier,
    "dead_relu": dead_relu,
    "saturated_tanh": saturated_tanh,
    "bottleneck": bottleneck,
}


def export_sample(name: str, out_dir: Path = HERE) -> Path:
    torch.manual_seed(0)
    model, example = SAMPLES[name]()
    model.train()
    batch = torch.export.Dim("batch", min=2, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    for node in program.graph.nodes:
        # Stack traces hold this script's absolute path: drop them so the bytes do not depend
        # on where the repository is checked out.
        node.meta.pop("stack_trace", None)
    path = out_dir / f"{name}.pt2"
    torch.export.save(program, str(path))
    return path


def main(argv: list[str]) -> int:
    out_dir = HERE
    if "--out" in argv:
        at = argv.index("--out")
        out_dir = Path(argv[at + 1])
        argv = argv[:at] + argv[at + 2:]
    for name in argv or list(SAMPLES):
        print(export_sample(name, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
