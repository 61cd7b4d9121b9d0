"""The learning-rate fixes under `--try-fixes`: the rate (and warm-up length) an LR range test finds.

`lower-lr`, `higher-lr` and `lr-warmup` used to move the rate by a decade and hope. Here one range
test (`diagnose.range_test`: an exponential sweep, then short runs around its suggestion and at the
current rate) runs on the unchanged model, and each fix names what it measured:

- `higher-lr`: the verified rate (the best of the short runs) when it is above the current one;
  otherwise the best higher rate the runs tried, and the change says the test found none better;
- `lower-lr`: the lowest rate among the range test's short runs that trains about as well as the
  best of them: a run with loss spikes needs margin below the edge of stability, and the best
  run's rate, which wins 20 steps on one batch, often sits right at that edge;
- `lr-warmup`: the current rate, ramped up linearly over enough steps that the ramp's first step
  is no larger than that same safe rate; when the sweep (itself a ramp) already failed below the
  current rate, the change says a warm-up alone cannot make that rate stable.

Each is then verified at that value by `--try-fixes` like any other fix.

The range test costs a sweep plus a few short runs, so it runs once per report, whichever LR fixes
ask (a one-entry cache keyed by the model's identity and weights and the run's settings), with a
shorter sweep than the command's default.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from diagnose.fixes._model import FixTarget
from diagnose.fixes.optimization import higher_lr_snippet, lower_lr_snippet, warmup_snippet
from diagnose.fixes.trial import FixTrial

if TYPE_CHECKING:
    from torch import nn

    from diagnose.range_test import LRFindResult
    from diagnose.run import Workload

# The sweep under --try-fixes: 40 steps, 5-6 per decade over the default range (the density the
# suggestion rule was also measured at, benchmarks/lr_find_accuracy.py), instead of the command's
# 100: --try-fixes must stay seconds to a minute on CPU, and the short runs decide anyway.
FIX_SWEEP_STEPS = 40
FIX_MIN_LR = 1e-6
FIX_MAX_LR = 10.0
# Without the range test's help, one decade: the step of a manual LR search.
FALLBACK_FACTOR = 10.0

_cache: list["_Entry"] = []


def apply_lr_fix(fix_id: str, module: "nn.Module", workload: "Workload") -> FixTrial:
    """The same model under the rate (or warm-up) the range test measured for `fix_id`."""
    found = range_test_for(module, workload)
    if fix_id == "lr-warmup":
        return _warm_up(found, module, workload)
    lower = fix_id == "lower-lr"
    # the loss numbers are left to the verification that follows: it measures the same run
    lr, why = _lower(found, workload) if lower else _higher(found, workload)
    target = FixTarget(optimizer=workload.optimizer, lr=workload.lr, proposed_lr=lr)
    snippet = lower_lr_snippet(target) if lower else higher_lr_snippet(target)
    return FixTrial(module=module, workload=replace(workload, lr=lr),
                    change=f"learning rate {workload.lr:g} -> {lr:.3g} ({why})", snippet=snippet)


def _lower(found: "LRFindResult", workload: "Workload") -> tuple[float, str]:
    """The rate for a run that is unstable: the safe rate (`_safe_rate`) when it is below the
    current one, else a decade down."""
    safe = _safe_rate(found)
    if safe is not None and safe < workload.lr:
        return safe, "the lowest rate the range test's short runs found to train about as well as their best"
    return workload.lr / FALLBACK_FACTOR, "the range test found no lower rate that trains; one decade"


def _safe_rate(found: "LRFindResult") -> float | None:
    """The lowest rate among the range test's short runs whose loss is not clearly worse than the
    best run's, by the standard --try-fixes judges every fix with (`diagnose.verify.training_worse`).

    Not the best run's rate itself: it wins 20 steps on one batch, which favours the edge of
    stability, where loss spikes and outsized updates (what lower-lr and lr-warmup are for) are the
    norm. Among rates that train as well, the lowest keeps the most margin below that edge.
    """
    from diagnose.verify import training_worse

    finite = [c for c in found.candidates if math.isfinite(c.loss_after)]
    if not found.found or not finite:
        return None
    best = min(finite, key=lambda c: c.loss_after)
    near = [c for c in finite if not training_worse(found.initial_loss, best.loss_after, c.loss_after)]
    return min(c.lr for c in near)


def _higher(found: "LRFindResult", workload: "Workload") -> tuple[float, str]:
    """The rate for a run that barely moves: the verified rate, the one that trained best."""
    verified = found.verified
    if verified is not None and verified.lr > workload.lr:
        return verified.lr, "the range test's verified rate, the best of its short runs"
    above = [c for c in found.candidates if c.lr > workload.lr and math.isfinite(c.loss_after)]
    if above:
        best = min(above, key=lambda c: c.loss_after)
        return best.lr, ("the range test found no higher rate better than the current one; "
                         "the best higher one it tried")
    return workload.lr * FALLBACK_FACTOR, "the range test tried no higher rate; one decade"


def _warm_up(found: "LRFindResult", module: "nn.Module", workload: "Workload") -> FixTrial:
    """The current rate, reached by a linear ramp whose first step is no larger than the safe rate."""
    start = _safe_rate(found)
    if start is None or start >= workload.lr:
        # nothing measured to ramp from, or the runs found the current rate trains from the first
        # step: a ramp over the first quarter of the run is still tried and verified
        steps = max(1, round(workload.steps / 4))
        why = ("the range test found the current rate trains from the first step" if start is not None
               else "the loss fell at no rate in the range test")
    else:
        # linear warm-up: step k uses lr * (k + 1) / steps, so the first step's rate is lr / steps
        steps = math.ceil(workload.lr / start)
        why = f"its first step at lr {workload.lr / steps:.3g}, no more than the {start:.3g} the range test supports"
        if found.minimum_lr is not None and workload.lr > found.minimum_lr:
            why += (f"; but the sweep, itself a ramp, turned up at lr {found.minimum_lr:.3g}: a warm-up alone "
                    "cannot make this rate stable, lower it")
        elif steps > workload.steps:
            why += f"; the ramp outlasts the {workload.steps}-step run"
    target = FixTarget(optimizer=workload.optimizer, lr=workload.lr, proposed_lr=start, warmup_steps=steps)
    change = f"learning rate {workload.lr:g} warmed up linearly over the first {steps} steps ({why})"
    return FixTrial(module=module, workload=replace(workload, warmup_steps=steps), change=change,
                    snippet=warmup_snippet(target))


def range_test_for(module: "nn.Module", workload: "Workload") -> "LRFindResult":
    """The range test of `module` under `workload`, run once however many LR fixes ask for it."""
    from diagnose.range_test import range_test

    cached = _cache[0] if _cache else None
    if cached is not None and cached.matches(module, workload):
        return cached.result
    result = range_test(
        module, replace(workload, warmup_steps=0, clip_grad_norm=None),
        min_lr=min(FIX_MIN_LR, workload.lr / 1000), max_lr=max(FIX_MAX_LR, workload.lr * 10),
        sweep_steps=FIX_SWEEP_STEPS,
    )
    _cache[:] = [_Entry.of(module, workload, result)]  # one entry: a report's fixes share it, nothing piles up
    return result


@dataclass(frozen=True, slots=True)
class _Entry:
    """A cached range test, and what it was run on. The model and the batch are held by weak
    reference (the cache must not keep a user's model or data alive) and compared by identity; the
    parameters by identity and version (the counter moves with every in-place change, an optimizer
    step included), so a model trained between two reports is tested again."""

    module: "weakref.ref"
    tensors: tuple
    key: tuple
    result: "LRFindResult"

    @staticmethod
    def of(module: "nn.Module", workload: "Workload", result: "LRFindResult") -> "_Entry":
        tensors = tuple(weakref.ref(t) for t in _batch_tensors(workload))
        return _Entry(weakref.ref(module), tensors, _key(module, workload), result)

    def matches(self, module: "nn.Module", workload: "Workload") -> bool:
        current = _batch_tensors(workload)
        return (
            self.module() is module
            and len(current) == len(self.tensors)
            and all(ref() is tensor for ref, tensor in zip(self.tensors, current))
            and self.key == _key(module, workload)
        )


def _batch_tensors(workload: "Workload") -> tuple:
    import torch

    batch = workload.batch
    values = (*batch.args, *batch.kwargs.values(), batch.targets)
    return tuple(v for v in values if isinstance(v, torch.Tensor))


def _key(module: "nn.Module", workload: "Workload") -> tuple:
    params = tuple((id(p), p._version) for p in module.parameters())
    return (params, str(workload.loss), workload.optimizer, workload.lr, workload.seed, str(workload.device),
            workload.steps)
