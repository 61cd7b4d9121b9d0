"""Findings and the fixes attached to them: the plain data that checks produce and reports render."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from diagnose.severity import Severity


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """Before/after of the measure that triggered a finding, when a fix was tried on a copy.

    `resolved` is true only when the check no longer fires on the fixed copy and the copy's
    short-run loss (`loss_after`) is not clearly worse than the unchanged copy's (`loss_before`);
    `loss_worse` says the second condition failed (diagnose/verify.py defines "clearly worse").
    """

    metric: str
    before: float | None
    after: float | None
    resolved: bool
    note: str | None = None
    loss_before: float | None = None  # the unchanged copy's loss at the end of the short run
    loss_after: float | None = None  # the fixed copy's, on the same batch, seed and steps
    loss_worse: bool = False

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "resolved": self.resolved,
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "loss_worse": self.loss_worse,
        }
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class FixSuggestion:
    """One recommended fix for one finding, with a snippet naming the user's own layers."""

    id: str
    title: str
    rationale: str
    snippet: str
    verified: Verification | None = None
    # Why --try-fixes left this fix untried (it cannot be applied to a copy automatically).
    not_verified: str | None = None

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "id": self.id,
            "title": self.title,
            "rationale": self.rationale,
            "snippet": self.snippet,
            "verified": self.verified.to_dict() if self.verified else None,
        }
        if self.not_verified:
            data["not_verified"] = self.not_verified
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    id: str
    severity: Severity
    title: str
    message: str
    layers: tuple[str, ...] = ()
    evidence: Mapping[str, float | int | str | None] = field(default_factory=dict)
    fixes: tuple[FixSuggestion, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "severity": self.severity.value,
            "title": self.title,
            "message": self.message,
            "layers": list(self.layers),
            "evidence": dict(self.evidence),
            "fixes": [fix.to_dict() for fix in self.fixes],
        }

    def with_fixes(self, fixes: tuple[FixSuggestion, ...]) -> "Finding":
        return replace(self, fixes=fixes)
