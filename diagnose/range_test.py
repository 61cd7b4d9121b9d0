"""The learning-rate range test, verified: an exponential LR sweep proposes, short runs decide.

On a copy of the model, one optimizer step per LR from `min_lr` to `max_lr` (exponentially spaced),
one loss per step, stopped once the smoothed loss diverges. `diagnose.lr_curve` reads the curve and
suggests an LR. Then short runs from the model's starting weights (the check's 20 steps, same batch,
seed, loss and optimizer) at the suggestion, at ÷3 and ×3, and at the user's current LR, decide:
the best one is the verified LR. When the best run is at the edge of that bracket, the bracket
follows it (÷9, ÷27 or ×9, ×27) while the runs keep improving, so a suggestion that is off by more
than 3x is still corrected by measurement rather than trusted.

The sweep and the runs use one fixed batch, the batch `diagnose check` trains on. Measured on an
MLP with synthetic inputs and random labels: on a fixed batch the loss falls from 2.32 to 0.15
before diverging at lr ~2; with a fresh synthetic batch per step there is nothing to learn (new
random labels every time), and the "curve" is noise between 2.26 and 2.35 with its minimum at an
arbitrary 7e-5. Real data from `--inputs` is one batch too. So a fixed batch is the only choice that
gives a curve, and it is the same task the verifying runs are judged on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from diagnose import lr_curve, progress
from diagnose.config import DEFAULT_STEPS, Settings
from diagnose.errors import DiagnoseError
from diagnose.loading import LoadedModel
from diagnose.loading.inputs import Batch
from diagnose.loading.loss import LossSpec
from diagnose.report import SCHEMA_VERSION, TOOL_NAME
from diagnose.run import Workload, backward, batch_loss, make_optimizer, resolve_device, working_copy
from diagnose.version import __version__

# fastai's and torch-lr-finder's range: from far below any useful LR to far above.
DEFAULT_MIN_LR = 1e-7
DEFAULT_MAX_LR = 10.0
DEFAULT_SWEEP_STEPS = 100
# Fewer points than this cannot show a plateau, a fall and a turn.
MIN_SWEEP_STEPS = 10
# The neighbours of the suggestion that are verified, as factors: one step of 3 either way (a
# half-decade lattice: the verified LR is then within about 1.7x of the best LR on that lattice).
NEIGHBOUR_FACTOR = 3.0
# How many further ×3 steps the bracket may follow the runs past a neighbour that won: two more
# reach 27x from the suggestion, far beyond the spread of the suggestion rule's error.
MAX_EXTENSIONS = 2

SUGGESTED, BASELINE = "suggested", "baseline"


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One verifying short run: its LR and the loss after it (NaN when it diverged)."""

    lr: float
    loss_after: float
    role: str  # "suggested", "suggested / 3", "suggested x 9", "baseline"

    def to_dict(self) -> dict[str, object]:
        return {"lr": self.lr, "loss_after": self.loss_after, "role": self.role}


@dataclass(frozen=True, slots=True, kw_only=True)
class LRFindResult:
    """The sweep's curve, the suggestion and the rule behind it, and the verifying runs."""

    source: str
    optimizer: str
    loss: str  # the loss kind: cross-entropy, mse, model, MODULE:FN
    seed: int
    device: str
    input_shapes: tuple[tuple[int, ...], ...]
    inputs: str  # synthetic | file | example
    min_lr: float
    max_lr: float
    sweep_steps: int
    lrs: tuple[float, ...]  # the LR of each step taken (the sweep may stop before max_lr)
    losses: tuple[float, ...]  # the loss after each step, on the batch
    smoothed: tuple[float, ...]
    initial_loss: float
    stopped: str | None  # why the sweep stopped early; None when it reached max_lr
    suggested_lr: float | None  # None: the loss never decreased
    minimum_lr: float | None = None  # where the smoothed loss bottomed out: past it, even a ramped-up model fails
    rule: str
    candidates: tuple[Candidate, ...] = ()  # the short runs, by LR
    verify_steps: int = DEFAULT_STEPS
    baseline_lr: float = 0.01
    notes: tuple[str, ...] = ()
    elapsed_s: float | None = field(default=None, compare=False)

    @property
    def found(self) -> bool:
        return self.suggested_lr is not None

    @property
    def verified(self) -> Candidate | None:
        """The short run with the lowest loss after it (the baseline included); None without a suggestion."""
        if not self.found:
            return None
        return min(self.candidates, key=_rank, default=None)

    @property
    def baseline(self) -> Candidate | None:
        return next((c for c in self.candidates if c.role == BASELINE), None)

    @property
    def exit_code(self) -> int:
        """0: a suggestion was found; 1: the loss never decreased over the sweep."""
        return 0 if self.found else 1

    def to_dict(self) -> dict[str, object]:
        verified, baseline = self.verified, self.baseline
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": TOOL_NAME, "version": __version__},
            "model": {"source": self.source},
            "suggested_lr": self.suggested_lr,
            "rule": self.rule,
            "curve": {"lr": list(self.lrs), "loss": list(self.losses), "smoothed": list(self.smoothed)},
            "verified": {
                "lr": verified.lr if verified else None,
                "loss_after": verified.loss_after if verified else None,
                "baseline_lr": self.baseline_lr,
                "baseline_loss_after": baseline.loss_after if baseline else None,
                "steps": self.verify_steps,
            },
            "candidates": [c.to_dict() for c in self.candidates],
            "sweep": {
                "min_lr": self.min_lr, "max_lr": self.max_lr, "steps": self.sweep_steps,
                "steps_taken": len(self.lrs), "initial_loss": self.initial_loss, "stopped": self.stopped,
                "minimum_lr": self.minimum_lr,
            },
            "run": {
                "device": self.device, "seed": self.seed, "inputs": self.inputs,
                "input_shapes": [list(s) for s in self.input_shapes], "loss": self.loss,
                "optimizer": self.optimizer, "fixed_batch": True,
            },
            "notes": list(self.notes),
        }


def _rank(candidate: Candidate) -> tuple[float, float]:
    # a diverged run ranks last; ties (equal losses) go to the lower LR, the safer of the two
    loss = candidate.loss_after if math.isfinite(candidate.loss_after) else math.inf
    return (loss, candidate.lr)


# ---------------------------------------------------------------------------------------------
# Entry points


def run_lr_find(settings: Settings, *, min_lr: float, max_lr: float, sweep_steps: int) -> LRFindResult:
    """Everything `diagnose lr-find MODEL` does: `settings.steps` is the length of the verifying runs."""
    from diagnose.api import load_from_settings

    started = time.perf_counter()
    validate_sweep(min_lr, max_lr, sweep_steps, settings.steps)
    device = resolve_device(settings.device)  # once, for loading and the runs alike
    loaded, batch = load_from_settings(settings, device)
    return find_lr(loaded, batch, settings, min_lr=min_lr, max_lr=max_lr, sweep_steps=sweep_steps, started=started,
                   device=device)


def lr_find(
    model: nn.Module | str,
    inputs: Any = None,
    *,
    targets: Any = None,
    loss: str | Callable = "auto",
    optimizer: str = "sgd",
    lr: float = 0.01,
    seed: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    input_shapes: Sequence[Sequence[int]] = (),
    weights: str | None = None,
    trust_pickle: bool = False,
    min_lr: float = DEFAULT_MIN_LR,
    max_lr: float = DEFAULT_MAX_LR,
    steps: int = DEFAULT_SWEEP_STEPS,
    verify_steps: int = DEFAULT_STEPS,
) -> LRFindResult:
    """The LR range test on `model` (a module, or any MODEL form the CLI takes), verified.

    `inputs`, `targets`: as for `diagnose.check`. `lr` is the current LR (the baseline the verified
    LR is compared with); `steps` the sweep's length; `verify_steps` the length of each verifying
    run. The module is never modified.
    """
    from diagnose.api import load_with_batch
    from diagnose.config import validate_settings

    started = time.perf_counter()
    settings = validate_settings(Settings(
        model=model if isinstance(model, str) else type(model).__name__,
        input_shapes=tuple(tuple(int(d) for d in s) for s in input_shapes),
        loss=loss if isinstance(loss, str) else "auto",  # validated as a name; the callable is used below
        steps=int(verify_steps), optimizer=optimizer, lr=float(lr), batch_size=batch_size, weights=weights,
        trust_pickle=trust_pickle, device=device, seed=int(seed),
    ))
    validate_sweep(min_lr, max_lr, steps, settings.steps)
    resolved = resolve_device(settings.device)  # once, for loading and the runs alike
    loaded, batch = load_with_batch(
        model, inputs, targets, weights=weights, trust_pickle=trust_pickle, device=resolved,
        input_shapes=settings.input_shapes, batch_size=batch_size, seed=settings.seed,
    )
    if not isinstance(loss, str):
        settings = replace(settings, loss=loss)
    return find_lr(loaded, batch, settings, min_lr=float(min_lr), max_lr=float(max_lr), sweep_steps=int(steps),
                   started=started, device=resolved)


def validate_sweep(min_lr: float, max_lr: float, sweep_steps: int, verify_steps: int) -> None:
    if not (math.isfinite(min_lr) and min_lr > 0):
        raise DiagnoseError(f"--min must be a positive number, not {min_lr}")
    if not (math.isfinite(max_lr) and max_lr > min_lr):
        raise DiagnoseError(f"--max must be a number above --min ({min_lr:g}), not {max_lr}")
    if sweep_steps < MIN_SWEEP_STEPS:
        raise DiagnoseError(
            f"--steps must be at least {MIN_SWEEP_STEPS} (the sweep needs a plateau, a fall and a turn), "
            f"not {sweep_steps}"
        )
    if verify_steps < 1:
        raise DiagnoseError(
            f"the verifying short runs need at least 1 step, not {verify_steps}; set steps in "
            "[tool.diagnose] to 1 or more (or leave it out for the default 20)"
        )


def find_lr(
    loaded: LoadedModel, batch: Batch, settings: Settings, *, min_lr: float, max_lr: float, sweep_steps: int,
    started: float | None = None, device: torch.device | None = None,
) -> LRFindResult:
    """The range test on a loaded model and its batch; `settings.steps` is the verifying runs' length.
    `device`: the one the model was loaded on (resolved from the settings when not given)."""
    started = time.perf_counter() if started is None else started
    workload = Workload(
        batch=batch, loss=settings.loss, steps=settings.steps, optimizer=settings.optimizer, lr=settings.lr,
        seed=settings.seed, device=resolve_device(settings.device) if device is None else device,
    )
    result = range_test(loaded.module, workload, min_lr=min_lr, max_lr=max_lr, sweep_steps=sweep_steps)
    return replace(
        result, source=loaded.source, input_shapes=batch.shapes, inputs=batch.origin,
        elapsed_s=time.perf_counter() - started,
    )


def range_test(
    module: nn.Module, workload: Workload, *, min_lr: float, max_lr: float, sweep_steps: int
) -> LRFindResult:
    """Sweep, suggest, verify, on copies of `module`; `workload.steps` is the verifying runs' length
    and `workload.lr` the baseline."""
    lrs = exponential_lrs(min_lr, max_lr, sweep_steps)
    progress.stage(f"sweeping the learning rate from {min_lr:g} to {max_lr:g}", total=sweep_steps + 1)
    sweep = run_sweep(module, workload, lrs)
    suggestion = lr_curve.suggest(sweep.lrs, sweep.smoothed, sweep.initial) if sweep.lrs else None
    notes = []
    if suggestion is None:
        rule = (
            f"no suggestion: the smoothed loss never fell {lr_curve.MIN_DECREASE:.0%} below its starting value "
            f"{sweep.initial:.4g} between lr {min_lr:g} and {sweep.lrs[-1] if sweep.lrs else max_lr:g}"
        )
        notes.append(
            "the loss did not decrease at any learning rate: the weights the optimizer moves do not change it "
            "(frozen or disconnected layers, a constant output, a detached loss); run `diagnose check` on it"
        )
        # the baseline alone still says what the current LR does
        candidates = _verify(module, workload, sweep.spec, [(workload.lr, BASELINE)], extend=None)
    else:
        rule = suggestion.rule
        candidates = _verify(module, workload, sweep.spec, _bracket(suggestion.lr, workload.lr),
                             extend=suggestion.lr)
        best = min(candidates, key=_rank)
        if suggestion.still_falling and best.lr >= max(c.lr for c in candidates):
            # the sweep never turned and the runs also favour the highest LR tried: the best is
            # above what was measured
            notes.append(
                f"the loss was still falling at the largest LR swept ({sweep.lrs[-1]:g}) and the best run was "
                "the highest LR tried; the best LR may be higher: raise --max"
            )
    return LRFindResult(
        source=type(module).__name__, optimizer=workload.optimizer,
        loss=sweep.spec.kind if sweep.spec else str(workload.loss), seed=workload.seed, device=str(workload.device),
        input_shapes=workload.batch.shapes, inputs=workload.batch.origin, min_lr=min_lr, max_lr=max_lr,
        sweep_steps=sweep_steps, lrs=sweep.lrs,
        losses=sweep.losses, smoothed=sweep.smoothed, initial_loss=sweep.initial, stopped=sweep.stopped,
        suggested_lr=suggestion.lr if suggestion else None, rule=rule,
        minimum_lr=suggestion.minimum_lr if suggestion else None,
        candidates=tuple(sorted(candidates, key=lambda c: c.lr)), verify_steps=workload.steps,
        baseline_lr=workload.lr, notes=tuple(notes),
    )


def exponential_lrs(min_lr: float, max_lr: float, steps: int) -> tuple[float, ...]:
    """`steps` LRs from `min_lr` to `max_lr`, each a constant factor above the one before."""
    if steps == 1:
        return (min_lr,)
    ratio = (max_lr / min_lr) ** (1.0 / (steps - 1))
    return tuple(min_lr * ratio**i for i in range(steps - 1)) + (max_lr,)


# ---------------------------------------------------------------------------------------------
# The sweep


@dataclass(frozen=True, slots=True)
class Sweep:
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    initial: float
    stopped: str | None
    spec: LossSpec | None


def run_sweep(module: nn.Module, workload: Workload, lrs: Sequence[float]) -> Sweep:
    """One optimizer step per LR on a copy, from the model's starting weights.

    The loss recorded for an LR is the loss *after* the step taken at it (one forward more than the
    steps): the loss then reads as the effect of that LR, not of the one before.
    """
    beta = lr_curve.smoothing_beta(lr_curve.steps_per_decade(lrs))
    smoother = lr_curve.Smoother(beta)
    taken: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped = None
    with torch.random.fork_rng(devices=_cuda_devices(workload)):
        torch.manual_seed(workload.seed)
        model = working_copy(module, workload.device)
        optimizer = make_optimizer(workload.optimizer, model.parameters(), lrs[0])
        loss, spec = batch_loss(model, workload)
        initial = float(loss.detach())
        progress.advance()
        if not math.isfinite(initial):
            raise DiagnoseError(
                f"the loss at the model's starting weights is {initial} before any step, so no learning rate "
                "can be judged; run `diagnose check` to find where the non-finite values come from"
            )
        for lr in lrs:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            backward(loss)
            optimizer.step()
            loss, _ = batch_loss(model, workload, spec)
            value = float(loss.detach())
            progress.advance()
            taken.append(lr)
            losses.append(value)
            if not math.isfinite(value):
                smoothed.append(math.nan)
                stopped = f"the loss became {value} at lr {lr:.3g}"
                break
            smoothed.append(smoother.add(value))
            if smoother.diverged(smoothed[-1]):
                stopped = (
                    f"the smoothed loss passed {lr_curve.DIVERGENCE_FACTOR:g}x its minimum at lr {lr:.3g}"
                )
                break
        del model, optimizer, loss
    return Sweep(tuple(taken), tuple(losses), tuple(smoothed), initial, stopped, spec)


# ---------------------------------------------------------------------------------------------
# The verifying short runs


def _bracket(suggested: float, baseline: float) -> list[tuple[float, str]]:
    return [
        (suggested / NEIGHBOUR_FACTOR, f"{SUGGESTED} / {NEIGHBOUR_FACTOR:g}"),
        (suggested, SUGGESTED),
        (suggested * NEIGHBOUR_FACTOR, f"{SUGGESTED} x {NEIGHBOUR_FACTOR:g}"),
        (baseline, BASELINE),
    ]


def _verify(
    module: nn.Module, workload: Workload, spec: LossSpec | None, planned: list[tuple[float, str]],
    *, extend: float | None,
) -> list[Candidate]:
    """Short runs at the planned LRs; with `extend` (the suggestion), follow a winning edge of the
    bracket outward by further factors of NEIGHBOUR_FACTOR while the loss keeps improving."""
    runs: dict[float, Candidate] = {}

    def run(lr: float, role: str) -> Candidate:
        for known in runs.values():
            if math.isclose(known.lr, lr, rel_tol=1e-9):
                if role == BASELINE and known.role != BASELINE:  # the current LR is also a bracket point
                    runs[known.lr] = replace(known, role=BASELINE)
                return runs[known.lr]
        runs[lr] = Candidate(lr=lr, loss_after=short_run_loss(module, workload, lr, spec), role=role)
        return runs[lr]

    progress.stage(f"verifying: {workload.steps}-step runs at {len(planned)} learning rates",
                   total=len(planned) * (workload.steps + 1))
    for lr, role in planned:
        run(lr, role)
    if extend is not None:
        bracket = [run(extend * factor, "") for factor in (1 / NEIGHBOUR_FACTOR, 1.0, NEIGHBOUR_FACTOR)]
        best = min(bracket, key=_rank)
        direction = 0
        if math.isclose(best.lr, extend / NEIGHBOUR_FACTOR, rel_tol=1e-9):
            direction = -1
        elif math.isclose(best.lr, extend * NEIGHBOUR_FACTOR, rel_tol=1e-9):
            direction = 1
        for step in range(2, 2 + MAX_EXTENSIONS if direction else 0):
            factor = NEIGHBOUR_FACTOR**step
            lr = extend * factor if direction > 0 else extend / factor
            progress.stage(f"verifying: the best run was at the edge, trying lr {lr:.3g}", total=workload.steps + 1)
            candidate = run(lr, f"{SUGGESTED} {'x' if direction > 0 else '/'} {factor:g}")
            if _rank(candidate) >= _rank(best):
                break
            best = candidate
    return list(runs.values())


def _cuda_devices(workload: Workload) -> list:
    # the CUDA generator of the run's device is forked with the CPU one; nothing else is touched
    return [workload.device] if workload.device.type == "cuda" else []


def short_run_loss(module: nn.Module, workload: Workload, lr: float, spec: LossSpec | None = None) -> float:
    """The loss after `workload.steps` optimizer steps at `lr` on a copy (NaN once it diverges).

    The same run as the check's short run (copy, seed, batch, loss, optimizer), plus one forward
    after the last step, so the number is the loss the run ends with.
    """
    with torch.random.fork_rng(devices=_cuda_devices(workload)):
        torch.manual_seed(workload.seed)
        model = working_copy(module, workload.device)
        optimizer = make_optimizer(workload.optimizer, model.parameters(), lr)
        for _ in range(workload.steps):
            optimizer.zero_grad(set_to_none=True)
            loss, spec = batch_loss(model, workload, spec)
            progress.advance()
            if not math.isfinite(float(loss.detach())):
                return math.nan
            backward(loss)
            optimizer.step()
        with torch.no_grad():
            loss, _ = batch_loss(model, workload, spec)
        progress.advance()
        value = float(loss)
    return value if math.isfinite(value) else math.nan
