"""Settings for one check: command-line flags merged over `[tool.diagnose]` in pyproject.toml."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam")
DEVICES = ("auto", "cpu", "cuda")
# SGD at 0.01 is the contract's default: the most common starting point, and plain SGD makes
# the update ratio a direct reading of the gradient scale.
DEFAULT_OPTIMIZER = "sgd"
DEFAULT_LR = 0.01
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    model: str = ""
    input_shapes: tuple[tuple[int, ...], ...] = ()
    inputs_path: str | None = None
    targets_path: str | None = None
    loss: str = "auto"
    steps: int = 0
    optimizer: str = DEFAULT_OPTIMIZER
    lr: float = DEFAULT_LR
    batch_size: int | None = None
    weights: str | None = None
    trust_pickle: bool = False
    device: str = "auto"
    seed: int = 0
    json_path: str | None = None
    markdown_path: str | None = None
    junit_path: str | None = None
    fail_on: str = "error"
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    try_fixes: bool = False
    debug: bool = False
    # {"dead-relu": {"dead_fraction": 0.6}}: overrides of the checks' named thresholds
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # {"net.0": ("dead-relu",)}: findings of these ids drop these layers
    per_layer_ignores: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
