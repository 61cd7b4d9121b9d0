"""diagnose: why a PyTorch network will not train, and what to change.

Importing this package does not import torch; `check` imports it when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diagnose.errors import DiagnoseError, UnhealthyModel
from diagnose.findings import Finding, FixSuggestion, Verification
from diagnose.severity import Severity
from diagnose.version import __version__

if TYPE_CHECKING:
    from diagnose.range_test import LRFindResult
    from diagnose.report import Report


def check(model: Any, inputs: Any = None, **options: Any) -> "Report":
    """Probe `model` on `inputs` and return a `Report` (the same work as `diagnose check`).

    Options: targets, loss ("auto" | "cross-entropy" | "mse" | callable), steps, optimizer, lr,
    seed, device, batch_size, select, ignore, try_fixes, thresholds.
    """
    from diagnose.api import check as _check

    return _check(model, inputs, **options)


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
