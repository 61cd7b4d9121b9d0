"""||dW|| / ||W|| per layer across optimizer steps taken while attached.

Global optimizer step hooks see every optimizer; each one only measures the parameters of the
probed model. The pre-step snapshot is a copy of those parameters (it cannot be avoided: the update is only
known once the step is done). It is kept in one buffer per optimizer for the whole session and
refilled in place, so memory is one extra copy of the trained parameters while attached: a fresh
copy per step cost ~10x the optimizer step itself on CPU (page faults of a new 10 MB buffer
every step, measured on W1 of benchmarks/overhead.py). Per step this is four fused `_foreach`
ops; the per-layer ratios are formed on the host at collect time from the per-parameter norms.

Subsampling: a parameter with more than SUBSAMPLE_ABOVE elements is measured on a fixed sample of
SAMPLE_BLOCKS contiguous blocks of SAMPLE_BLOCK elements spread evenly through its storage (one
`as_strided` view, so the snapshot is still one `_foreach_copy_`). ||dW||^2 and ||W||^2 are both
estimated from the same k = SAMPLE_BLOCKS * SAMPLE_BLOCK elements, scaled by numel / k so that
they add up with a layer's fully measured (small) parameters such as its bias. Error bound: for
roughly exchangeable entries the relative standard error of a squared norm estimated from k
elements is about sqrt(Var(x^2)) / (E[x^2] sqrt(k)), i.e. sqrt(2/k) for Gaussian-like entries;
for k = 8192 that is ~1.6 % on each squared norm, ~0.8 % on each norm and at most ~1.6 % on
their ratio (tests/probes/test_update_sampling.py checks 4 standard errors). Entries that are
not exchangeable (a few rows updated far more than the rest) can be missed by the sample; the
snapshot of W1 (benchmarks/overhead.py: 2.2 M parameters) shrinks ~30x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook


# Parameters larger than this are measured on a sample (see the module docstring); 16384 keeps
# every bias and small layer exact.
SUBSAMPLE_ABOVE = 16384
SAMPLE_BLOCKS = 16  # contiguous blocks: a handful of cache-friendly copies per parameter
SAMPLE_BLOCK = 512  # k = 16 * 512 = 8192 elements: relative standard error ~sqrt(2/k) = 1.6 %


def measured_view(param: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the elements whose change is measured, numel / their count): the whole tensor or a sample."""
    tensor = param.detach()
    numel = tensor.numel()
    if numel <= SUBSAMPLE_ABOVE or not tensor.is_contiguous():
        return tensor, 1.0
    step = (numel - SAMPLE_BLOCK) // (SAMPLE_BLOCKS - 1)  # first block at 0, last ends < SAMPLE_BLOCKS from the end
    view = tensor.as_strided((SAMPLE_BLOCKS, SAMPLE_BLOCK), (step, 1), tensor.storage_offset())
    return view, numel / (SAMPLE_BLOCKS * SAMPLE_BLOCK)


@dataclass(slots=True)
class _Plan:
    params: list[torch.Tensor]
    layers: tuple[int, ...]  # layer position of each parameter
    scales: tuple[float, ...] = ()  # numel / measured elements of each parameter (1.0: all)
    snapshot: list[torch.Tensor] | None = None  # reused every step
    weight_norms: tuple[torch.Tensor, ...] = ()


@dataclass(slots=True)
class UpdateTracker:
    layer_names: list[str]
    param_layer: dict[int, int]  # id(parameter) -> position in layer_names
    steps: list[tuple[tuple[int, ...], tuple[float, ...], torch.Tensor]] = field(default_factory=list)
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
            measured = [measured_view(p) for p in plan.params]
            current = [view for view, _ in measured]
            plan.scales = tuple(scale for _, scale in measured)
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
            current = [measured_view(p)[0] for p in plan.params]
            torch._foreach_sub_(plan.snapshot, current)  # -(update)
            norms = torch.stack(torch._foreach_norm(plan.snapshot) + tuple(plan.weight_norms))
        self.steps.append((plan.layers, plan.scales, norms.double()))

    def release(self) -> None:
        """Drop the snapshot buffers (on exit)."""
        self.active = False
        self._plans.clear()
        self._plan = None

    def parts(self) -> list[torch.Tensor]:
        """Device norms of the steps taken since the last collect (absorbed by `absorb`)."""
        return [norms for _, _, norms in self.steps]

    def absorb(self, host_norms: list[list[float]]) -> None:
        """Turn the host copies of `parts()` into per-layer ratios (NaN: layer not in that step)."""
        for (layers, scales, _), norms in zip(self.steps, host_norms):
            half = len(layers)
            delta_sq = [0.0] * len(self.layer_names)
            weight_sq = [0.0] * len(self.layer_names)
            present = [False] * len(self.layer_names)
            for i, layer in enumerate(layers):
                delta_sq[layer] += norms[i] ** 2 * scales[i]
                weight_sq[layer] += norms[half + i] ** 2 * scales[i]
                present[layer] = True
            for layer, name in enumerate(self.layer_names):
                ratio = math.sqrt(delta_sq[layer]) / max(math.sqrt(weight_sq[layer]), 1e-30)
                self.ratios[name].append(ratio if present[layer] else float("nan"))
        self.steps = []
