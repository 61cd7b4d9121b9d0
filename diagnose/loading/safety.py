"""Load data files (weights, inputs, archive members) so that no pickled code can run."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from diagnose.errors import DiagnoseError
from diagnose.loading._messages import one_line

# torch.load(weights_only=True) raises UnpicklingError with this text when the stream names a
# Python global outside its allow-list: the file would run code, as opposed to being corrupt.
WEIGHTS_ONLY_REJECTION = "Weights only load failed"


class UnsafePickle(Exception):
    """A pickle that names Python objects beyond tensors and containers (would run code)."""


def load_tensors_only(source: Path | bytes, *, map_location: str = "cpu") -> Any:
    """torch.load with weights_only=True; UnsafePickle when the payload names code, else its error.

    `weights_only=True` passed explicitly is honoured even under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.
    """
    import torch

    stream: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return torch.load(stream, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if WEIGHTS_ONLY_REJECTION in str(exc):
            raise UnsafePickle(one_line(exc)) from exc
        raise


def refuse_unsafe(what: str, *, trust_option: bool) -> DiagnoseError:
    """The one-line error for a data file whose pickle would run code."""
    if trust_option:
        return DiagnoseError(f"{what} contains pickled Python objects, not only tensors; unpickling runs "
                             "arbitrary code. Pass --trust-pickle if you trust its source.")
    return DiagnoseError(f"{what} contains pickled Python objects, not only tensors, and is not loaded "
                         "because unpickling runs arbitrary code; save plain tensors (torch.save of a "
                         "tensor, tuple or dict of tensors) or use .npy/.npz.")
