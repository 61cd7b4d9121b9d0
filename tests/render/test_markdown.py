"""Markdown: table structure survives hostile names, snippets are fenced, details block present."""

from __future__ import annotations

import re
from dataclasses import replace

from diagnose.findings import Finding, FixSuggestion
from diagnose.render import render_markdown
from diagnose.severity import Severity

from conftest import build_healthy_report, build_sick_report


def _table_rows(markdown: str, header_start: str) -> list[str]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _cells(row: str) -> int:
    # a cell boundary is a pipe not escaped with a backslash
    count = 0
    escaped = False
    for ch in row:
        if ch == "|" and not escaped:
            count += 1
        escaped = ch == "\\" and not escaped
    return count - 1


def test_findings_table_and_details(sick_report):
    text = render_markdown(sick_report)
    assert "**FAILING**" in text
    rows = _table_rows(text, "| Severity")
    assert len(rows) == 2 + len(sick_report.findings)
    assert rows[2].startswith("| error | `vanishing-gradients`")  # errors first
    assert "<details>" in text and "</details>" in text
    assert text.count("```python") == 3


def test_pipes_and_html_in_names_do_not_break_tables():
    report = build_sick_report()
    ev = report.evidence
    layer = replace(ev.layers[0], name="blocks|0<script>")
    report = replace(report, evidence=replace(ev, layers=(layer, *ev.layers[1:])),
                     findings=(Finding(id="dead-relu", severity=Severity.ERROR, title="t",
                                       message="units in blocks|0<script> never fire", layers=("blocks|0<script>",)),))
    text = render_markdown(report)
    # raw HTML is neutralised outside code spans; inside them Markdown shows it literally
    assert "<script>" not in re.sub(r"`[^`]*`", "", text)
    for header in ("| Severity", "| #"):
        rows = _table_rows(text, header)
        assert len({_cells(r) for r in rows}) == 1, rows


def test_snippet_with_backticks_keeps_its_fence():
    report = build_sick_report()
    fix = FixSuggestion(id="he-init", title="He", rationale="r", snippet='x = """\n```\n"""')
    finding = Finding(id="dead-relu", severity=Severity.ERROR, title="t", message="m", fixes=(fix,))
    text = render_markdown(replace(report, findings=(finding,)))
    assert "````python" in text and text.count("````") == 2


def test_healthy_report():
    text = render_markdown(build_healthy_report())
    assert "**HEALTHY**" in text and "No findings." in text
    assert "| update" not in text  # no short run, no update column


def test_a_fix_that_makes_training_worse_says_so_with_both_losses(sick_report):
    finding = sick_report.findings[2]
    fix = finding.fixes[0]
    worse = replace(fix.verified, resolved=False, loss_before=0.0045, loss_after=4.14, loss_worse=True)
    report = replace(sick_report, findings=(*sick_report.findings[:2], finding.with_fixes((replace(fix, verified=worse),))))
    text = render_markdown(report)
    assert "Tried: ratio\\_first\\_last 1.5e-07 -> 0.41 (not resolved: training got worse); short-run loss 4.5e-03 -> 4.14." in text
