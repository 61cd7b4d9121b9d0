"""The batch a check runs on: from --input-shape, --inputs/--targets files, or the model's examples.

Choice, in order: --inputs FILE (origin "file"); --input-shape (origin "synthetic"); the archive's
or factory's example inputs (origin "example", or "synthetic" when resized to a larger batch); a
synthetic batch from the inputs the model declares (an export archive's shapes, a Hugging Face
config's token ids or images). With none of these: DiagnoseError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnose.config import DEFAULT_BATCH_SIZE
from diagnose.errors import DiagnoseError
from diagnose.loading.input_files import read_inputs_file, read_targets_file
from diagnose.loading.sniff import HUGGINGFACE
from diagnose.loading.synthesize import resize_like, synthesize

if TYPE_CHECKING:
    import torch

    from diagnose.evidence import InputStats  # imports probes, hence torch: only when describing

    from diagnose.loading import LoadedModel

# Example batches smaller than this give per-unit statistics (dead fraction, saturation) from too
# few samples to mean much, so a dynamic-batch export is resized to DEFAULT_BATCH_SIZE instead.
TINY_EXAMPLE_BATCH = 8
# Declared inputs with a dynamic batch are first synthesized at this size to count the forward's
# FLOPs per sample: the cheapest forward that still counts, and two samples keep a batch norm over
# (N, C) features working in training mode.
COST_PROBE_BATCH = 2

SYNTHETIC = "synthetic"
FILE = "file"
EXAMPLE = "example"


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """The inputs and optional targets of the probe run, already on the device."""

    args: tuple  # tensors on `device`
    kwargs: dict
    targets: "torch.Tensor | None"  # real targets if given, else None (the loss module synthesizes)
    origin: str  # "synthetic" | "file" | "example"
    shapes: tuple[tuple[int, ...], ...]  # one per input tensor: args first, then kwargs in order
    stats: tuple[InputStats, ...]  # one per input tensor, same order as shapes


def prepare_batch(loaded: "LoadedModel", *, input_shapes: tuple[tuple[int, ...], ...] = (),
                  inputs_path: str | None = None, targets_path: str | None = None,
                  batch_size: int | None = None, seed: int = 0, device: str = "cpu") -> Batch:
    """Build the batch for `loaded` from the input options (see the module docstring for the order).

    --batch-size replaces the first dimension of every --input-shape.
    """
    if inputs_path is not None and input_shapes:
        raise DiagnoseError("pass either --inputs or --input-shape, not both.")
    if batch_size is not None and batch_size <= 0:
        raise DiagnoseError(f"--batch-size must be positive, got {batch_size}.")
    targets = None
    if inputs_path is not None:
        content = read_inputs_file(Path(inputs_path))
        args, kwargs, targets = content.args, content.kwargs, content.targets
        args = tuple(_match_float_dtype(t, loaded.module) for t in args)
        kwargs = {k: _match_float_dtype(t, loaded.module) for k, t in kwargs.items()}
        _check_declared_shapes(loaded, args, f"--inputs {inputs_path}")
        origin, synthetic = FILE, False
    elif input_shapes:
        _refuse_shapes_for_keyword_model(loaded)
        shapes = tuple(_with_batch(tuple(s), batch_size) for s in input_shapes)
        _check_declared_shapes(loaded, shapes, "--input-shape")
        args = synthesize(shapes, loaded.input_specs, seed=seed, float_dtype=_float_dtype(loaded.module),
                          device=device)
        kwargs, origin, synthetic = {}, SYNTHETIC, True
    else:
        args, kwargs, origin = _from_model(loaded, batch_size, seed, device)
        synthetic = origin == SYNTHETIC
    if targets_path is not None:
        targets = read_targets_file(Path(targets_path))
    return make_batch(args, kwargs, targets=targets, origin=origin, synthetic=synthetic, device=device)


def make_batch(args: tuple, kwargs: dict, *, targets: "torch.Tensor | None", origin: str, synthetic: bool,
               device: str) -> Batch:
    """A Batch with everything on `device` and one InputStats per input tensor."""
    import torch

    args = tuple(_to_device(v, device) for v in args)
    kwargs = {k: _to_device(v, device) for k, v in kwargs.items()}
    targets = None if targets is None else targets.to(device)
    named = [(f"arg{i}", v) for i, v in enumerate(args)] + list(kwargs.items())
    tensors = [(name, v) for name, v in named if _is_tensor(v)]
    if not tensors:
        raise DiagnoseError("the batch has no input tensors; pass --input-shape or --inputs.")
    if any(t.numel() == 0 for _, t in tensors):
        raise DiagnoseError("an input tensor is empty (a zero-size dimension); pass a non-empty batch.")
    for name, tensor in tensors:
        # Some NaN/Inf is a finding (non-finite) worth reporting; nothing finite at all is bad data.
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).any()):
            raise DiagnoseError(
                f"input {name} has no finite value (all NaN/Inf); check the data (and how it was loaded) before diagnosing the model."
            )
    _check_targets_batch(targets, tensors[0][1])
    return Batch(args=args, kwargs=kwargs, targets=targets, origin=origin,
                 shapes=tuple(tuple(t.shape) for _, t in tensors),
                 stats=tuple(describe_input(name, t, synthetic=synthetic) for name, t in tensors))


def describe_input(name: str, tensor: "torch.Tensor", *, synthetic: bool) -> InputStats:
    """Mean/std/min/max of a float input (population std); integer inputs get no moments."""
    from diagnose.evidence import InputStats

    integer = not (tensor.is_floating_point() or tensor.is_complex())
    dtype = str(tensor.dtype).removeprefix("torch.")
    if integer:
        return InputStats(name=name, shape=tuple(tensor.shape), dtype=dtype, synthetic=synthetic, integer=True)
    data = tensor.detach().real.double() if tensor.is_complex() else tensor.detach().double()
    return InputStats(name=name, shape=tuple(tensor.shape), dtype=dtype, synthetic=synthetic, integer=False,
                      mean=float(data.mean()), std=float(data.std(correction=0)),
                      min=float(data.min()), max=float(data.max()))


def _from_model(loaded: "LoadedModel", batch_size: int | None, seed: int, device: str) -> tuple[tuple, dict, str]:
    """The model's own example inputs, resized when allowed; else shapes the export declares."""
    args, kwargs = tuple(loaded.example_args or ()), dict(loaded.example_kwargs or {})
    named = list(enumerate(args)) + list(kwargs.items())
    tensors = [(key, v) for key, v in named if _is_tensor(v)]
    if not tensors:
        declared_args, declared_kwargs = _from_declared_shapes(loaded, batch_size, seed, device)
        return declared_args, declared_kwargs, SYNTHETIC
    example_batch = tensors[0][1].shape[0] if tensors[0][1].ndim else None
    target = _resized_batch(loaded, example_batch, batch_size)
    if target is None or target == example_batch:
        return args, kwargs, EXAMPLE
    batched = [(key, v) for key, v in tensors if v.ndim and v.shape[0] == example_batch]
    fresh = dict(zip((key for key, _ in batched), resize_like(tuple(v for _, v in batched), target,
                                                              seed=seed, device=device)))
    return (tuple(fresh.get(i, v) for i, v in enumerate(args)),
            {k: fresh.get(k, v) for k, v in kwargs.items()}, SYNTHETIC)


def _resized_batch(loaded: "LoadedModel", example_batch: int | None, batch_size: int | None) -> int | None:
    """The batch size to resize the examples to, or None to keep them as they are.

    A dynamic-batch export is resized to --batch-size, or to the default when its example batch is
    tiny. A Python model (factory, module, pickle, TorchScript) is resized only on an explicit
    --batch-size: nothing declares that it accepts other batch sizes, but the user asked.
    """
    if example_batch is None:
        return None
    if loaded.format == "export" and not loaded.dynamic_batch:
        if batch_size is not None and batch_size != example_batch:
            raise DiagnoseError(f"{loaded.source} was exported with a fixed batch of {example_batch}, so "
                                f"--batch-size {batch_size} cannot apply; re-export with a dynamic batch "
                                "dimension (torch.export.Dim) or drop --batch-size.")
        return None
    if batch_size is not None:
        return batch_size
    if loaded.dynamic_batch and example_batch < TINY_EXAMPLE_BATCH:
        return _affordable_batch(loaded.module, tuple(loaded.example_args or ()), dict(loaded.example_kwargs or {}),
                                 example_batch)
    return None


def _affordable_batch(module: "torch.nn.Module", args: tuple, kwargs: dict, example_batch: int) -> int:
    """DEFAULT_BATCH_SIZE for a cheap model; fewer samples (not under TINY_EXAMPLE_BATCH) for one
    whose check would otherwise run for many minutes (diagnose/loading/cost.py)."""
    from diagnose.loading.cost import forward_flops, proportionate_batch

    flops = forward_flops(module, args, kwargs)
    per_sample = flops / example_batch if flops is not None else None
    return proportionate_batch(per_sample, smallest=TINY_EXAMPLE_BATCH, largest=DEFAULT_BATCH_SIZE)


def _from_declared_shapes(loaded: "LoadedModel", batch_size: int | None, seed: int,
                          device: str) -> tuple[tuple, dict]:
    """(args, kwargs) synthesized from the declared inputs.

    A dynamic batch dimension gets --batch-size, else DEFAULT_BATCH_SIZE, or fewer samples for a
    model whose forward is expensive, as for a grown example batch.
    """
    specs = loaded.input_specs
    declared = specs and all(s.shape is not None and None not in s.shape[1:] for s in specs)
    if not declared:
        raise DiagnoseError(f"{loaded.source} has no example inputs; pass --input-shape (e.g. "
                            "--input-shape 32,784) or --inputs FILE.")
    dynamic = any(s.shape and s.shape[0] is None for s in specs)
    batch = batch_size
    if batch is None and dynamic:
        probe_args, probe_kwargs = _synthesize_declared(loaded, COST_PROBE_BATCH, pin_batch=False, seed=seed,
                                                        device=device)
        batch = _affordable_batch(loaded.module, probe_args, probe_kwargs, COST_PROBE_BATCH)
    return _synthesize_declared(loaded, batch or DEFAULT_BATCH_SIZE, pin_batch=batch_size is not None, seed=seed,
                                device=device)


def _synthesize_declared(loaded: "LoadedModel", batch: int, *, pin_batch: bool, seed: int,
                         device: str) -> tuple[tuple, dict]:
    """One tensor per declared input, dynamic dims (and dim 0 when `pin_batch`) set to `batch`;
    keyword inputs go to kwargs under their names."""
    specs = loaded.input_specs
    shapes = tuple(tuple(batch if (d is None or i == 0 and pin_batch) else d for i, d in enumerate(s.shape))
                   for s in specs)
    tensors = synthesize(shapes, specs, seed=seed, float_dtype=_float_dtype(loaded.module), device=device)
    args = tuple(t for s, t in zip(specs, tensors) if not s.keyword)
    kwargs = {s.name: t for s, t in zip(specs, tensors) if s.keyword}
    return args, kwargs


def _refuse_shapes_for_keyword_model(loaded: "LoadedModel") -> None:
    """--input-shape gives positional tensors only; an encoder-decoder also needs its decoder's ids.

    Without this, a T5 fed --input-shape fails inside its forward with an error that sends the
    user back to --input-shape, a flag that cannot give what it needs.
    """
    config = getattr(loaded.module, "config", None)
    if getattr(config, "is_encoder_decoder", False) is not True:
        return
    drop = (" or drop --input-shape: diagnose synthesizes both from config.json" if loaded.format == HUGGINGFACE
            else " or pass the model's Hugging Face directory (save_pretrained) as MODEL")
    raise DiagnoseError(
        f"{loaded.source} is an encoder-decoder model ({type(loaded.module).__name__}) whose forward needs the "
        "keyword inputs input_ids and decoder_input_ids, which --input-shape cannot give; save them in a dict, "
        "torch.save({'input_ids': ids, 'decoder_input_ids': ids}, 'batch.pt'), and pass --inputs batch.pt,"
        f"{drop}."
    )


def _check_declared_shapes(loaded: "LoadedModel", inputs: tuple, what: str) -> None:
    """Fail early, naming the declared shape, when inputs cannot fit an export's static shapes."""
    if loaded.format != "export" or not loaded.input_specs:
        return
    shapes = [tuple(v.shape) if _is_tensor(v) else tuple(v) for v in inputs]
    specs = loaded.input_specs
    if len(shapes) != len(specs):
        raise DiagnoseError(f"{what} gives {len(shapes)} positional input(s) but {loaded.source} takes "
                            f"{len(specs)} ({', '.join(s.name for s in specs)}).")
    for shape, spec in zip(shapes, specs):
        if spec.shape is None:
            continue
        fits = len(shape) == len(spec.shape) and all(d is None or d == n for d, n in zip(spec.shape, shape))
        if not fits:
            declared = "x".join("N" if d is None else str(d) for d in spec.shape)
            any_size = " (N = any size)" if None in spec.shape else ""
            raise DiagnoseError(f"{what} gives input {spec.name} shape {'x'.join(map(str, shape))} but "
                                f"{loaded.source} was exported for {declared}{any_size}.")


def _check_targets_batch(targets: "torch.Tensor | None", first_input: "torch.Tensor") -> None:
    if targets is None or not targets.ndim or not first_input.ndim:
        return
    if targets.shape[0] != first_input.shape[0]:
        raise DiagnoseError(f"the targets have {targets.shape[0]} rows but the inputs have a batch of "
                            f"{first_input.shape[0]}; pass targets for the same samples.")


def _with_batch(shape: tuple[int, ...], batch_size: int | None) -> tuple[int, ...]:
    if not shape or any(d <= 0 for d in shape):
        raise DiagnoseError(f"--input-shape {','.join(map(str, shape))} must list positive sizes, batch first.")
    return (batch_size, *shape[1:]) if batch_size is not None else shape


def _float_dtype(module: "torch.nn.Module") -> "torch.dtype":
    """The dtype of the model's first floating parameter: synthetic floats must match it."""
    import torch

    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _match_float_dtype(value: Any, module: "torch.nn.Module") -> Any:
    # numpy saves float64 by default; a float32 model would reject it with a dtype error.
    if _is_tensor(value) and value.is_floating_point():
        return value.to(_float_dtype(module))
    return value


def _to_device(value: Any, device: str) -> Any:
    return value.to(device) if _is_tensor(value) else value


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
