"""Does the top fix cure? `--try-fixes` on every sick model we have, one row per finding.

    python benchmarks/fix_efficacy.py                       # zoo, samples and the corpus's sick designs
    python benchmarks/fix_efficacy.py --only zoo,samples    # the small ones (about a minute)
    python benchmarks/fix_efficacy.py relu-exploding deep_sigmoid
    python benchmarks/fix_efficacy.py --markdown table.md      # the table of docs/fix-efficacy.md

The sick models: `tests/models.py` SICK (the tiny zoo), the sick samples in `samples/`, and the
calibration corpus's sick designs (`tests/calibration.py`, CASES with an expected cause) at their
documented (smaller) input size. Each runs `diagnose.check` with the CLI defaults (20 plain-SGD steps
at lr 0.01, seed 0) and `try_fixes=True`.

A finding *passes* when its top fix is verified as resolved (the check no longer fires on the fixed
copy and its short-run loss is not clearly worse) and the fixed copy's loss after the run is lower
than the unchanged copy's. Findings without an automatic fix (a wiring bug the message names, an
export to redo) and symptoms whose message names a root cause among the findings are listed, and
counted apart: fixing the cause is what cures them. Findings of severity info are left out.

The "default" column is the recommender's first fix without `--try-fixes` (a second run of the
same check): the default order must not contradict the verified one, so a default top fix that
is not itself verified as resolved is flagged.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
GROUPS = ("zoo", "samples", "corpus")
SICK_SAMPLES = ("bottleneck", "dead_relu", "deep_relu_xavier", "deep_sigmoid", "saturated_tanh")


def _load(name: str):
    # By file path: putting tests/ on sys.path would make tests/probes shadow the probes package.
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Subject:
    """One sick model: how to run `diagnose.check` on it."""

    group: str
    name: str
    target: object  # a callable returning (model or path, inputs or None, extra check kwargs)


def subjects() -> list[Subject]:
    models = _load("models")
    calibration = _load("calibration")
    found = []
    for case in models.SICK:
        found.append(Subject("zoo", case.name, lambda c=case: (c.build(), c.make_inputs(), dict(c.options))))
    for name in SICK_SAMPLES:
        found.append(Subject("samples", name, lambda n=name: (str(REPO / "samples" / f"{n}.pt2"), None, {})))
    for case in calibration.CASES:
        if case.expect == calibration.HEALTHY:
            continue
        found.append(Subject("corpus", case.name, lambda c=case: _corpus_target(c)))
    return found


def _corpus_target(case):
    import tempfile

    shape = case.shape(False)
    torch.manual_seed(0)
    model = case.build(case.side(False))
    if case.export_eval:  # a user's export after .eval(): the archive is what is diagnosed
        model.eval()
        path = Path(tempfile.mkdtemp()) / f"{case.name}.pt2"
        torch.export.save(torch.export.export(model, (torch.randn(*shape),)), str(path))
        return str(path), None, {"input_shapes": [shape]}
    return model, None, {"input_shapes": [shape]}


@dataclass(frozen=True)
class Row:
    group: str
    model: str
    finding: str
    severity: str
    top_fix: str
    default_fix: str  # the recommender's first choice without --try-fixes
    default_resolved: bool | None  # how --try-fixes judged that choice (None: not tried)
    resolved: bool | None  # None: no fix was tried
    metric: str
    loss: str
    seconds: float
    kind: str  # "fixable" | "no automatic fix" | "symptom of <id>" | "crash"
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.kind != "fixable":
            return "-"
        return "PASS" if self.resolved and self.loss_better else "FAIL"

    @property
    def loss_better(self) -> bool:
        before, _, after = self.loss.partition(" -> ")
        try:
            return float(after) < float(before) or (math.isnan(float(before)) and math.isfinite(float(after)))
        except ValueError:
            return False


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf"
    return f"{value:.3g}"


def run(subject: Subject) -> list[Row]:
    import diagnose
    from diagnose.config import DEFAULT_LR, DEFAULT_OPTIMIZER, DEFAULT_STEPS

    options = dict(steps=DEFAULT_STEPS, optimizer=DEFAULT_OPTIMIZER, lr=DEFAULT_LR, seed=0)
    try:
        target, inputs, extra = subject.target()
        plain = diagnose.check(target, inputs, **options, **extra)
        started = time.perf_counter()  # the time a user waits for --try-fixes
        target, inputs, extra = subject.target()
        report = diagnose.check(target, inputs, try_fixes=True, **options, **extra)
    except Exception as exc:  # a crash is a result of the sweep, not its end
        return [Row(subject.group, subject.name, "-", "-", "-", "-", None, None, "-", "-", 0.0,
                    "crash", f"{type(exc).__name__}: {exc}"[:120])]
    seconds = time.perf_counter() - started
    defaults = {f.id: (f.fixes[0].id if f.fixes else "-") for f in plain.findings}
    rows = []
    for finding in report.findings:
        if finding.severity.value == "info":
            continue  # worth knowing, no action needed: nothing to cure
        tried = [fix for fix in finding.fixes if fix.verified is not None]
        cause = finding.evidence.get("likely_cause")
        default = defaults.get(finding.id, "-")
        judged = next((fix.verified for fix in finding.fixes if fix.id == default), None)
        default_resolved = judged.resolved if judged is not None else None
        if not tried:
            why = finding.fixes[0].not_verified if finding.fixes else "the message says what to change"
            kind = f"symptom of {cause}" if cause else "no automatic fix"
            rows.append(Row(subject.group, subject.name, finding.id, finding.severity.value,
                            finding.fixes[0].id if finding.fixes else "-", default, default_resolved, None,
                            "-", "-", seconds, kind, why or ""))
            continue
        top = finding.fixes[0]
        v = top.verified
        rows.append(Row(
            subject.group, subject.name, finding.id, finding.severity.value, top.id, default, default_resolved,
            v.resolved, f"{v.metric} {_number(v.before)} -> {_number(v.after)}",
            f"{_number(v.loss_before)} -> {_number(v.loss_after)}", seconds,
            f"symptom of {cause}" if cause else "fixable", v.note or "",
        ))
    return rows


HEADER = ("group", "model", "finding", "default", "top fix", "resolved", "metric before -> after",
          "loss before -> after", "s", "verdict")


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _cells(row: Row) -> tuple[str, ...]:
    verdict = row.verdict if row.kind == "fixable" else row.kind
    if row.kind == "crash":
        verdict = f"crash: {row.note}"
    default = row.default_fix if row.default_fix == row.top_fix else f"{row.default_fix} ({_yes_no(row.default_resolved)})"
    return (row.group, row.model, row.finding, default, row.top_fix, _yes_no(row.resolved), row.metric, row.loss,
            f"{row.seconds:.1f}", verdict)


def table(rows: list[Row], markdown: bool) -> str:
    cells = [_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(HEADER)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*HEADER)] + [fmt.format(*r) for r in cells])


def summary(rows: list[Row]) -> str:
    fixable = [r for r in rows if r.kind == "fixable"]
    passed = [r for r in fixable if r.verdict == "PASS"]
    symptoms = [r for r in rows if r.kind.startswith("symptom")]
    manual = [r for r in rows if r.kind == "no automatic fix"]
    crashes = [r for r in rows if r.kind == "crash"]
    models = {(r.group, r.model): r.seconds for r in rows}
    lines = [
        f"fixable findings whose top fix is verified resolved with a better short-run loss: "
        f"{len(passed)}/{len(fixable)}",
        f"symptoms of a root cause among the findings: {len(symptoms)}; without an automatic fix: {len(manual)}; "
        f"crashes: {len(crashes)}",
        f"seconds per model (diagnosis plus every fix tried): median {sorted(models.values())[len(models) // 2]:.1f}, "
        f"max {max(models.values()):.1f}" if models else "no models",
    ]
    failing = [f"{r.model}/{r.finding} ({r.top_fix})" for r in fixable if r.verdict != "PASS"]
    if failing:
        lines.append("not passing: " + ", ".join(failing))
    tried_defaults = [r for r in rows if r.default_resolved is not None]
    contradicted = [f"{r.model}/{r.finding} ({r.default_fix})" for r in tried_defaults
                    if not r.default_resolved and r.resolved]  # the verified first fix does cure it
    same_top = sum(r.default_fix == r.top_fix for r in tried_defaults)
    lines.append(f"default first fix: the verified first fix in {same_top}/{len(tried_defaults)}, verified as "
                 f"resolved in {sum(bool(r.default_resolved) for r in tried_defaults)}/{len(tried_defaults)}"
                 + (f"; not resolved where another fix is: {', '.join(contradicted)}" if contradicted else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="only these models")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups: {', '.join(GROUPS)}")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    groups = set(args.only.split(","))
    chosen = [s for s in subjects() if s.group in groups and (not args.names or s.name in args.names)]
    rows: list[Row] = []
    for subject in chosen:
        found = run(subject)
        rows += found
        for row in found:
            print("  ".join(_cells(row)), file=sys.stderr, flush=True)
    print(table(rows, markdown=False))
    print()
    print(summary(rows))
    if args.markdown:
        args.markdown.write_text(table(rows, markdown=True) + "\n\n" + summary(rows).replace("\n", "\n\n") + "\n")
    return 0 if all(r.verdict in ("PASS", "-") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
