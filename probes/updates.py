"""||dW|| / ||W|| per layer across optimizer steps taken while attached.

Global optimizer step hooks see every optimizer; each one only measures the parameters of the
probed model. The pre-step snapshot is a copy of those parameters (it cannot be avoided: the update is only
known once the step is done). It is kept in one buffer per optimizer for the whole session and
refilled in place, so memory is one extra copy of the trained parameters while attached: a fresh
copy per step cost ~10x the optimizer step itself on CPU (page faults of a new 10 MB buffer
every step, measured on W1 of benchmarks/overhead.py). Small same-shape parameters (probes/
grouped.py) are snapshotted as the rows of one stacked buffer per shape, the rest with fused
`_foreach` copies: a handful of ops per step whatever the depth. The per-layer ratios are formed
on the host at collect time from the per-parameter norms.

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

import itertools
import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from probes import grouped
from probes.records import StepValues
from probes.sampling import sampled_view


# Pending steps (one small norm tensor each) turned into ratios on the host at once, on CPU;
# on an accelerator that would be a device sync, so they wait for collect().
ABSORB_EVERY = 64

# Parameters larger than this are measured on a sample (see the module docstring); 16384 keeps
# every bias and small layer exact.
SUBSAMPLE_ABOVE = 16384
SAMPLE_BLOCKS = 16  # contiguous blocks: a handful of cache-friendly copies per parameter
SAMPLE_BLOCK = 512  # k = 16 * 512 = 8192 elements: relative standard error ~sqrt(2/k) = 1.6 %


def measured_view(param: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the elements whose change is measured, numel / their count): the whole tensor or a sample."""
    return sampled_view(param.detach(), SUBSAMPLE_ABOVE, SAMPLE_BLOCKS, SAMPLE_BLOCK)


@dataclass(slots=True)
class _Plan:
    """One optimizer's tracked parameters, split as probes/grouped.py lays them out.

    Small same-shape parameters are snapshotted as the rows of one stacked buffer per shape (one
    copy each way instead of one per parameter); the rest as `measured_view`s, one buffer each.
    """

    groups: list[list[torch.Tensor]]  # same-shape small parameters, stacked together
    singles: list[torch.Tensor]
    layers: tuple[int, ...]  # layer position of each parameter: groups in order, then singles
    shared: tuple[tuple[int, int], ...]  # (entry in `layers`, another layer the parameter is in)
    scales: tuple[float, ...] = ()  # numel / measured elements of each parameter (1.0: all)
    group_snapshots: list[torch.Tensor] = field(default_factory=list)  # reused every step
    group_scratch: list[torch.Tensor] = field(default_factory=list)
    single_snapshots: list[torch.Tensor] | None = None
    weight_norms: list[torch.Tensor] = field(default_factory=list)


@dataclass(slots=True)
class RatioHistory:
    """One layer's update ratios, one per step it took part in, with running mean and maximum."""

    # only ever appended to; 8 bytes a value (a list of floats takes 32): a session attached for
    # 100k steps of a 120-layer model keeps 96 MB of ratios instead of 384 MB
    values: array = field(default_factory=lambda: array("d"))
    total: float = 0.0
    maximum: float = -math.inf

    def add(self, ratio: float) -> None:
        if math.isnan(ratio):
            return
        self.values.append(ratio)
        self.total += ratio
        self.maximum = max(self.maximum, ratio)

    def mean(self) -> float:
        return self.total / len(self.values)

    def snapshot(self) -> StepValues:
        """The values so far, without copying them (collect reads them at every call)."""
        return StepValues(self.values)


@dataclass(slots=True)
class UpdateTracker:
    on_error: Callable[[str, Exception], None]  # a failure of ours: reported, never raised at the user
    layer_names: list[str]
    param_layer: dict[int, int]  # id(parameter) -> position in layer_names
    # id(parameter) -> further layers that share it (tied weights: an embedding and an LM head)
    shared: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # per step: (layer of each measured parameter, its scale, (entry, further layer) pairs, norms)
    steps: list[tuple] = field(default_factory=list)
    ratios: dict[str, RatioHistory] = field(default_factory=dict)  # per layer
    active: bool = True
    # Steps are measured while armed. With every_step (attach's every=1) it stays armed; else the
    # session arms it at each measured forward and a measured step disarms it.
    every_step: bool = True
    armed: bool = True
    generation: int = 0  # measured steps so far
    _plans: dict[int, tuple[list[torch.Tensor], _Plan]] = field(default_factory=dict)
    _plan: _Plan | None = None

    def __post_init__(self) -> None:
        self.ratios = {name: RatioHistory() for name in self.layer_names}

    def register(self, stack) -> None:
        stack.enter_context(register_optimizer_step_pre_hook(self._guarded(self._before_step, "before")))
        stack.enter_context(register_optimizer_step_post_hook(self._guarded(self._after_step, "after")))

    def _guarded(self, hook, when: str):
        def guarded(optimizer, args, kwargs) -> None:
            if not self.active or not self.armed:
                return
            try:
                hook(optimizer, args, kwargs)
            except Exception as exc:
                self.active = False
                self._plan = None
                self.on_error(f"the update-ratio hook {when} an optimizer step", exc)

        return guarded

    def _plan_for(self, optimizer) -> _Plan | None:
        params = [
            p for group in optimizer.param_groups for p in group["params"] if id(p) in self.param_layer
        ]
        cached = self._plans.get(id(optimizer))
        if cached is not None and len(cached[0]) == len(params) and all(
            a is b for a, b in zip(cached[0], params)
        ):
            return cached[1]
        if not params:
            return None
        layout = grouped.plan(params)
        plan = _Plan(
            groups=[[params[i] for i in group] for group in layout.groups],
            singles=[params[i] for i in layout.singles],
            layers=tuple(self.param_layer[id(params[i])] for i in layout.order),
            shared=tuple(
                (entry, layer) for entry, i in enumerate(layout.order)
                for layer in self.shared.get(id(params[i]), ())
            ),
        )
        self._plans[id(optimizer)] = (params, plan)
        return plan

    def _before_step(self, optimizer, args, kwargs) -> None:  # runs only while active (_guarded)
        self._plan = self._plan_for(optimizer)
        if self._plan is None:
            return
        plan = self._plan
        with torch.no_grad():
            groups = plan.groups
            if len(plan.group_snapshots) != len(groups) or any(
                buffer.shape[1:] != group[0].shape or buffer.dtype != group[0].dtype
                or buffer.device != group[0].device
                for buffer, group in zip(plan.group_snapshots, groups)
            ):
                plan.group_snapshots = [_stack_buffer(group) for group in groups]
                plan.group_scratch = [_stack_buffer(group) for group in groups]
            norms = []
            for buffer, group in zip(plan.group_snapshots, groups):
                torch.stack(group, out=buffer)
                norms.append(grouped.row_norms(buffer))
            measured = [measured_view(p) for p in plan.singles]
            current = [view for view, _ in measured]
            grouped_count = len(plan.layers) - len(plan.singles)
            plan.scales = (1.0,) * grouped_count + tuple(scale for _, scale in measured)
            if current:
                if plan.single_snapshots is None or any(
                    s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
                    for s, p in zip(plan.single_snapshots, current)
                ):
                    plan.single_snapshots = [torch.empty_like(p) for p in current]
                torch._foreach_copy_(plan.single_snapshots, current)
                norms.append(torch.stack(torch._foreach_norm(current)))
            plan.weight_norms = norms

    def _after_step(self, optimizer, args, kwargs) -> None:
        plan = self._plan
        self._plan = None
        if plan is None or not plan.weight_norms:
            return
        if not self.every_step:
            self.armed = False
        self.generation += 1
        with torch.no_grad():
            deltas = []
            for snapshot, scratch, group in zip(plan.group_snapshots, plan.group_scratch, plan.groups):
                torch.stack(group, out=scratch)
                deltas.append(grouped.row_norms(scratch.sub_(snapshot)))
            if plan.singles:
                current = [measured_view(p)[0] for p in plan.singles]
                torch._foreach_sub_(plan.single_snapshots, current)  # -(update)
                deltas.append(torch.stack(torch._foreach_norm(plan.single_snapshots)))
            device = deltas[0].device
            norms = torch.cat([n.to(device=device, dtype=torch.float64) for n in deltas + plan.weight_norms])
        self.steps.append((plan.layers, plan.scales, plan.shared, norms))
        if len(self.steps) >= ABSORB_EVERY and norms.device.type == "cpu":
            # Reading CPU tensors is no device sync: turn the pending steps into ratios now, so
            # a session that rarely collects does not hold a tensor per step until it does.
            self.absorb([step[-1].tolist() for step in self.steps])

    def release(self) -> None:
        """Drop the snapshot buffers (on exit)."""
        self.active = False
        self._plans.clear()
        self._plan = None

    def parts(self) -> list[torch.Tensor]:
        """Device norms of the steps taken since the last collect (absorbed by `absorb`)."""
        return [norms for *_, norms in self.steps]

    def absorb(self, host_norms: list[list[float]]) -> None:
        """Turn the host copies of `parts()` into per-layer ratios (NaN: layer not in that step)."""
        for (layers, scales, shared, _), norms in zip(self.steps, host_norms):
            half = len(layers)
            delta_sq = [0.0] * len(self.layer_names)
            weight_sq = [0.0] * len(self.layer_names)
            present = [False] * len(self.layer_names)
            # each measured parameter counts in its layer, and a tied one in its further layers too
            for i, layer in itertools.chain(enumerate(layers), shared):
                delta_sq[layer] += norms[i] ** 2 * scales[i]
                weight_sq[layer] += norms[half + i] ** 2 * scales[i]
                present[layer] = True
            for layer, name in enumerate(self.layer_names):
                # A ratio against a zero weight (a zero-initialised head or gate before its first
                # step) is undefined, not huge: that step is left out of the layer's history.
                if present[layer] and weight_sq[layer] > 0.0:
                    ratio = math.sqrt(delta_sq[layer] / weight_sq[layer])
                    self.ratios[name].add(ratio)
        self.steps = []


def _stack_buffer(group: list[torch.Tensor]) -> torch.Tensor:
    first = group[0]
    return torch.empty((len(group), *first.shape), dtype=first.dtype, device=first.device)
