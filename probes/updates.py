"""||dW|| / ||W|| per layer across optimizer steps taken while attached.

Global optimizer step hooks see every optimizer; each one only measures the parameters of the
probed model. The pre-step snapshot is a copy of those parameters (it cannot be avoided: the update is only
known once the step is done). It is kept in one buffer per optimizer for the whole session and
refilled in place, so memory is one extra copy of the trained parameters while attached: a fresh
copy per step cost ~10x the optimizer step itself on CPU (page faults of a new 10 MB buffer
every step, measured on W1 of benchmarks/overhead.py). Per step this is four fused `_foreach`
ops; the per-layer ratios are formed on the host at collect time from the per-parameter norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook


@dataclass(slots=True)
class _Plan:
    params: list[torch.Tensor]
    layers: tuple[int, ...]  # layer position of each parameter
    snapshot: list[torch.Tensor] | None = None  # reused every step
    weight_norms: tuple[torch.Tensor, ...] = ()


@dataclass(slots=True)
class UpdateTracker:
    layer_names: list[str]
    param_layer: dict[int, int]  # id(parameter) -> position in layer_names
    steps: list[tuple[tuple[int, ...], torch.Tensor]] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)  # per layer, one per step
    active: bool = True
    _plans: dict[int, _Plan] = field(default_factory=dict)
    _plan: _Plan | None = None

    def __post_init__(self) -> None:
        self.ratios = {name: [] for name in self.layer_names}

    def register(self, stack) -> None:
        stack.enter_context(register_optimizer_step_pre_hook(self._before_step))
        stack.enter_context(register_optimizer_step_post_hook(self._after_step))

    def _plan_for(self, optimizer) -> _Plan | None:
        params = [
            p for group in optimizer.param_groups for p in group["params"] if id(p) in self.param_layer
        ]
        plan = self._plans.get(id(optimizer))
        if plan is not None and len(plan.params) == len(params) and all(
            a is b for a, b in zip(plan.params, params)
        ):
            return plan
        if not params:
            return None
        plan = _Plan(params=params, layers=tuple(self.param_layer[id(p)] for p in params))
        self._plans[id(optimizer)] = plan
        return plan

    def _before_step(self, optimizer, args, kwargs) -> None:
        if not self.active:
            return
        self._plan = self._plan_for(optimizer)
        if self._plan is None:
            return
        plan = self._plan
        with torch.no_grad():
            current = [p.detach() for p in plan.params]
            if plan.snapshot is None or any(
                s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
                for s, p in zip(plan.snapshot, current)
            ):
                plan.snapshot = [torch.empty_like(p) for p in current]
            torch._foreach_copy_(plan.snapshot, current)
            plan.weight_norms = torch._foreach_norm(current)

    def _after_step(self, optimizer, args, kwargs) -> None:
        plan = self._plan
        self._plan = None
        if not self.active or plan is None or plan.snapshot is None:
            return
        with torch.no_grad():
            torch._foreach_sub_(plan.snapshot, [p.detach() for p in plan.params])  # -(update)
            norms = torch.stack(torch._foreach_norm(plan.snapshot) + tuple(plan.weight_norms))
        self.steps.append((plan.layers, norms.double()))

    def release(self) -> None:
        """Drop the snapshot buffers (on exit)."""
        self.active = False
        self._plans.clear()
        self._plan = None

    def parts(self) -> list[torch.Tensor]:
        """Device norms of the steps taken since the last collect (absorbed by `absorb`)."""
        return [norms for _, norms in self.steps]

    def absorb(self, host_norms: list[list[float]]) -> None:
        """Turn the host copies of `parts()` into per-layer ratios (NaN: layer not in that step)."""
        for (layers, _), norms in zip(self.steps, host_norms):
            half = len(layers)
            delta_sq = [0.0] * len(self.layer_names)
            weight_sq = [0.0] * len(self.layer_names)
            present = [False] * len(self.layer_names)
            for i, layer in enumerate(layers):
                delta_sq[layer] += norms[i] ** 2
                weight_sq[layer] += norms[half + i] ** 2
                present[layer] = True
            for layer, name in enumerate(self.layer_names):
                ratio = math.sqrt(delta_sq[layer]) / max(math.sqrt(weight_sq[layer]), 1e-30)
                self.ratios[name].append(ratio if present[layer] else float("nan"))
        self.steps = []
