"""What every check module shares: its table entry, and the measure a fix is verified by."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.checks._advice import AdviceContext, Choice
    from diagnose.evidence import Evidence
    from diagnose.findings import Finding


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

    @property
    def fixes(self) -> tuple[str, ...]:
        """The fix ids the check may recommend (its module's `FIXES`), in no particular order."""
        return tuple(getattr(self.module, "FIXES", ()))

    @property
    def no_fix(self) -> str | None:
        """Why no catalog fix applies to this check's findings (its module's `NO_FIX`), if so."""
        return getattr(self.module, "NO_FIX", None)

    def advise(self, finding: Finding, context: AdviceContext) -> list[Choice]:
        """The module's `advise`: the fixes for this finding, best first; none for a `NO_FIX` check."""
        if self.no_fix is not None:
            return []
        choices = self.module.advise(finding, context)
        stray = [c.fix_id for c in choices if c.fix_id not in self.fixes]
        if stray:  # FIXES is what the docs list: a fix the module does not declare would drift from them
            raise RuntimeError(f"check {self.id} advised {', '.join(stray)}, not in its FIXES")
        return choices

    def metric(self, finding: Finding, evidence: Evidence) -> Measure:
        """The module's `metric`: the measure a fix for this finding is verified by, on `evidence`."""
        return self.module.metric(finding, evidence)

    def missing(self) -> list[str]:
        """What the module lacks to be a complete check (empty when complete): advice and a metric,
        or an explicit `NO_FIX` reason."""
        module = self.module
        wanted = ["check", "THRESHOLDS"]
        if self.no_fix is None:
            wanted += ["FIXES", "advise", "metric"]
        return [name for name in wanted if not hasattr(module, name)]


# How far a measure is from healthy (`Measure.badness`), by the kind of number it is:
DECADES = "decades"  # a ratio healthy at `healthy` (1 unless said), off by orders of magnitude either way
DECADES_ABOVE = "decades above"  # healthy at or below `healthy`, off by orders of magnitude above it
LOWER_IS_BETTER = "lower is better"  # a share, a count, a gap or a loss ratio: 0 is best


@dataclass(frozen=True, slots=True)
class Measure:
    """The number behind a finding, on one model: what `--try-fixes` compares before and after.

    Each check computes its own (`metric(finding, evidence)` in its module) with the code that
    judged it, so before/after read like the finding's evidence, under the same `name`.
    """

    name: str
    value: float | None
    scale: str = LOWER_IS_BETTER
    healthy: float = 1.0

    def badness(self) -> float | None:
        """How far the value is from healthy on the measure's scale (0 healthy; None unknown)."""
        value = self.value
        if value is None:
            return None
        if math.isnan(value):
            return math.inf
        if self.scale == DECADES:
            return abs(math.log10(value / self.healthy)) if value > 0 else math.inf
        if self.scale == DECADES_ABOVE:
            return math.log10(max(value / self.healthy, 1.0))
        return value
