"""||dW|| / ||W|| per layer across optimizer steps taken while attached.

Global optimizer step hooks see every optimizer; each one only measures the parameters of the
probed model. The pre-step snapshot is a transient copy of those parameters, freed as soon as
the step is measured (it cannot be avoided: the update is only known once the step is done).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from probes.stats import FOLD_EVERY


@dataclass(slots=True)
class _Plan:
    params: list[torch.Tensor]
    index: torch.Tensor
    present: torch.Tensor


@dataclass(slots=True)
class UpdateTracker:
    layer_names: list[str]
    param_layer: dict[int, int]  # id(parameter) -> position in layer_names
    ratios: list[torch.Tensor] = field(default_factory=list)  # each [steps, layers]
    steps: int = 0
    active: bool = True
    _plans: dict[int, _Plan] = field(default_factory=dict)
    _snapshot: list[torch.Tensor] | None = None
    _plan: _Plan | None = None

    def register(self, stack) -> None:
        stack.enter_context(register_optimizer_step_pre_hook(self._before_step))
        stack.enter_context(register_optimizer_step_post_hook(self._after_step))

    def _plan_for(self, optimizer) -> _Plan | None:
        key = id(optimizer)
        plan = self._plans.get(key)
        params = [
            p for group in optimizer.param_groups for p in group["params"] if id(p) in self.param_layer
        ]
        if plan is not None and len(plan.params) == len(params) and all(
            a is b for a, b in zip(plan.params, params)
        ):
            return plan
        if not params:
            return None
        device = params[0].device
        index = torch.tensor([self.param_layer[id(p)] for p in params], device=device)
        present = torch.zeros(len(self.layer_names), dtype=torch.bool, device=device)
        present[index] = True
        plan = _Plan(params=params, index=index, present=present)
        self._plans[key] = plan
        return plan

    def _before_step(self, optimizer, args, kwargs) -> None:
        if not self.active:
            return
        self._plan = self._plan_for(optimizer)
        if self._plan is None:
            return
        with torch.no_grad():
            self._snapshot = [p.detach().clone() for p in self._plan.params]

    def _after_step(self, optimizer, args, kwargs) -> None:
        plan, snapshot = self._plan, self._snapshot
        self._plan = self._snapshot = None
        if not self.active or plan is None or snapshot is None:
            return
        with torch.no_grad():
            current = [p.detach() for p in plan.params]
            deltas = torch._foreach_sub(current, snapshot)
            delta_norms = torch.stack(torch._foreach_norm(deltas)).double()
            weight_norms = torch.stack(torch._foreach_norm(snapshot)).double()
            del deltas, snapshot
            layers = len(self.layer_names)
            delta_sq = torch.zeros(layers, dtype=torch.float64, device=plan.index.device)
            weight_sq = torch.zeros_like(delta_sq)
            delta_sq.index_add_(0, plan.index, delta_norms * delta_norms)
            weight_sq.index_add_(0, plan.index, weight_norms * weight_norms)
            ratio = delta_sq.sqrt() / weight_sq.sqrt().clamp_min(1e-30)
            ratio = torch.where(plan.present, ratio, torch.full_like(ratio, float("nan")))
        self.ratios.append(ratio.unsqueeze(0))
        self.steps += 1
        if len(self.ratios) >= FOLD_EVERY:
            self.ratios = [torch.cat(self.ratios)]

    def history(self, device) -> torch.Tensor:
        """[steps, layers] ratios (NaN where a layer's parameters were not in that optimizer)."""
        if not self.ratios:
            return torch.zeros((0, len(self.layer_names)), dtype=torch.float64, device=device)
        return torch.cat([r.to(device) for r in self.ratios])
