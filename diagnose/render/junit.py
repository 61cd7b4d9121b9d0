"""JUnit XML: one test case per check that ran, failed where it found something at/above fail-on.

CI systems (GitHub, GitLab, Jenkins) show these as test results. Findings below fail-on do not
fail the case; their messages go to the case's `<system-out>` so they are still visible.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from diagnose.findings import Finding
from diagnose.render import _format as fmt
from diagnose.report import Report
from diagnose.severity import fails

SUITE_NAME = "diagnose"
# XML 1.0 forbids most control characters even when escaped; a layer name or an exception
# message can contain them, and one would make the whole file unparsable.
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def render_junit(report: Report, *, fail_on: str = "error") -> str:
    source = report.evidence.model.source or "model"
    classname = f"{SUITE_NAME}.{source}"
    check_ids = _case_ids(report)
    by_check: dict[str, list[Finding]] = {check_id: [] for check_id in check_ids}
    for finding in report.findings:
        by_check[finding.id].append(finding)

    suite = ET.Element("testsuite", name=SUITE_NAME)
    failures = 0
    for check_id in check_ids:
        case = ET.SubElement(suite, "testcase", classname=_clean(classname), name=_clean(check_id))
        failing = [f for f in by_check[check_id] if fails(f.severity, fail_on)]
        passing = [f for f in by_check[check_id] if not fails(f.severity, fail_on)]
        if failing:
            failures += 1
            worst = max(failing, key=lambda f: f.severity)
            failure = ET.SubElement(
                case,
                "failure",
                message=_clean("; ".join(f.message for f in failing)),
                type=worst.severity.value,
            )
            failure.text = _clean("\n\n".join(_finding_text(f) for f in failing))
        if passing:
            out = ET.SubElement(case, "system-out")
            out.text = _clean("\n\n".join(_finding_text(f) for f in passing))

    suite.set("tests", str(len(check_ids)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    suite.set("time", f"{report.elapsed_s:.3f}" if report.elapsed_s is not None else "0")
    root = ET.Element("testsuites", name=SUITE_NAME)
    for key in ("tests", "failures", "errors", "skipped", "time"):
        root.set(key, suite.get(key, "0"))
    root.append(suite)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def _case_ids(report: Report) -> list[str]:
    """The checks that ran, in order, then any finding id they do not list (never drop a finding)."""
    ids = list(dict.fromkeys(report.checks_run))
    for finding in report.findings:
        if finding.id not in ids:
            ids.append(finding.id)
    return ids


def _finding_text(finding: Finding) -> str:
    lines = [f"[{finding.severity.value}] {finding.title}: {finding.message}"]
    if finding.layers:
        lines.append(f"layers: {fmt.layer_list(finding.layers)}")
    if finding.evidence:
        lines.append(f"evidence: {fmt.evidence_items(finding.evidence)}")
    for rank, fix in enumerate(finding.fixes, start=1):
        lines.append(f"fix {rank}: {fix.id}: {fix.title}")
        if fix.verified is not None:
            loss = fmt.loss_change(fix.verified)
            lines.append(f"  {fmt.verification_label(fix.verified)}: {fmt.verification(fix.verified)}"
                         + (f"; {loss}" if loss else ""))
    return "\n".join(lines)


def _clean(text: str) -> str:
    return _INVALID_XML_CHARS.sub("\ufffd", text)
