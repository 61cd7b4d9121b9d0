"""Find the prediction tensor (and a loss the model computed itself) in whatever forward returned."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError

if TYPE_CHECKING:
    import torch

# Hugging Face and most custom heads name the pre-softmax scores this way.
PREDICTION_KEY = "logits"
# ...and the loss they computed from labels passed in the inputs.
LOSS_KEY = "loss"


def extract_output(output: Any) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """(prediction, loss the model computed or None) from a tensor, sequence, mapping or dataclass.

    Mappings and dataclasses (Hugging Face ModelOutput is both) give `logits` when present, else
    their first tensor that is not the `loss`; sequences give their first tensor, searched depth-first.
    """
    prediction = _find_prediction(output)
    if prediction is None:
        raise DiagnoseError(f"the model's forward returned a {type(output).__name__} with no tensor in it; "
                            "return the prediction tensor (or a tuple/dict containing it).")
    return prediction, _model_loss(output)


def _find_prediction(value: Any) -> "torch.Tensor | None":
    import torch

    if isinstance(value, torch.Tensor):
        return value
    fields = _named_fields(value)
    if fields is not None:
        if isinstance(fields.get(PREDICTION_KEY), torch.Tensor):
            return fields[PREDICTION_KEY]
        candidates = [v for k, v in fields.items() if k != LOSS_KEY]
    elif isinstance(value, (tuple, list)):
        candidates = list(value)
    else:
        return None
    for candidate in candidates:
        found = _find_prediction(candidate)
        if found is not None:
            return found
    return None


def _model_loss(output: Any) -> "torch.Tensor | None":
    import torch

    fields = _named_fields(output)
    if fields is None:
        return None
    loss = fields.get(LOSS_KEY)
    # Only a scalar is a loss to train on; a per-sample vector is left for the user's own loss.
    return loss if isinstance(loss, torch.Tensor) and loss.ndim == 0 else None


def _named_fields(value: Any) -> dict[str, Any] | None:
    """Name -> value for a mapping or a dataclass instance (ModelOutput: its set keys), else None."""
    if isinstance(value, Mapping):
        return dict(value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None
