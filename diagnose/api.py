"""The library entry points: `check()` for Python callers, `run_check(settings)` for the CLI."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from diagnose import progress
from diagnose.checks import get, resolve_thresholds, run_checks, validate_ids
from diagnose.config import OPTIONS, Settings, settings_from_keywords
from diagnose.errors import DiagnoseError
from diagnose.evidence import Evidence
from diagnose.loading import LoadedModel, load_model
from diagnose.loading.inputs import Batch, make_batch, prepare_batch
from diagnose.options import keyword_signature
from diagnose.recommend import recommend
from diagnose.report import Report
from diagnose.run import collect_evidence, resolve_device


def run_check(settings: Settings) -> Report:
    """Everything `diagnose check MODEL` does, from a `Settings`."""
    started = time.perf_counter()
    validate_check_options(settings)
    device = resolve_device(settings.device)
    loaded, batch = load_from_settings(settings, device)
    return diagnose_loaded(loaded, batch, settings, device, started=started)


def validate_check_options(settings: Settings) -> None:
    """Every check id and threshold name the settings give is a real one: said before the model loads,
    so a typo costs no load and no probe run."""
    validate_ids(settings.select, settings.ignore, settings.thresholds, settings.per_layer_ignores)
    for check_id, overrides in settings.thresholds.items():
        resolve_thresholds(get(check_id), overrides)


def load_from_settings(settings: Settings, device: torch.device | None = None) -> tuple[LoadedModel, Batch]:
    """The model and the batch the command line's options name (MODEL, --weights, input options),
    on `device` (default: the one `settings.device` resolves to)."""
    device = resolve_device(settings.device) if device is None else device
    progress.stage(f"loading {settings.model}")
    loaded = load_model(
        settings.model, weights=settings.weights, trust_pickle=settings.trust_pickle, device=str(device)
    )
    progress.stage("preparing the inputs")
    batch = prepare_batch(
        loaded,
        input_shapes=settings.input_shapes,
        inputs_path=settings.inputs_path,
        targets_path=settings.targets_path,
        batch_size=settings.batch_size,
        seed=settings.seed,
        device=str(device),
    )
    return loaded, batch


def check(model: nn.Module | str, inputs: Any = None, *, targets: Any = None, **options: Any) -> Report:
    """Diagnose `model` (a module, or any MODEL form the CLI takes) on `inputs`.

    `inputs`: a tensor, a tuple/list of tensors (positional), or a dict (keyword inputs); None
    uses the model's own example inputs or `input_shapes`. The module is never modified. The
    options are the keywords of the signature, declared with the command line's flags in
    `diagnose.config.Settings` (`loss` may also be a function `loss(output, targets)`); a value
    that cannot work, an unknown check id or threshold name raises `DiagnoseError` before the
    model is loaded.
    """
    started = time.perf_counter()
    settings = settings_from_keywords(options, model=model if isinstance(model, str) else type(model).__name__)
    validate_check_options(settings)
    device = resolve_device(settings.device)
    loaded, batch = load_with_batch(
        model, inputs, targets, weights=settings.weights, trust_pickle=settings.trust_pickle, device=device,
        input_shapes=settings.input_shapes, batch_size=settings.batch_size, seed=settings.seed,
    )
    return diagnose_loaded(loaded, batch, settings, device, started=started)


check.__signature__ = keyword_signature(check, OPTIONS)  # type: ignore[attr-defined]


def load_with_batch(
    model: nn.Module | str,
    inputs: Any,
    targets: Any,
    *,
    weights: str | None,
    trust_pickle: bool,
    device: str | torch.device,
    input_shapes: tuple[tuple[int, ...], ...],
    batch_size: int | None,
    seed: int,
) -> tuple[LoadedModel, Batch]:
    """The model and the batch of a Python call: `inputs`/`targets` as objects, or (inputs None)
    the model's own examples or `input_shapes`, with `targets` when given. `device`: a resolved
    one, or a name to resolve."""
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    loaded = load_model(model, weights=weights, trust_pickle=trust_pickle, device=str(resolved))
    if inputs is None:
        batch = prepare_batch(
            loaded, input_shapes=input_shapes, batch_size=batch_size, seed=seed, device=str(resolved)
        )
        if targets is not None:
            batch = Batch(
                args=batch.args, kwargs=batch.kwargs, targets=_to_device(targets, resolved),
                origin=batch.origin, shapes=batch.shapes, stats=batch.stats,
            )
    else:
        batch = batch_from_objects(inputs, targets, resolved)
    return loaded, batch


def diagnose_loaded(
    loaded: LoadedModel, batch: Batch, settings: Settings, device: torch.device, *, started: float
) -> Report:
    """Probe, judge and advise on a loaded model and its batch on `device` (resolved once, by the caller)."""
    progress.announce(_plan(batch, settings))
    evidence, workload = collect_evidence(loaded, batch, settings, device)
    findings, checks_run = run_checks(
        evidence,
        select=settings.select,
        ignore=settings.ignore,
        thresholds=settings.thresholds,
        per_layer_ignores=settings.per_layer_ignores,
    )
    checks_run, not_judged = _checks_that_judged(checks_run, evidence)
    findings = recommend(findings, evidence)
    if settings.try_fixes and findings:
        from diagnose.verify import verify_findings

        findings = verify_findings(loaded.module, workload, evidence, findings, settings)
    return Report(
        evidence=evidence,
        findings=tuple(findings),
        checks_run=tuple(checks_run),
        checks_not_judged=not_judged,
        elapsed_s=time.perf_counter() - started,
        notes=_run_notes(evidence),
    )


def _plan(batch: Batch, settings: Settings) -> str:
    """What the run is about to do, said before it starts (a big model can take minutes)."""
    shapes = ", ".join("x".join(str(d) for d in shape) for shape in batch.shapes)
    steps = f", then {settings.steps} {settings.optimizer} steps at lr {settings.lr:g}" if settings.steps else ""
    fixes = "; then each fix on a copy" if settings.try_fixes else ""
    return f"{batch.origin} batch {shapes}: one pass at initialisation{steps}{fixes}"


def _checks_that_judged(checks_run, evidence: Evidence) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The checks that had something to judge, and (id, why not) for those that ran on nothing.

    A check that had no data did not pass: listing it as run would read as "checked, healthy".
    """
    from diagnose.checks import get

    no_run = evidence.run.steps <= 0
    no_activations = bool(evidence.layers) and all(r.activation.std is None for r in evidence.layers)
    judged, not_judged = [], []
    for check_id in checks_run:
        spec = get(check_id)
        if spec.needs_run and no_run:
            not_judged.append((check_id, "no training steps (--steps 0)"))
        elif spec.needs_activations and no_activations:
            not_judged.append((check_id, "no activation statistics (module hooks could not run on this model)"))
        else:
            judged.append(check_id)
    return tuple(judged), tuple(not_judged)


def _run_notes(evidence: Evidence) -> tuple[str, ...]:
    run = evidence.run
    batch = {"synthetic": "a synthetic batch", "example": "the model's own example batch",
             "file": "the given batch"}.get(run.inputs, f"a {run.inputs} batch")
    notes = [f"one forward and backward pass at initialisation on {batch}"]
    if run.steps > 0:
        notes.append(
            f"short run: {run.steps} {run.optimizer} steps at lr={run.lr:g} on one fixed batch "
            "(the overfit-one-batch test), on a copy of the model"
        )
    else:
        notes.append("no training steps: pass --steps N to run the learning-rate and loss-trend checks")
    return tuple(notes)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return torch.from_numpy(value).to(device)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return value


def batch_from_objects(inputs: Any, targets: Any, device: torch.device) -> Batch:
    """A `Batch` from the Python objects an API caller passes (tensor, tuple, or dict)."""
    inputs = _to_device(inputs, device)
    if isinstance(inputs, torch.Tensor):
        args, kwargs = (inputs,), {}
    elif isinstance(inputs, (tuple, list)):
        args, kwargs = tuple(inputs), {}
    elif isinstance(inputs, dict):
        args, kwargs = (), dict(inputs)
    else:
        raise DiagnoseError(
            f"inputs must be a tensor, a tuple/list of tensors or a dict, not {type(inputs).__name__}"
        )
    targets = _to_device(targets, device) if targets is not None else None
    # Inputs a caller hands over are real data: they count as "file" inputs (not synthetic).
    return make_batch(args, kwargs, targets=targets, origin="file", synthetic=False, device=str(device))
