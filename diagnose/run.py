"""Collect the evidence: probes over one forward+backward at init, then an optional short run.

Everything runs on deep copies of the model: the user's module (its weights, buffers, gradients,
training flag) and the global RNG are left exactly as they were found.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import torch
from torch import nn

import probes
from diagnose import progress
from diagnose.cloning import clone_module
from diagnose.config import OPTIMIZERS, Settings
from diagnose.errors import DiagnoseError, one_line
from diagnose.evidence import Evidence, LossTrace, ModelFacts, OutputStats, RunInfo
from diagnose.loading import LoadedModel
from diagnose.loading.inputs import Batch
from diagnose.loading.loss import LossSpec, resolve_loss
from diagnose.loading.outputs import extract_output
from diagnose.recurrent import track_recurrent_gradients

# Momentum 0.9 is the value the notes (and nearly every recipe) start from.
MOMENTUM = 0.9


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """What a run needs besides the model: the batch, the loss, the optimiser and the device."""

    batch: Batch
    loss: str | object
    steps: int
    optimizer: str
    lr: float
    seed: int
    device: torch.device
    clip_grad_norm: float | None = None
    warmup_steps: int = 0


def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise DiagnoseError("--device cuda was requested but CUDA is not available here; use --device cpu")
        return torch.device("cuda")
    if requested != "auto":
        raise DiagnoseError(f"unknown device {requested!r}; use auto, cpu or cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise DiagnoseError("the model has no trainable parameters, so there is nothing to train or diagnose")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, nesterov=True)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr)
    raise DiagnoseError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def working_copy(module: nn.Module, device: torch.device) -> nn.Module:
    """A deep copy in training mode on `device`; the original is never touched."""
    try:
        clone = clone_module(module)
    except Exception as exc:  # modules holding locks, open files, generators...
        raise DiagnoseError(
            f"could not copy the model to probe it safely ({one_line(exc)}); "
            "diagnose never runs on the original module"
        ) from exc
    with warnings.catch_warnings():
        # ScriptModules expose non-leaf views of their parameters to `.to()`, which warns about
        # reading `.grad` on them; nothing is wrong and nothing is read.
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
        clone.to(device)
    clone.train()
    for param in clone.parameters():
        param.grad = None
    return clone


def _forward(module: nn.Module, batch: Batch):
    try:
        return module(*batch.args, **batch.kwargs)
    except DiagnoseError:
        raise
    except Exception as exc:
        shapes = ", ".join("x".join(str(d) for d in s) for s in batch.shapes) or "none"
        raise DiagnoseError(
            f"the model's forward failed on inputs of shape {shapes} ({one_line(exc)}); "
            "pass inputs it accepts with --input-shape or --inputs"
        ) from exc



def _loss_of(output, workload: Workload, spec: LossSpec | None) -> tuple[torch.Tensor, LossSpec]:
    prediction, model_loss = extract_output(output)
    if spec is None:
        spec = resolve_loss(workload.loss, prediction, workload.batch.targets, seed=workload.seed)
    if model_loss is not None and workload.loss == "auto" and workload.batch.targets is None:
        # The model computed its own loss (Hugging Face style, labels passed as inputs): use it.
        return model_loss, replace(spec, kind="model", expected_initial=spec.expected_initial)
    try:
        return spec.fn(prediction, spec.targets), spec
    except DiagnoseError:
        raise
    except Exception as exc:
        raise DiagnoseError(
            f"the loss ({spec.kind}) failed on an output of shape {tuple(prediction.shape)} "
            f"({one_line(exc)}); choose one with --loss"
        ) from exc


def _backward(loss: torch.Tensor) -> None:
    if not loss.requires_grad:
        raise DiagnoseError(
            "the loss does not depend on any trainable parameter (is everything frozen, or is the "
            "output detached?); there are no gradients to diagnose"
        )
    try:
        loss.backward()
    except Exception as exc:
        raise DiagnoseError(f"backward failed ({one_line(exc)})") from exc


def batch_loss(module: nn.Module, workload: Workload, spec: LossSpec | None = None) -> tuple[torch.Tensor, LossSpec]:
    """The training loss of `module` on the workload's batch, for runs other than `measure`'s (the
    LR range test): the loss spec, targets included, is resolved on the first call and passed back in."""
    return _loss_of(_forward(module, workload.batch), workload, spec)


def backward(loss: torch.Tensor) -> None:
    """`loss.backward()`, with what the user can do about a failure said in one line."""
    _backward(loss)


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurements:
    layers: tuple
    run_layers: tuple
    loss: LossTrace
    nonfinite_loss_step: int | None
    limitations: tuple[str, ...] = ()  # what the probes could not measure on this model
    output: OutputStats | None = None
    recurrent: tuple = ()
    # counted on the probed copy after its forward: a lazy module (LazyLinear) has sizes only then
    parameters: int = 0
    trainable_parameters: int = 0

    def evidence_fields(self) -> dict[str, object]:
        """The `Evidence` fields a measurement fills: one list for the first diagnosis and every
        re-measurement of a fixed copy (diagnose/verify.py), so a new measurement reaches both."""
        return {
            "layers": self.layers, "run_layers": self.run_layers, "loss": self.loss,
            "nonfinite_loss_step": self.nonfinite_loss_step, "output": self.output, "recurrent": self.recurrent,
        }


def measure(module: nn.Module, workload: Workload) -> Measurements:
    """Probe a copy of `module` at init (forward+backward), then over `workload.steps` steps."""
    with torch.random.fork_rng(devices=_rng_devices(workload.device)):
        torch.manual_seed(workload.seed)
        initial_model = working_copy(module, workload.device)
        with probes.attach(initial_model) as session, track_recurrent_gradients(initial_model) as read_recurrent:
            output = _forward(initial_model, workload.batch)
            loss, spec = _loss_of(output, workload, None)
            _backward(loss)
            recurrent = read_recurrent()
        progress.advance()
        output_stats = describe_output(output)
        layers = tuple(session.collect())
        limitations = tuple(getattr(session, "limitations", ()))
        initial = float(loss.detach())
        counted = list(initial_model.parameters())
        parameters = sum(p.numel() for p in counted)
        trainable = sum(p.numel() for p in counted if p.requires_grad)
        del initial_model, output, loss

        history: list[float] = []
        # One total gradient norm per step, unclipped, kept on the device and read once with the
        # run's records: a clipping threshold is chosen from them (the tuning playbook's 90th
        # percentile), and reading each step's norm would add a host sync per step.
        norms: list[torch.Tensor] = []
        run_layers: tuple = ()
        nonfinite_step = 0 if not math.isfinite(initial) else None
        if workload.steps > 0:
            torch.manual_seed(workload.seed)
            run_model = working_copy(module, workload.device)
            optimizer = make_optimizer(workload.optimizer, run_model.parameters(), workload.lr)
            scheduler = _warmup(optimizer, workload.warmup_steps)
            run_params = [p for p in run_model.parameters() if p.requires_grad]
            with probes.attach(run_model) as session:
                for step in range(workload.steps):
                    optimizer.zero_grad(set_to_none=True)
                    loss, _ = _loss_of(_forward(run_model, workload.batch), workload, spec)
                    value = float(loss.detach())
                    history.append(value)
                    progress.advance()
                    if not math.isfinite(value):
                        nonfinite_step = step if nonfinite_step is None else nonfinite_step
                        break  # past a NaN loss every further step is noise
                    _backward(loss)
                    norms.append(_total_gradient_norm(run_params, workload.clip_grad_norm))
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
            run_layers = tuple(session.collect())
            limitations += tuple(note for note in session.limitations if note not in limitations)
            del run_model, optimizer
        gradient_norms = tuple(torch.stack(norms).float().tolist()) if norms else ()
    trace = LossTrace(
        kind=spec.kind,
        model_computed=spec.kind == "model",
        initial=initial,
        expected_initial=spec.expected_initial,
        constant_floor=spec.constant_floor,
        num_classes=spec.num_classes,
        final=history[-1] if history else initial,
        history=tuple(history) if history else (initial,),
        gradient_norms=gradient_norms,
    )
    return Measurements(
        layers=layers, run_layers=run_layers, loss=trace, nonfinite_loss_step=nonfinite_step,
        limitations=limitations, parameters=parameters, trainable_parameters=trainable, output=output_stats,
        recurrent=recurrent,
    )


def _total_gradient_norm(params: list[torch.Tensor], clip: float | None) -> torch.Tensor:
    """The L2 norm of every parameter's gradient as one vector, before any clipping (a 0-dim tensor),
    and the gradients clipped to `clip` by that norm when asked.

    One fused foreach norm (what `clip_grad_norm_` computes too, so a clipped run pays nothing more).
    A sparse gradient (an `Embedding(sparse=True)`) counts by its coalesced values, which the
    foreach norm cannot read in place.
    """
    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=params[0].device if params else None)
        total = torch.nn.utils.get_total_norm([g.coalesce().values() if g.is_sparse else g for g in grads])
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip, total)
        return total.detach()


def describe_output(output) -> OutputStats | None:
    """Range, row sums and zeros of the prediction: one host read of five numbers."""
    try:
        prediction, _ = extract_output(output)
    except Exception:  # noqa: BLE001 - the loss already read it; an odd output just goes undescribed
        return None
    if not isinstance(prediction, torch.Tensor) or not prediction.is_floating_point() or prediction.numel() == 0:
        return None
    with torch.no_grad():
        values = prediction.detach().float()
        rows = values.reshape(-1, values.shape[-1]) if values.ndim >= 1 else values.reshape(1, 1)
        stats = torch.stack([
            values.min(), values.max(), (rows.sum(dim=-1) - 1.0).abs().max(), (values == 0).float().mean(),
        ]).tolist()
    return OutputStats(
        shape=tuple(prediction.shape), min=stats[0], max=stats[1], row_sum_error=stats[2], zero_fraction=stats[3],
    )


def _warmup(optimizer, steps: int):
    if steps <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / steps))


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def collect_evidence(
    loaded: LoadedModel, batch: Batch, settings: Settings, device: torch.device | None = None
) -> tuple[Evidence, Workload]:
    """Probe `loaded` on `batch` on `device` (the caller's resolved one; default: `settings.device` resolved)."""
    device = resolve_device(settings.device) if device is None else device
    workload = Workload(
        batch=batch, loss=settings.loss, steps=settings.steps, optimizer=settings.optimizer,
        lr=settings.lr, seed=settings.seed, device=device,
    )
    progress.stage("probing, then a short run" if settings.steps else "probing", total=1 + settings.steps)
    measured = measure(loaded.module, workload)
    evidence = Evidence(
        model=ModelFacts(
            source=loaded.source,
            format=loaded.format,
            parameters=measured.parameters,
            trainable_parameters=measured.trainable_parameters,
            layers=len(measured.layers),
            frozen_norms=loaded.frozen_norms,
            # the loader's words first; the probes' own only where they add a new fact
            limitations=loaded.limitations + tuple(
                note for note in measured.limitations if not any("TorchScript" in own for own in loaded.limitations)
            ),
        ),
        run=RunInfo(
            device=str(device),
            seed=settings.seed,
            inputs=batch.origin,
            input_shapes=batch.shapes,
            loss=measured.loss.kind,
            steps=settings.steps,
            optimizer=settings.optimizer,
            lr=settings.lr,
            batch_size=batch.shapes[0][0] if batch.shapes and batch.shapes[0] else None,
            fixed_batch=True,
        ),
        inputs=batch.stats,
        **measured.evidence_fields(),
    )
    return evidence, workload
