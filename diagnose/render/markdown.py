"""The Markdown report, for a CI step summary or a PR comment (GitHub-flavoured tables, <details>)."""

from __future__ import annotations

import re

from diagnose.findings import Finding, FixSuggestion
from diagnose.render import _format as fmt
from diagnose.report import Report
from diagnose.severity import Severity

_SEVERITY_ORDER = (Severity.ERROR, Severity.WARNING, Severity.INFO)
_STATUS_BADGE = {"error": "FAILING", "warning": "WARNINGS", "healthy": "HEALTHY"}


def render_markdown(report: Report) -> str:
    lines: list[str] = []
    ev = report.evidence
    status = report.status
    lines.append(f"## diagnose: `{_code(ev.model.source or '<model>')}` **{_STATUS_BADGE.get(status, status.upper())}**")
    lines.append("")
    counts = fmt.summary_counts(report.errors, report.warnings, report.infos)
    checks = f", {len(report.checks_run)} checks ran" if report.checks_run else ""
    lines.append(f"Status: **{status}** ({counts}{checks}).")
    lines.append("")
    lines.append(
        f"Model: {ev.model.format}, {fmt.number(ev.model.parameters)} parameters, "
        f"{ev.model.layers} probed layers. "
        f"Inputs: {_escape(ev.run.inputs)} {_escape(fmt.shapes(ev.run.input_shapes))}. "
        f"Loss: {_escape(fmt.loss_description(ev))}. "
        f"Run: {_escape(fmt.run_description(ev))} on {_escape(ev.run.device)}, seed {ev.run.seed}."
    )
    for limitation in ev.model.limitations:
        lines.append("")
        lines.append(f"> Limitation: {_escape(limitation)}")
    for note in report.notes:
        lines.append("")
        lines.append(f"> Note: {_escape(note)}")
    for check_id, reason in report.checks_not_judged:
        lines.append("")
        lines.append(f"> Not judged: `{check_id}` had nothing to judge: {_escape(reason)}")
    lines.append("")

    findings = sorted(report.findings, key=lambda f: _SEVERITY_ORDER.index(f.severity))
    if findings:
        lines += ["### Findings", "", "| Severity | Check | Layers | Message |", "| --- | --- | --- | --- |"]
        for finding in findings:
            lines.append(
                f"| {finding.severity.value} | `{finding.id}` | {_cell(fmt.layer_list(finding.layers))} "
                f"| {_cell(finding.message)} |"
            )
        lines.append("")
        if any(f.fixes for f in findings):
            lines += ["### Fixes", ""]
            for finding in findings:
                lines += _fixes(finding)
    else:
        lines += ["No findings.", ""]

    lines += _layer_details(report)
    return "\n".join(lines).rstrip("\n") + "\n"


def _fixes(finding: Finding) -> list[str]:
    if not finding.fixes:
        return []
    lines = [f"#### `{finding.id}`: {_escape(finding.title)}", ""]
    for rank, fix in enumerate(finding.fixes, start=1):
        lines += _fix(rank, fix)
    return lines


def _fix(rank: int, fix: FixSuggestion) -> list[str]:
    lines = [f"{rank}. **{_escape(fix.title)}** (`{fix.id}`)"]
    if fix.rationale:
        lines.append(f"   {_escape(fix.rationale)}")
    if fix.verified is not None:
        label = fmt.verification_label(fix.verified).capitalize()
        loss = fmt.loss_change(fix.verified)
        lines.append(f"   {label}: {_escape(fmt.verification(fix.verified))}" + (f"; {_escape(loss)}." if loss else "."))
    elif fix.not_verified:
        lines.append(f"   Not tried: {_escape(fix.not_verified)}.")
    lines.append("")
    if fix.snippet:
        fence = _fence_for(fix.snippet)
        lines.append(f"   {fence}python")
        lines += [f"   {line}" if line else "" for line in fix.snippet.splitlines()]
        lines.append(f"   {fence}")
        lines.append("")
    return lines


def _layer_details(report: Report) -> list[str]:
    ev = report.evidence
    if not ev.layers:
        return []
    show_updates = fmt.had_run(ev)
    ratios = fmt.update_ratios(ev)
    header = ["#", "layer", "type", "act std", "dead", "sat", "grad rms", "weight std / expected"]
    if show_updates:
        header.append("update")
    lines = [
        "<details>",
        f"<summary>Per-layer statistics ({len(ev.layers)} layers)</summary>",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---:" if h in ("#", "act std", "dead", "sat", "grad rms", "update") else "---" for h in header) + " |",
    ]
    for record in ev.layers:
        act = record.activation
        row = [
            str(record.index),
            f"`{_code(record.name, in_table=True)}`",
            _cell(record.type),
            fmt.number(act.std),
            fmt.percent(act.dead_fraction),
            fmt.percent(act.saturated_fraction),
            fmt.number(fmt.gradient_rms(record)),
            _cell(fmt.weight_scale(record)),
        ]
        if show_updates:
            row.append(fmt.number(ratios.get(record.name)))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "</details>", ""]
    return lines


def _escape(text: str) -> str:
    """Neutralise Markdown and HTML in text from the model (layer names, messages, paths).

    `<` is enough to stop HTML (a stray `<details>` would swallow the rest of a PR comment).
    """
    text = text.replace("<", "&lt;")
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text)


def _cell(text: str) -> str:
    """Text safe inside one table cell: escaped, and on one line."""
    return _escape(" ".join(text.split()))


def _code(text: str, *, in_table: bool = False) -> str:
    """Text for inside single backticks: a backtick cannot be escaped there, so it is replaced.

    In a table cell a `|` must still be escaped, even inside a code span (GFM splits cells first).
    """
    text = " ".join(text.replace("`", "'").split())
    return text.replace("|", "\\|") if in_table else text


def _fence_for(snippet: str) -> str:
    """A code fence longer than any run of backticks in the snippet, so the snippet cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", snippet)), default=0)
    return "`" * max(3, longest + 1)
