"""Per-layer mutable state while attached, and the stack of modules whose forward is running."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from probes.stats import MomentAccumulator


@dataclass(slots=True)
class LayerState:
    """What a session accumulates for one probed layer (device tensors, Python counters)."""

    name: str
    type_name: str
    kind: str
    source: str  # "module" | "function"
    owner: str
    family: str | None
    bounds: tuple[float, float, bool] | None
    tracks_dead: bool
    index: int = -1  # execution order, set when the layer first produces an output
    calls: int = 0
    output_shape: tuple[int, ...] | None = None
    units: int | None = None
    activation: MomentAccumulator = field(default_factory=MomentAccumulator)
    output_gradient: MomentAccumulator = field(default_factory=MomentAccumulator)
    output_gradient_calls: int = 0
    alive: torch.Tensor | None = None  # bool per unit, OR over every call of the session
    alive_last: torch.Tensor | None = None  # bool per unit, OR over the latest forward of the model
    alive_last_forward: int = -1


@dataclass(slots=True)
class Frame:
    """A module whose forward is running, with per-call counters of the functions it called."""

    name: str
    is_activation: bool
    function_calls: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ModuleStack:
    frames: list[Frame] = field(default_factory=list)

    def push(self, frame: Frame) -> None:
        self.frames.append(frame)

    def pop(self, name: str) -> None:
        # Pop down to the matching frame: a forward that raised inside a child left its frame
        # behind only if that child's post-hook did not run; always_call=True makes that rare.
        while self.frames:
            frame = self.frames.pop()
            if frame.name == name:
                return

    @property
    def top(self) -> Frame | None:
        return self.frames[-1] if self.frames else None
