"""||dW|| / ||W|| per layer across optimizer steps taken while attached.

Global optimizer step hooks see every optimizer; each one only measures the parameters of the
probed model. The pre-step snapshot is a transient copy of those parameters, freed as soon as
the step is measured (it cannot be avoided: the update is only known once the step is done).
Per step this is a handful of fused `_foreach` ops; the per-layer ratios are formed on the host
at collect time from the per-parameter norms.
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


@dataclass(slots=True)
class UpdateTracker:
    layer_names: list[str]
    param_layer: dict[int, int]  # id(parameter) -> position in layer_names
    steps: list[tuple[tuple[int, ...], torch.Tensor]] = field(default_factory=list)
    ratios: dict[str, list[float]] = field(default_factory=dict)  # per layer, one per step
    active: bool = True
    _plans: dict[int, _Plan] = field(default_factory=dict)
    _snapshot: list[torch.Tensor] | None = None
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
        with torch.no_grad():
            self._snapshot = torch._foreach_mul([p.detach() for p in self._plan.params], 1.0)

    def _after_step(self, optimizer, args, kwargs) -> None:
        plan, snapshot = self._plan, self._snapshot
        self._plan = self._snapshot = None
        if not self.active or plan is None or snapshot is None:
            return
        with torch.no_grad():
            current = [p.detach() for p in plan.params]
            deltas = torch._foreach_sub(current, snapshot)
            norms = torch.stack(torch._foreach_norm(deltas) + torch._foreach_norm(snapshot))
        self.steps.append((plan.layers, norms.double()))

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
