"""What every check module shares: its table entry, and the threshold lookup."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

from diagnose.severity import Severity


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One line of the checks table: the id, the module that implements it, its default severity."""

    id: str
    module: ModuleType
    severity: Severity
    summary: str
    needs_run: bool = False  # judges the short training run: nothing to judge with --steps 0
    # judges activation statistics: nothing to judge where the forward hooks could not run (TorchScript)
    needs_activations: bool = False

    @property
    def thresholds(self) -> Mapping[str, float]:
        """The check's named thresholds and their defaults (what `[tool.diagnose.thresholds.<id>]` may override)."""
        return dict(getattr(self.module, "THRESHOLDS", {}))

    @property
    def doc(self) -> str:
        return self.module.__doc__ or ""
