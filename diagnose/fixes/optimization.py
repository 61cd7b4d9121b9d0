"""Optimisation fixes: gradient clipping, the learning rate and its schedule, the optimizer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from diagnose.fixes._model import Fix, FixTarget
from diagnose.fixes.trial import FixTrial

if TYPE_CHECKING:
    from torch import nn

    from diagnose.evidence import LossTrace
    from diagnose.run import Workload
    from probes.records import LayerRecord

# The Google tuning playbook: "Choose a gradient clipping threshold based on the 90th percentile of
# gradient norms" (of the unclipped norms, logged over a run): ordinary steps pass untouched and
# only the largest tenth is bounded.
CLIP_PERCENTILE = 0.9
# Without a measured run, 1.0: the value most recipes (and clip_grad_norm_ examples) start from.
DEFAULT_CLIP_NORM = 1.0
# change-optimizer: Adam at its standard learning rate, the robust default the notes give for deep
# nets (adaptive, stable, widely used), away from AdaGrad; momentum SGD at the contract's default
# rate from an adaptive optimizer, whose rate does not carry over.
ADAM_LR = 1e-3
MOMENTUM_LR = 0.01

_TORCH_OPTIMIZERS = {
    "sgd": "torch.optim.SGD(model.parameters(), lr={lr})",
    "momentum": "torch.optim.SGD(model.parameters(), lr={lr}, momentum=0.9)",
    "nesterov": "torch.optim.SGD(model.parameters(), lr={lr}, momentum=0.9, nesterov=True)",
    "adagrad": "torch.optim.Adagrad(model.parameters(), lr={lr})",
    "rmsprop": "torch.optim.RMSprop(model.parameters(), lr={lr}, alpha=0.9)",
    "adam": "torch.optim.Adam(model.parameters(), lr={lr})",
    "adamw": "torch.optim.AdamW(model.parameters(), lr={lr})",
    "nadam": "torch.optim.NAdam(model.parameters(), lr={lr})",
}


def optimizer_line(name: str, lr: float) -> str:
    return "optimizer = " + _TORCH_OPTIMIZERS.get(name, _TORCH_OPTIMIZERS["sgd"]).format(lr=f"{lr:g}")


def optimizer_candidates(current: str, lr: float) -> list[tuple[str, float]]:
    """The optimizers (and rates) change-optimizer weighs, the one proposed before any run first.

    From plain SGD: heavy-ball momentum 0.9 at the same rate first. On a quadratic, plain SGD is
    stable for lr x curvature < 2 and heavy-ball momentum for < 2(1 + 0.9) = 3.8, so wherever the
    user's SGD run was stable, momentum at the same rate is too, and it moves up to 10x faster along
    the shallow directions of a ravine; Nesterov's bound at that momentum is 2(1 + 0.9)/(1 + 2 x 0.9)
    = 1.36, below plain SGD's, so it could diverge at a rate SGD tolerated. Then Adam at ADAM_LR.
    From AdaGrad: Adam at ADAM_LR; Adam at AdaGrad's own rate (both take first steps of about the
    rate per weight, AdaGrad's then shrink and Adam's do not); momentum SGD at MOMENTUM_LR.
    From Adam-like optimizers: momentum SGD at MOMENTUM_LR; from the others, Adam as well.
    `--try-fixes` runs each and verifies the one whose short-run loss ends lowest.
    """
    if current == "sgd":
        return [("momentum", lr), ("adam", ADAM_LR)]
    if current == "adagrad":
        same_rate = [("adam", lr)] if lr != ADAM_LR else []
        return [("adam", ADAM_LR), *same_rate, ("momentum", MOMENTUM_LR)]
    if current in ("adam", "adamw", "nadam"):
        return [("momentum", MOMENTUM_LR)]
    return [("momentum", MOMENTUM_LR), ("adam", ADAM_LR)]


def optimizer_snippet(current: str, chosen: tuple[str, float], alternatives: Sequence[tuple[str, float]] = ()) -> str:
    """Why to move away from `current`, the line for `chosen`, and the alternatives as comments."""
    if current == "adagrad":
        why = "# AdaGrad's step only ever shrinks; Adam keeps a decaying average instead"
    elif current == "sgd":
        why = ("# momentum accumulates the consistent direction along a ravine and damps the\n"
               "# zig-zag across it; at the same rate it is stable wherever plain SGD was")
    else:
        why = "# try the other family: adaptive methods and momentum SGD suit different problems"
    others = [f"# or: {optimizer_line(name, lr).removeprefix('optimizer = ')}" for name, lr in alternatives]
    return "\n".join([why, optimizer_line(*chosen), *others])


def measured_clip_norm(losses: Sequence[float], gradient_norms: Sequence[float]) -> tuple[float, int] | None:
    """The clipping threshold for a run, the CLIP_PERCENTILE of its unclipped gradient norms, and
    how many steps' norms it was read from.

    `losses[i]` and `gradient_norms[i]` belong to step i (`LossTrace.history` and
    `.gradient_norms`). The playbook's rule reads the norms of a run that trains; once a run
    diverges its norms grow with the loss and their percentile would clip nothing. So only the
    steps up to the first loss above the starting one count (at least the first step). None
    when no finite norm was measured.
    """
    stable = []
    start = losses[0] if losses else math.nan
    for i, norm in enumerate(gradient_norms):
        if stable and i < len(losses) and not losses[i] <= start:  # NaN compares false: divergence too
            break
        if math.isfinite(norm) and norm > 0:
            stable.append(norm)
    if not stable:
        return None
    stable.sort()
    position = CLIP_PERCENTILE * (len(stable) - 1)
    low = math.floor(position)
    high = min(low + 1, len(stable) - 1)
    return stable[low] + (stable[high] - stable[low]) * (position - low), len(stable)


def clip_snippet(target: FixTarget) -> str:
    if target.clip_norm is None:
        why = [
            f"# {DEFAULT_CLIP_NORM:g} is a common start; log the norm clip_grad_norm_ returns and set",
            "# max_norm at its 90th percentile over a stretch of training (Google's tuning playbook)",
        ]
        max_norm = DEFAULT_CLIP_NORM
    else:
        steps = f"{target.clip_steps} steps of " if target.clip_steps else ""
        why = [
            f"# {target.clip_norm:.3g}: the 90th percentile of the gradient norms measured over",
            f"# {steps}the short run (Google's tuning playbook); if over half of the steps get",
            "# clipped, lower the learning rate instead",
        ]
        max_norm = target.clip_norm
    return "\n".join([
        "# in the training loop, between backward() and step()",
        "loss.backward()",
        *why,
        f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm:.3g})",
        "optimizer.step()",
    ])


# The comment over a rate an LR range test measured (`diagnose lr-find`; --try-fixes runs it).
_MEASURED = "# {lr:.3g}: the best of short runs around an LR range test on this model (diagnose lr-find)"


def lower_lr_snippet(target: FixTarget) -> str:
    if target.proposed_lr is not None:
        return f"# was lr={target.lr:g}\n{_MEASURED.format(lr=target.proposed_lr)}\n" + optimizer_line(
            target.optimizer, target.proposed_lr)
    return f"# was lr={target.lr:g}; `diagnose lr-find` measures the rate to use\n" + optimizer_line(
        target.optimizer, target.lr / 10)


def higher_lr_snippet(target: FixTarget) -> str:
    if target.proposed_lr is not None:
        return f"# was lr={target.lr:g}\n{_MEASURED.format(lr=target.proposed_lr)}\n" + optimizer_line(
            target.optimizer, target.proposed_lr)
    return (
        f"# was lr={target.lr:g}; raise it a decade at a time while the loss still falls smoothly\n"
        "# (`diagnose lr-find` measures the rate to use)\n"
        + optimizer_line(target.optimizer, target.lr * 10)
    )


def warmup_snippet(target: FixTarget) -> str:
    if target.warmup_steps is not None and target.proposed_lr is not None:
        why = (
            f"# at least {target.warmup_steps} steps: the ramp's first step then uses lr "
            f"{target.lr / target.warmup_steps:.3g},\n"
            f"# no more than the {target.proposed_lr:.3g} an LR range test found to train from the start\n"
        )
        steps = target.warmup_steps
    else:
        why, steps = "", 500
    return (
        optimizer_line(target.optimizer, target.lr) + "\n"
        + why
        + f"warmup_steps = {steps}\n"
        "scheduler = torch.optim.lr_scheduler.LambdaLR(\n"
        "    optimizer, lambda step: min(1.0, (step + 1) / warmup_steps)\n"
        ")\n"
        "# call scheduler.step() after every optimizer.step()"
    )


def _schedule_snippet(target: FixTarget) -> str:
    peak = target.lr * 10 if target.lr < 1e-3 else target.lr
    return (
        optimizer_line(target.optimizer, target.lr) + "\n"
        "# 1cycle: up to a peak, then down; one scheduler.step() per batch\n"
        "scheduler = torch.optim.lr_scheduler.OneCycleLR(\n"
        f"    optimizer, max_lr={peak:g}, total_steps=epochs * len(train_loader)\n"
        ")\n"
        "# alternatives: ExponentialLR(optimizer, gamma=0.95) per epoch,\n"
        "# MultiStepLR(optimizer, milestones=[30, 60], gamma=0.1),\n"
        "# ReduceLROnPlateau(optimizer, factor=0.5, patience=5) with scheduler.step(val_loss)"
    )


def _optimizer_snippet(target: FixTarget) -> str:
    first, *others = optimizer_candidates(target.optimizer, target.lr)
    return optimizer_snippet(target.optimizer, first, others)


def _clip_gradients(
    fix_id: str, module: nn.Module, workload: Workload, layers: Sequence[LayerRecord], run: LossTrace | None
) -> FixTrial:
    """Clip by global norm at the threshold the unchanged copy's run measured (or the default)."""
    measured = measured_clip_norm(run.history, run.gradient_norms) if run is not None else None
    if measured is None:
        target = FixTarget()
        change = f"gradients clipped to global norm {DEFAULT_CLIP_NORM:g} (no gradient norm measured)"
        threshold = DEFAULT_CLIP_NORM
    else:
        threshold, steps = measured
        target = FixTarget(clip_norm=threshold, clip_steps=steps)
        change = f"gradients clipped to global norm {threshold:.3g}, the 90th percentile of {steps} measured norms"
    return FixTrial(module=module, workload=replace(workload, clip_grad_norm=threshold), change=change,
                    snippet=clip_snippet(target))


def _range_tested_rate(
    fix_id: str, module: nn.Module, workload: Workload, layers: Sequence[LayerRecord], run: LossTrace | None
) -> FixTrial:
    """The rate (lower-lr, higher-lr) or warm-up (lr-warmup) an LR range test on the model measures."""
    # imported here: learning_rate imports this module's snippets
    from diagnose.fixes.learning_rate import apply_lr_fix

    return apply_lr_fix(fix_id, module, workload)


def _change_optimizer(
    fix_id: str, module: nn.Module, workload: Workload, layers: Sequence[LayerRecord], run: LossTrace | None
) -> FixTrial:
    """The candidate optimizer whose short run on a copy ends at the lowest loss (one run each)."""
    from diagnose import progress
    from diagnose.run import measure

    candidates = optimizer_candidates(workload.optimizer, workload.lr)
    finals: list[tuple[float, int]] = []
    if len(candidates) > 1:
        for position, (name, lr) in enumerate(candidates):
            progress.stage(f"change-optimizer: a short run with {name} at lr {lr:g}", total=workload.steps + 1)
            final = measure(module, replace(workload, optimizer=name, lr=lr)).loss.final
            finals.append((final if final is not None and math.isfinite(final) else math.inf, position))
    best = min(finals)[1] if finals else 0
    name, lr = candidates[best]
    change = f"optimizer {workload.optimizer} (lr {workload.lr:g}) -> {name} (lr {lr:g})"
    if finals:
        tried = ", ".join(f"{n} (lr {r:g}) {loss:.3g}" for (n, r), (loss, _) in zip(candidates, finals))
        change += f", the lowest short-run loss of {tried}"
    others = [c for i, c in enumerate(candidates) if i != best]
    return FixTrial(module=module, workload=replace(workload, optimizer=name, lr=lr), change=change,
                    snippet=optimizer_snippet(workload.optimizer, (name, lr), others))


GRADIENT_CLIPPING = Fix(
    id="gradient-clipping",
    title="Clip gradients",
    summary="clip gradients by global norm (or by value) before each optimizer step",
    rationale=(
        "Clipping caps the size of each update: when the gradient's norm exceeds a threshold it is "
        "scaled down to it, keeping its direction. Occasional huge gradients then cannot throw the "
        "weights far away. It is the standard remedy in recurrent networks, where batch norm is "
        "awkward to use."
    ),
    doc="""## What it does
Calls `torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)` between `backward()` and
`step()` (or `clip_grad_value_` to clip each element).

## Why it works
Exploding gradients show up as rare steps that are orders of magnitude larger than usual. Clipping
by norm rescales such a gradient to a fixed length without changing its direction, so the step is
bounded while ordinary steps are untouched. Clipping by value caps each component instead, which
can change the direction; the two behave differently, so it is worth trying both. The threshold is
a hyperparameter. Google's tuning playbook sets it at the 90th percentile of the unclipped gradient
norms logged over a run, so ordinary steps pass and only the largest tenth is bounded; diagnose
measures those norms in its short run (the steps before any divergence) and puts that number in the
snippet, and `--try-fixes` verifies that threshold. Without a run, 1.0 is a common start. If more
than half of the steps get clipped, the threshold is doing the learning rate's job: lower the rate.

## When not to use
As a cure for a consistently too-large learning rate (lower it instead), or when gradients vanish
(clipping only makes large gradients smaller).

## Example
```python
loss.backward()
torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
optimizer.step()
```
""",
    snippet=clip_snippet,
    apply=_clip_gradients,
)

LOWER_LR = Fix(
    id="lower-lr",
    title="Lower the learning rate",
    summary="lower the learning rate, to the rate an LR range test on the model finds",
    rationale=(
        "When the loss jumps up, oscillates or turns into NaN, the steps are overshooting the "
        "minimum. A rate below the edge of stability, which an LR range test on the model measures, "
        "makes the steps short enough to land inside the valley instead of across it."
    ),
    doc="""## What it does
Lowers the learning rate. Under `--try-fixes` the new rate comes from an LR range test on a copy
of the model (`diagnose lr-find`, with a 40-step sweep): its suggestion, an estimate of the edge of
stability that errs low, or the best of its verifying short runs when that is lower still; the fix
names that rate and is verified at it. Without a run, about 10x lower.

## Why it works
Gradient descent moves each weight by lr x gradient. Where the loss surface is steep or curved,
a large step overshoots the minimum and lands higher on the other side; repeated, this grows into
divergence, NaN, and ReLU units knocked into the dead zone. A smaller step follows the surface.

## When not to use
When the loss falls steadily but slowly: a smaller rate makes it slower still. Then look at a
schedule (`lr-schedule`) or a warm-up (`lr-warmup`) instead.

## Example
```python
optimizer = torch.optim.SGD(model.parameters(), lr=0.001)  # was 0.01
```
""",
    snippet=lower_lr_snippet,
    apply=_range_tested_rate,
)

HIGHER_LR = Fix(
    id="higher-lr",
    title="Raise the learning rate",
    summary="raise the learning rate, to the rate an LR range test on the model finds, when updates are negligible",
    rationale=(
        "If every step changes the weights by a vanishing fraction, the network is barely training "
        "and will need orders of magnitude more steps. Raising the learning rate a decade at a time, "
        "until the loss starts to fall clearly but not erratically, finds a useful scale."
    ),
    doc="""## What it does
Raises the learning rate. Under `--try-fixes` the new rate comes from an LR range test on a copy of
the model (`diagnose lr-find`): the best of the short runs around its suggestion, which the fix
names and is verified at. Without a run, about 10x higher (repeat while the loss improves smoothly).

## Why it works
A healthy step changes a weight by roughly a thousandth of its size. Much less, and the model
moves so slowly that it looks like it cannot learn. An LR range test (start tiny, grow the rate
exponentially over a few hundred steps, watch where the loss starts to fall and where it blows up)
gives the usable range in one short run.

## When not to use
When the loss is already unstable, or when the updates are small because the gradients vanish
(fix the gradient flow first: a larger rate would blow up the layers that do get gradient).

## Example
```python
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # was 0.01
```
""",
    snippet=higher_lr_snippet,
    apply=_range_tested_rate,
)

LR_WARMUP = Fix(
    id="lr-warmup",
    title="Warm the learning rate up",
    summary="start with a small learning rate and ramp it up over the first steps",
    rationale=(
        "The first steps are the most fragile: the weights are random, adaptive optimizers have not "
        "yet estimated gradient statistics, and the gradients can be large. Ramping the learning "
        "rate up from near zero over the first few hundred steps avoids early blow-ups while "
        "keeping the full rate afterwards; it also pairs well with large batches."
    ),
    doc="""## What it does
Multiplies the learning rate by a factor that grows linearly from ~0 to 1 over the first
`warmup_steps` optimizer steps (`torch.optim.lr_scheduler.LambdaLR`). Under `--try-fixes` the
length comes from an LR range test on a copy of the model: enough steps that the ramp's first step
is no larger than the rate the test suggests from the initial weights. When the sweep, itself a
ramp, already failed below the current rate, the fix says a warm-up alone cannot make that rate
stable.

## Why it works
Early updates come from gradients of an untrained network and, for Adam-like optimizers, from
second-moment estimates built on very few samples: both can make the first steps far too large.
A warm-up keeps those first steps short; by the time the full rate applies, the network and the
optimizer's statistics have settled.

## When not to use
When the rate is too high for the whole run, not just the beginning (lower it instead).

## Example
```python
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 500))
```
""",
    snippet=warmup_snippet,
    apply=_range_tested_rate,
)

LR_SCHEDULE = Fix(
    id="lr-schedule",
    title="Use a learning-rate schedule",
    summary="a schedule: exponential, piecewise constant, 1cycle, or reduce-on-plateau",
    rationale=(
        "A single learning rate is a compromise: large enough to make progress early, small enough "
        "to settle late. A schedule gets both: 1cycle ramps up then down, exponential and piecewise "
        "schedules decay it over time, reduce-on-plateau cuts it when validation stops improving."
    ),
    doc="""## What it does
Attaches a scheduler from `torch.optim.lr_scheduler`: `OneCycleLR` (1cycle), `ExponentialLR`,
`MultiStepLR` (piecewise constant) or `ReduceLROnPlateau` (performance-based).

## Why it works
Far from a minimum, large steps cover ground quickly; near it, they bounce around the bottom.
Exponential decay divides the rate by a constant factor per period; piecewise schedules drop it at
chosen epochs; reduce-on-plateau watches the validation loss and halves the rate when it stalls;
1cycle first climbs to a high rate (which also regularises) and then anneals it, often reaching a
good solution in fewer epochs.

## When not to use
To rescue a rate that is wrong by orders of magnitude: fix the base rate first.

## Example
```python
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10_000)
for batch in loader:
    ...
    optimizer.step()
    scheduler.step()
```
""",
    snippet=_schedule_snippet,
    not_applicable="a schedule pays off over many epochs, which a short run of a few steps cannot show",
)

CHANGE_OPTIMIZER = Fix(
    id="change-optimizer",
    title="Change the optimizer",
    summary="a momentum or adaptive optimizer (e.g. Adam instead of AdaGrad on deep nets)",
    rationale=(
        "Plain SGD crawls along shallow, elongated valleys, and AdaGrad's step size shrinks for ever "
        "because it sums every past squared gradient. Momentum (ideally Nesterov) accumulates "
        "consistent directions; RMSProp and Adam use a decaying average of squared gradients, so "
        "their steps adapt per parameter without dying out."
    ),
    doc="""## What it does
Replaces the optimizer: plain SGD -> SGD with momentum 0.9 at the same rate, or Adam (1e-3);
AdaGrad -> Adam (1e-3, or at AdaGrad's own rate) or momentum SGD (0.01); an adaptive optimizer
-> momentum SGD (0.01).
`--try-fixes` runs the short run with each candidate on a copy and proposes, and verifies, the one
whose loss ends lowest. Heavy-ball momentum keeps SGD's rate safely: on a quadratic it is stable up
to lr x curvature < 3.8 where plain SGD needs < 2, while Nesterov at momentum 0.9 needs < 1.36.
The rates are sensible defaults, not tuned: `diagnose lr-find` finds one for the new optimizer.

## Why it works
Momentum keeps a running velocity of past gradients, so it speeds up along directions that stay
consistent and damps zig-zags across steep walls; Nesterov evaluates the gradient a step ahead and
usually converges a bit faster. AdaGrad divides by the root of the running *sum* of squared
gradients, which grows without bound: on deep networks the effective rate decays to nothing long
before convergence. RMSProp replaces the sum with an exponential moving average; Adam adds momentum
on top (Nadam adds Nesterov).

## When not to use
When the current optimizer is not the bottleneck (check gradients and the learning rate first).
Some problems generalise better with momentum SGD than with adaptive methods; try both.

## Example
```python
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
# or: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
```
""",
    snippet=_optimizer_snippet,
    apply=_change_optimizer,
)

FIXES = (GRADIENT_CLIPPING, LOWER_LR, HIGHER_LR, LR_WARMUP, LR_SCHEDULE, CHANGE_OPTIMIZER)
