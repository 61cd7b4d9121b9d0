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
    from diagnose.report import Report


def check(model: Any, inputs: Any = None, **options: Any) -> "Report":
    """Probe `model` on `inputs` and return a `Report` (the same work as `diagnose check`).

    Options: targets, loss ("auto" | "cross-entropy" | "mse" | callable), steps, optimizer, lr,
    seed, device, batch_size, select, ignore, try_fixes, thresholds.
    """
    from diagnose.api import check as _check

    return _check(model, inputs, **options)


__all__ = [
    "DiagnoseError",
    "Finding",
    "FixSuggestion",
    "Severity",
    "UnhealthyModel",
    "Verification",
    "check",
    "__version__",
]
