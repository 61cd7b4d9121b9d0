"""`diagnose explain ID`: the Markdown documentation of a check or a fix, from its docstring.

The same text is written to `docs/checks/<id>.md` and `docs/fixes/<id>.md` by
`python -m diagnose.explain --write-docs`; `tests/test_docs_in_sync.py` fails when they drift.
No torch is imported here.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from diagnose.checks import CHECKS, CheckSpec
from diagnose.errors import DiagnoseError
from diagnose.fixes import FIXES, Fix

_CHECKS = {spec.id: spec for spec in CHECKS}


def all_ids() -> tuple[str, ...]:
    """Every check id, then every fix id."""
    return tuple(_CHECKS) + tuple(FIXES)


def render(item_id: str) -> str:
    """Markdown for one check or fix id; DiagnoseError (listing the valid ids) for anything else."""
    if item_id in _CHECKS:
        return _render_check(_CHECKS[item_id])
    if item_id in FIXES:
        return _render_fix(FIXES[item_id])
    raise DiagnoseError(
        f"unknown id {item_id!r}; checks: {', '.join(_CHECKS)}; fixes: {', '.join(FIXES)}"
    )


def _render_check(spec: CheckSpec) -> str:
    doc = inspect.cleandoc(spec.doc)
    title, _, body = doc.partition("\n")
    header = [
        f"# {title.strip().rstrip('.')} (`{spec.id}`)",
        "",
        f"Check. Default severity: **{spec.severity.value}**. "
        + ("Needs a short training run (`--steps` > 0)." if spec.needs_run else "Runs on one forward and backward pass."),
        "",
        f"*{_sentence(spec.summary)}*",
        "",
    ]
    body = _with_fix_list(body.strip("\n"), spec)
    return "\n".join(header) + "\n" + _with_threshold_table(body, spec) + "\n"


def _with_fix_list(body: str, spec: CheckSpec) -> str:
    """End the `## Fixes` section with the fix ids the module declares (`FIXES`), or its `NO_FIX`
    reason: generated from the code, so the page cannot promise a fix the check never gives."""
    if spec.no_fix is not None:
        if "No catalog fix applies" in body.partition("## Fixes")[2].partition("\n## ")[0]:
            return body  # the page already says so, with what to do instead
        line = f"No catalog fix applies: {spec.no_fix}."
    else:
        listed = ", ".join(f"[`{fix_id}`](../fixes/{fix_id}.md)" for fix_id in spec.fixes)
        line = f"May recommend, in the order the evidence decides: {listed}."
    marker = "\n## Options"
    if "## Fixes" in body and marker in body:
        head, _, tail = body.partition(marker)
        return head.rstrip("\n") + "\n\n" + line + "\n" + marker + tail
    return body


def _with_threshold_table(body: str, spec: CheckSpec) -> str:
    """Insert the thresholds and their defaults at the end of the `## Options` section."""
    thresholds = spec.thresholds
    if thresholds:
        rows = ["", "| threshold | default |", "| --- | --- |"]
        rows += [f"| `{name}` | {value:g} |" for name, value in thresholds.items()]
        rows += ["", f"Override them in `pyproject.toml` under `[tool.diagnose.thresholds.{spec.id}]`."]
    else:
        rows = ["", "This check has no thresholds."]
    table = "\n".join(rows)
    marker = "\n## References"
    if "## Options" in body and marker in body:
        head, _, tail = body.partition(marker)
        return head.rstrip("\n") + "\n" + table + "\n" + marker + tail
    return body + "\n\n## Options\n" + table


def _render_fix(fix: Fix) -> str:
    header = [
        f"# {fix.title} (`{fix.id}`)",
        "",
        f"Fix. *{_sentence(fix.summary)}*",
        "",
        fix.rationale,
        "",
    ]
    return "\n".join(header) + "\n" + inspect.cleandoc(fix.doc) + "\n"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def expected_docs(root: Path) -> dict[Path, str]:
    """Every generated file under `root` and its content."""
    files = {root / "docs" / "checks" / f"{check_id}.md": render(check_id) for check_id in _CHECKS}
    files.update({root / "docs" / "fixes" / f"{fix_id}.md": render(fix_id) for fix_id in FIXES})
    return files


def write_docs(root: str | Path = ".") -> list[Path]:
    """Regenerate docs/checks/*.md and docs/fixes/*.md under `root`; remove pages of retired ids."""
    root = Path(root)
    files = expected_docs(root)
    for folder in (root / "docs" / "checks", root / "docs" / "fixes"):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.md"):
            if stale not in files:
                stale.unlink()
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--write-docs"]:
        root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
        written = write_docs(root)
        print(f"wrote {len(written)} pages under {root / 'docs'}")
        return 0
    if len(argv) == 1:
        try:
            print(render(argv[0]))
        except DiagnoseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    print("usage: python -m diagnose.explain ID | --write-docs [ROOT]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
