"""Seeded synthetic inputs: standard-normal floats, or token ids for embedding inputs.

Every draw uses a local CPU `torch.Generator` seeded from `seed` (then moved to the device), so the
same seed gives the same batch on any device and the global RNG is never touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError
from diagnose.loading.specs import InputSpec

if TYPE_CHECKING:
    import torch


def seeded_generator(seed: int) -> "torch.Generator":
    import torch

    return torch.Generator(device="cpu").manual_seed(seed)


def synthesize(shapes: tuple[tuple[int, ...], ...], specs: tuple[InputSpec, ...], *, seed: int,
               float_dtype: "torch.dtype", device: str) -> tuple["torch.Tensor", ...]:
    """One tensor per shape; the i-th follows specs[i] (token ids, dtype) when the model declared it."""
    import torch

    generator = seeded_generator(seed)
    tensors = []
    for index, shape in enumerate(shapes):
        spec = specs[index] if index < len(specs) else None
        if spec is not None and spec.vocab_size is not None:
            tensor = torch.randint(0, spec.vocab_size, shape, generator=generator, dtype=_dtype(spec.dtype))
        elif spec is not None and spec.integer:
            raise DiagnoseError(f"input {spec.name} takes {spec.dtype} values whose valid range diagnose cannot "
                                "tell; pass real inputs with --inputs FILE.")
        else:
            dtype = _dtype(spec.dtype) if spec is not None and spec.dtype else float_dtype
            tensor = torch.randn(shape, generator=generator, dtype=dtype)
        tensors.append(tensor.to(device))
    return tuple(tensors)


def resize_like(examples: tuple["torch.Tensor", ...], batch_size: int, *, seed: int,
                device: str) -> tuple["torch.Tensor", ...]:
    """Fresh tensors like `examples` with dim 0 set to `batch_size` (all examples share dim 0).

    Floats are standard normal, matching what --input-shape synthesizes. Integers are drawn
    uniformly from the example's own [min, max]: token ids or category codes stay inside the range
    the model was exported with, without guessing a vocabulary the archive may not declare.
    """
    import torch

    generator = seeded_generator(seed)
    resized = []
    for example in examples:
        shape = (batch_size, *example.shape[1:])
        if example.is_floating_point():
            tensor = torch.randn(shape, generator=generator, dtype=example.dtype)
        elif example.dtype == torch.bool:
            tensor = torch.randint(0, 2, shape, generator=generator).bool()
        else:
            low, high = int(example.min()), int(example.max())
            tensor = torch.randint(low, high + 1, shape, generator=generator, dtype=example.dtype)
        resized.append(tensor.to(device))
    return tuple(resized)


def _dtype(name: str | None) -> Any:
    import torch

    if name is None:
        return torch.int64
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise DiagnoseError(f"the model declares an input of dtype {name!r}, which this torch does not know.")
    return dtype
