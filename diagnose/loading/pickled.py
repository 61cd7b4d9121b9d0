"""Load a torch.save file passed as MODEL: a whole pickled module (trusted only) or a state dict."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError, one_line
from diagnose.loading.safety import UnsafePickle, load_tensors_only

if TYPE_CHECKING:
    import torch


def load_pickled_module(path: Path, *, trust_pickle: bool, device: str) -> "torch.nn.Module":
    """The nn.Module inside `path`; without trust_pickle only a weights-only look is taken."""
    import torch

    if trust_pickle:
        try:
            loaded = torch.load(path, map_location=device, weights_only=False)
        except (ModuleNotFoundError, AttributeError) as exc:
            raise DiagnoseError(f"{path} needs the code that defined its classes ({one_line(exc)}); "
                                "make that module importable, or pass a factory like pkg.module:build.") from exc
        except Exception as exc:
            raise DiagnoseError(f"{path} could not be unpickled ({one_line(exc)}); "
                                "the file may be corrupt.") from exc
    else:
        try:
            loaded = load_tensors_only(path, map_location=device)
        except UnsafePickle as exc:
            raise DiagnoseError(f"{path} is a pickled module; unpickling runs arbitrary code. "
                                "Pass --trust-pickle if you trust its source.") from exc
        except Exception as exc:
            raise DiagnoseError(f"{path} could not be read as a torch.save file ({one_line(exc)}); "
                                "it may be truncated or corrupt.") from exc
    if isinstance(loaded, torch.nn.Module):
        return loaded
    raise _not_a_model(path, loaded)


def _not_a_model(path: Path, loaded: Any) -> DiagnoseError:
    if isinstance(loaded, dict):
        return DiagnoseError(f"{path} holds a state dict (weights only), not a model; pass the factory that "
                             f"builds the model with the weights: diagnose check pkg.module:build --weights {path}")
    return DiagnoseError(f"{path} holds a {type(loaded).__name__}, not an nn.Module; save the model with "
                         "torch.export.save, or pass a factory like pkg.module:build.")
