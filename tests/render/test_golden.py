"""Each renderer's output for the hand-made reports, compared with tests/golden/ (--update-golden)."""

from __future__ import annotations

from diagnose.render import render_json, render_junit, render_markdown, render_terminal


def test_terminal_golden(sick_report, golden):
    golden("terminal_sick.txt", render_terminal(sick_report, width=120))


def test_terminal_80_columns_golden(sick_report, golden):
    golden("terminal_sick_80.txt", render_terminal(sick_report, width=80))


def test_terminal_ascii_golden(sick_report, golden):
    golden("terminal_sick_ascii.txt", render_terminal(sick_report, width=120, ascii_only=True))


def test_terminal_healthy_golden(healthy_report, golden):
    golden("terminal_healthy.txt", render_terminal(healthy_report, width=120))


def test_json_golden(sick_report, golden):
    golden("report_sick.json", render_json(sick_report))


def test_markdown_golden(sick_report, golden):
    golden("report_sick.md", render_markdown(sick_report))


def test_junit_golden(sick_report, golden):
    golden("report_sick_fail_on_warning.xml", render_junit(sick_report, fail_on="warning"))
