"""Read --inputs / --targets files (.pt, .npy, .npz) without ever unpickling code."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError, one_line
from diagnose.loading.safety import UnsafePickle, load_tensors_only, refuse_unsafe

if TYPE_CHECKING:
    import torch

# Every .npy file opens with this magic string (numpy.lib.format).
NPY_MAGIC = b"\x93NUMPY"
# Keys of the structured form: {"inputs": ..., "targets": ...} in a .pt dict or an .npz archive.
INPUTS_KEY = "inputs"
TARGETS_KEY = "targets"


@dataclass(frozen=True, slots=True, kw_only=True)
class InputFile:
    args: tuple
    kwargs: dict
    targets: "torch.Tensor | None"


def read_inputs_file(path: Path) -> InputFile:
    """Inputs (and optional targets) from `path`.

    A tensor or array is one positional input; a tuple/list is several; a dict with `inputs`
    (and optionally `targets`) is the structured form; any other dict of tensors is keyword inputs.
    An .npz is structured when it has an `inputs` array, else its arrays are positional inputs in
    file order (a `targets` array is taken as targets).
    """
    content = _read(path, "--inputs")
    if isinstance(content, dict) and INPUTS_KEY in content:
        args, kwargs = _as_call(content[INPUTS_KEY], path)
        targets = content.get(TARGETS_KEY)
        if targets is not None and not _is_tensor(targets):
            raise DiagnoseError(f"--inputs {path}: 'targets' is a {type(targets).__name__}, not a tensor.")
        return InputFile(args=args, kwargs=kwargs, targets=targets)
    if isinstance(content, _NpzArrays):
        arrays = dict(content.arrays)
        targets = arrays.pop(TARGETS_KEY, None)
        return InputFile(args=tuple(arrays.values()), kwargs={}, targets=targets)
    args, kwargs = _as_call(content, path)
    return InputFile(args=args, kwargs=kwargs, targets=None)


def read_targets_file(path: Path) -> "torch.Tensor":
    """One tensor of targets: a tensor/array, or the `targets` entry of a dict or .npz."""
    content = _read(path, "--targets")
    if isinstance(content, _NpzArrays):
        arrays = content.arrays
        content = arrays.get(TARGETS_KEY) if TARGETS_KEY in arrays or len(arrays) != 1 else next(iter(arrays.values()))
    elif isinstance(content, dict):
        content = content.get(TARGETS_KEY)
    if not _is_tensor(content):
        raise DiagnoseError(f"--targets {path} holds no targets tensor; save one tensor (or a dict/.npz with a "
                            "'targets' entry).")
    return content


@dataclass(frozen=True, slots=True)
class _NpzArrays:
    arrays: dict[str, "torch.Tensor"]


def _read(path: Path, option: str) -> Any:
    if not path.is_file():
        raise DiagnoseError(f"{option} file {path} does not exist.")
    with path.open("rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if head.startswith(NPY_MAGIC):
        return _read_npy(path, option)
    if zipfile.is_zipfile(path) and _is_npz(path):
        return _read_npz(path, option)
    return _read_torch(path, option)


def _read_torch(path: Path, option: str) -> Any:
    try:
        return load_tensors_only(path)
    except UnsafePickle as exc:
        raise refuse_unsafe(f"{option} file {path}", trust_option=False) from exc
    except Exception as exc:
        raise DiagnoseError(f"{option} file {path} is not a .pt, .npy or .npz file ({one_line(exc)}); "
                            "save tensors with torch.save or numpy.save.") from exc


def _is_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def _read_npy(path: Path, option: str) -> "torch.Tensor":
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)  # object arrays are pickles: refused here
    except ValueError as exc:
        raise _npy_error(path, option, exc) from exc
    except Exception as exc:
        raise DiagnoseError(f"{option} file {path} is a corrupt .npy file ({one_line(exc)}).") from exc
    return _to_tensor(array, path, option)


def _read_npz(path: Path, option: str) -> _NpzArrays:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        raise _npy_error(path, option, exc) from exc
    except Exception as exc:
        raise DiagnoseError(f"{option} file {path} is a corrupt .npz file ({one_line(exc)}).") from exc
    return _NpzArrays({name: _to_tensor(array, path, option) for name, array in arrays.items()})


def _npy_error(path: Path, option: str, exc: ValueError) -> DiagnoseError:
    if "allow_pickle" in str(exc):
        return DiagnoseError(f"{option} file {path} holds an object array, which is a pickle and is not loaded "
                             "(unpickling runs arbitrary code); save numeric arrays.")
    return DiagnoseError(f"{option} file {path} is not a readable numpy file ({one_line(exc)}).")


def _to_tensor(array: Any, path: Path, option: str) -> "torch.Tensor":
    import torch

    try:
        return torch.from_numpy(array.copy())  # a copy: the array may be a read-only view of the file
    except TypeError as exc:
        raise DiagnoseError(f"{option} file {path} holds a {array.dtype} array, which torch cannot use; "
                            "save numeric (float, int or bool) arrays.") from exc


def _as_call(value: Any, path: Path) -> tuple[tuple, dict]:
    """Positional and keyword inputs from a tensor, a sequence of tensors, or a dict of tensors."""
    if _is_tensor(value):
        return (value,), {}
    if isinstance(value, (tuple, list)) and value and all(_is_tensor(v) for v in value):
        return tuple(value), {}
    if isinstance(value, dict) and value and all(isinstance(k, str) and _is_tensor(v) for k, v in value.items()):
        return (), dict(value)
    raise DiagnoseError(f"--inputs {path} holds a {type(value).__name__} that is not a tensor, a tuple of tensors "
                        "or a dict of tensors; save the model's inputs in one of those forms.")


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
