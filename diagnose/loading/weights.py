"""Read a --weights file (torch.save state dict or .safetensors) and load it strictly into a module."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError, one_line
from diagnose.loading.safety import UnsafePickle, load_tensors_only, refuse_unsafe

if TYPE_CHECKING:
    import torch

# Training checkpoints commonly wrap the state dict next to optimizer state under one of these keys.
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
# nn.DataParallel / DistributedDataParallel prefix every key with this when the wrapper is saved.
DATA_PARALLEL_PREFIX = "module."
# A mismatch message lists at most this many keys per kind: enough to see the pattern, still one line.
KEYS_SHOWN = 3
# safetensors files open with an 8-byte little-endian header length followed by a JSON header.
SAFETENSORS_HEADER_BYTES = 8


def apply_weights(module: "torch.nn.Module", path: Path, *, trust_pickle: bool, device: str) -> None:
    """Load the state dict in `path` into `module` with strict=True."""
    state_dict = read_state_dict(path, trust_pickle=trust_pickle, device=device)
    expected = set(module.state_dict())
    if expected and not (set(state_dict) & expected) and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict):
        state_dict = {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in state_dict.items()}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        raise DiagnoseError(f"{path} does not match the model's parameters ({'; '.join(parts)}); "
                            "pass the weights saved from this architecture.")
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # shapes differ although the names match
        raise DiagnoseError(f"{path} does not fit the model ({_size_mismatch(exc)}); "
                            "pass the weights saved from this architecture.") from exc


def read_state_dict(path: Path, *, trust_pickle: bool, device: str) -> dict[str, "torch.Tensor"]:
    """The name -> tensor mapping in `path`, unwrapped from a checkpoint dict when needed."""
    import torch

    if not path.is_file():
        raise DiagnoseError(f"weights file {path} does not exist; pass the path of a saved state dict.")
    loaded = _read_safetensors(path, device) if _is_safetensors(path) else _read_torch(path, trust_pickle, device)
    state_dict = _unwrap_checkpoint(loaded)
    if state_dict is None or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise DiagnoseError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors; "
                            "save it with torch.save(model.state_dict(), path).")
    return dict(state_dict)


def _read_torch(path: Path, trust_pickle: bool, device: str) -> Any:
    import torch

    try:
        return load_tensors_only(path, map_location=device)
    except UnsafePickle as exc:
        if not trust_pickle:
            raise refuse_unsafe(f"weights file {path}", trust_option=True) from exc
        unsafe = exc
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    try:  # reached only with --trust-pickle, for a checkpoint that pickles more than tensors
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise _unreadable(path, exc) from unsafe


def _unreadable(path: Path, exc: BaseException) -> DiagnoseError:
    return DiagnoseError(f"weights file {path} could not be read ({one_line(exc)}); "
                         "pass a torch.save state dict or a .safetensors file.")


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as handle:
        head = handle.read(SAFETENSORS_HEADER_BYTES + 1)
    return len(head) == SAFETENSORS_HEADER_BYTES + 1 and head[-1:] == b"{"


def _read_safetensors(path: Path, device: str) -> dict[str, "torch.Tensor"]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise DiagnoseError(f"reading {path} needs the safetensors package; "
                            "pip install safetensors, or save the weights with torch.save.") from exc
    try:
        return load_file(str(path), device=device)
    except Exception as exc:
        raise DiagnoseError(f"weights file {path} is not a valid .safetensors file ({one_line(exc)}).") from exc


def _unwrap_checkpoint(loaded: Any) -> Mapping[str, Any] | None:
    if not isinstance(loaded, Mapping):
        return None
    for key in CHECKPOINT_KEYS:
        inner = loaded.get(key)
        if isinstance(inner, Mapping):
            return inner
    return loaded


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:KEYS_SHOWN])
    return f"{shown} and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else shown


def _size_mismatch(exc: RuntimeError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
    return lines[0].rstrip(".") if lines else one_line(exc)
