"""Load data files (weights, inputs, archive members) so that no pickled code can run."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from diagnose.errors import DiagnoseError, one_line

# torch.load(weights_only=True) raises UnpicklingError with this text for every stream it rejects...
WEIGHTS_ONLY_REJECTION = "Weights only load failed"
# ...and names the reason after this marker: a GLOBAL outside its allow-list means the file would
# import and call Python objects (run code); other reasons (unknown opcodes) mean garbage bytes.
REJECTION_REASON = "WeightsUnpickler error:"
UNSAFE_GLOBAL = "Unsupported global"


class UnsafePickle(Exception):
    """A pickle that names Python objects beyond tensors and containers (would run code)."""


class NotTensorData(Exception):
    """Bytes the weights-only unpickler rejects for a reason other than a forbidden global."""


def load_tensors_only(source: Path | bytes, *, map_location: str = "cpu") -> Any:
    """torch.load with weights_only=True; UnsafePickle when the payload names code, else its error.

    `weights_only=True` passed explicitly is honoured even under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.
    """
    import torch

    stream: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return torch.load(stream, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if WEIGHTS_ONLY_REJECTION not in text:
            raise
        reason = _rejection_reason(text)
        if reason.startswith(UNSAFE_GLOBAL):
            raise UnsafePickle(reason) from exc
        raise NotTensorData(reason) from exc


def _rejection_reason(text: str) -> str:
    """The one line of torch's multi-paragraph rejection that says what was wrong."""
    _, _, after = text.partition(REJECTION_REASON)
    lines = [line.strip() for line in after.splitlines() if line.strip()]
    return lines[0] if lines else one_line(Exception(text))


def refuse_unsafe(what: str, *, trust_option: bool) -> DiagnoseError:
    """The one-line error for a data file whose pickle would run code."""
    if trust_option:
        return DiagnoseError(f"{what} contains pickled Python objects, not only tensors; unpickling runs "
                             "arbitrary code. Pass --trust-pickle if you trust its source.")
    return DiagnoseError(f"{what} contains pickled Python objects, not only tensors, and is not loaded "
                         "because unpickling runs arbitrary code; save plain tensors (torch.save of a "
                         "tensor, tuple or dict of tensors) or use .npy/.npz.")
