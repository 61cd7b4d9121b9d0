"""diagnose: why a PyTorch network will not train, and what to change.

Importing this package does not import torch; `check` imports it when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diagnose.config import OPTIONS
from diagnose.errors import DiagnoseError, UnhealthyModel
from diagnose.findings import Finding, FixSuggestion, Verification
from diagnose.options import keyword_signature
from diagnose.severity import Severity
from diagnose.version import __version__

if TYPE_CHECKING:
    from diagnose.range_test import LRFindResult
    from diagnose.report import Report


def check(model: Any, inputs: Any = None, *, targets: Any = None, **options: Any) -> Report:
    """Probe `model` on `inputs` and return a `Report` (the same work as `diagnose check`).

    The options are the keywords of this signature, each declared once with its command-line flag
    in `diagnose.config.Settings`; `loss` is "auto", "cross-entropy", "mse", MODULE:FN or a function.
    """
    from diagnose.api import check as _check

    return _check(model, inputs, targets=targets, **options)


check.__signature__ = keyword_signature(check, OPTIONS)  # type: ignore[attr-defined]


def lr_find(model: Any, inputs: Any = None, **options: Any) -> "LRFindResult":
    """The learning-rate range test on a copy of `model`, verified by short runs (`diagnose lr-find`).

    Options: targets, loss, optimizer, lr (the current rate, verified as the baseline), seed, device,
    batch_size, input_shapes, min_lr, max_lr, steps (the sweep's), verify_steps. The result's
    `verified.lr` is the best rate the short runs found; `to_dict()` is the command's JSON.
    """
    from diagnose.range_test import lr_find as _lr_find

    return _lr_find(model, inputs, **options)


__all__ = [
    "DiagnoseError",
    "Finding",
    "FixSuggestion",
    "Severity",
    "UnhealthyModel",
    "Verification",
    "check",
    "lr_find",
    "__version__",
]
