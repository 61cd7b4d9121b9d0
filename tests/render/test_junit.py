"""JUnit XML: parses, one case per check that ran, failures exactly at/above --fail-on."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from diagnose.findings import Finding
from diagnose.render import render_junit
from diagnose.severity import Severity

from conftest import build_healthy_report, build_sick_report

# The sick report has one error (vanishing-gradients), one warning (saturated-activations) and
# one info (bottleneck-layer) among five checks.
EXPECTED_FAILED = {
    "error": {"vanishing-gradients"},
    "warning": {"vanishing-gradients", "saturated-activations"},
    "info": {"vanishing-gradients", "saturated-activations", "bottleneck-layer"},
    "never": set(),
}


@pytest.mark.parametrize("fail_on", sorted(EXPECTED_FAILED))
def test_failures_follow_fail_on(fail_on):
    report = build_sick_report()
    root = ET.fromstring(render_junit(report, fail_on=fail_on))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == list(report.checks_run)
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == EXPECTED_FAILED[fail_on]
    assert suite.get("tests") == str(len(report.checks_run)) == root.get("tests")
    assert suite.get("failures") == str(len(failed)) == root.get("failures")
    assert suite.get("errors") == "0"
    # findings below fail-on are still reported, in system-out
    found = {f.id for f in report.findings}
    reported_below = {c.get("name") for c in cases if c.find("system-out") is not None}
    assert reported_below == found - failed
    assert all(c.get("classname") == "diagnose.samples/deep_sigmoid.pt2" for c in cases)


def test_failure_carries_messages():
    root = ET.fromstring(render_junit(build_sick_report()))
    failure = root.find(".//testcase[@name='vanishing-gradients']/failure")
    assert failure.get("type") == "error"
    assert "gradient RMS falls" in failure.get("message")
    assert "he-init" not in failure.text and "relu" in failure.text


def test_healthy_report_has_no_failures():
    root = ET.fromstring(render_junit(build_healthy_report(), fail_on="info"))
    assert root.get("failures") == "0"
    assert root.get("tests") == "2"


def test_hostile_text_is_escaped():
    report = build_sick_report()
    nasty = Finding(id="dead-relu", severity=Severity.ERROR, title='<b> & "quotes"',
                    message='layer "a<b>&c" \x00\x1b]0; is ]]> dead', layers=("a<b>&c",))
    report = replace(report, findings=(nasty,))
    root = ET.fromstring(render_junit(report))
    failure = root.find(".//testcase[@name='dead-relu']/failure")
    assert failure is not None  # a finding for a check not in checks_run still gets a case
    assert 'layer "a<b>&c"' in failure.get("message")
    assert "]]>" in failure.text
    assert root.get("tests") == str(len(report.checks_run) + 1)


def test_verified_fixes_show_the_short_run_loss_before_and_after():
    report = build_sick_report()
    text = render_junit(report)
    assert "verified: ratio_first_last 1.5e-07 -&gt; 0.41 (resolved); short-run loss 2.302 -&gt; 1.469" in text
