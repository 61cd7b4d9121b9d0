"""Findings -> the same findings with their fixes, ordered best first for this model.

Generic: each check's own module says which fixes apply and in what order for the evidence at hand
(`advise`, over the `AdviceContext` built here once per report), and which errors make its
finding a mere symptom (`ROOT_CAUSES`; or any check whose module `STOPS_LEARNING`). This module turns those choices into suggestions whose
snippet names the user's own layers and whose rationale says why the fix applies here, then why it
works in general. A pure function of the findings and the evidence; no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from diagnose.checks import AdviceContext, Choice, get, root_cause, root_causes_of
from diagnose.findings import Finding, FixSuggestion
from diagnose.fixes import FIXES

if TYPE_CHECKING:
    from diagnose.evidence import Evidence


def recommend(findings: Iterable[Finding], evidence: Evidence) -> list[Finding]:
    """Attach ordered `FixSuggestion`s to each finding (findings keep their order)."""
    findings = list(findings)
    context = AdviceContext.of(evidence)
    result = []
    for finding in findings:
        spec = get(finding.id)
        choices = _deduplicate(spec.advise(finding, context))
        root = root_cause(findings, root_causes_of(spec))
        if root is not None:
            finding = replace(
                finding,
                message=f"{finding.message}; probably a consequence of {root.id}: fix that first",
                evidence={**finding.evidence, "likely_cause": root.id},
            )
        result.append(finding.with_fixes(tuple(_suggestion(c) for c in choices)))
    return result


def _suggestion(choice: Choice) -> FixSuggestion:
    fix = FIXES[choice.fix_id]
    rationale = f"{choice.reason} {fix.rationale}" if choice.reason else fix.rationale
    return FixSuggestion(id=fix.id, title=fix.title, rationale=rationale, snippet=fix.snippet(choice.target))


def _deduplicate(choices: Sequence[Choice]) -> list[Choice]:
    seen, kept = set(), []
    for choice in choices:
        if choice.fix_id not in seen:
            seen.add(choice.fix_id)
            kept.append(choice)
    return kept
