"""docs/checks and docs/fixes are generated from the docstrings; they must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from diagnose import explain
from diagnose.checks import CHECKS
from diagnose.errors import DiagnoseError
from diagnose.fixes import FIXES

ROOT = Path(__file__).resolve().parent.parent
CHECK_SECTIONS = ("## What it detects", "## Why it matters", "## How it is detected", "## Example",
                  "## Fixes", "## Options", "## References")
FIX_SECTIONS = ("## What it does", "## Why it works", "## When not to use", "## Example")


def test_generated_docs_match_the_docstrings():
    stale = [
        str(path.relative_to(ROOT)) for path, text in explain.expected_docs(ROOT).items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert stale == [], "run `python -m diagnose.explain --write-docs` to regenerate: " + ", ".join(stale)


def test_no_page_for_a_retired_id():
    expected = set(explain.expected_docs(ROOT))
    pages = set((ROOT / "docs" / "checks").glob("*.md")) | set((ROOT / "docs" / "fixes").glob("*.md"))
    assert pages <= expected


@pytest.mark.parametrize("spec", CHECKS, ids=lambda s: s.id)
def test_check_docs_follow_the_anatomy(spec):
    text = explain.render(spec.id)
    assert text.startswith("# ") and f"(`{spec.id}`)" in text.splitlines()[0]
    positions = [text.index(section) for section in CHECK_SECTIONS]
    assert positions == sorted(positions)
    for name in spec.thresholds:  # every threshold is documented with its default
        assert f"`{name}`" in text
    # every check says what its severities mean for training (issue 12: severity from the effect)
    assert "\nSeverity" in text, f"{spec.id}: no 'Severity' paragraph"


@pytest.mark.parametrize("fix_id", list(FIXES))
def test_fix_docs_follow_the_anatomy(fix_id):
    text = explain.render(fix_id)
    assert f"(`{fix_id}`)" in text.splitlines()[0]
    positions = [text.index(section) for section in FIX_SECTIONS]
    assert positions == sorted(positions)


def test_unknown_id_lists_the_valid_ones():
    with pytest.raises(DiagnoseError, match="he-init"):
        explain.render("he-int")
    assert set(explain.all_ids()) == {s.id for s in CHECKS} | set(FIXES)


def test_write_docs_into_a_fresh_tree(tmp_path):
    (tmp_path / "docs" / "checks").mkdir(parents=True)
    (tmp_path / "docs" / "checks" / "retired-check.md").write_text("old")
    written = explain.write_docs(tmp_path)
    assert len(written) == len(CHECKS) + len(FIXES)
    assert not (tmp_path / "docs" / "checks" / "retired-check.md").exists()
