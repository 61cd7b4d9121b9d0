"""Run `diagnose check` with its CLI defaults on the calibration corpus and print one table.

    python benchmarks/calibrate.py                    # every model, at the documented input size
    python benchmarks/calibrate.py --both-sizes       # and at the second size: verdicts must not flip
    python benchmarks/calibrate.py resnet50 vit_b_16  # only these
    python benchmarks/calibrate.py --unseen           # the second set, never used to set a threshold
    python benchmarks/calibrate.py --fast --markdown docs/calibration-table.md

A healthy model passes with no warning and no error (infos are fine); a sick design passes when a
finding of at least warning severity names the expected cause. The corpus is tests/calibration.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import diagnose
from diagnose.config import DEFAULT_LR, DEFAULT_OPTIMIZER, DEFAULT_STEPS
from diagnose.errors import DiagnoseError

REPO = Path(__file__).resolve().parent.parent


def _load_corpus():
    # By file path: putting tests/ on sys.path would make tests/probes shadow the probes package.
    spec = importlib.util.spec_from_file_location("calibration", REPO / "tests" / "calibration.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibration"] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


calibration = _load_corpus()
HEALTHY, Case = calibration.HEALTHY, calibration.Case


@dataclass(frozen=True)
class Outcome:
    case: Case
    alt: bool
    findings: tuple[tuple[str, str], ...]  # (id, severity)
    status: str
    seconds: float
    error: str = ""

    @property
    def raised(self) -> tuple[str, ...]:
        return tuple(f"{i}:{s}" for i, s in self.findings)

    @property
    def alarms(self) -> tuple[str, ...]:
        return tuple(i for i, s in self.findings if s in ("warning", "error"))

    @property
    def verdict(self) -> str:
        if self.error:
            return "CRASH"
        if self.case.expect == HEALTHY:
            return "ok" if not self.alarms else "FALSE ALARM"
        return "caught" if self.case.expect in self.alarms else "MISSED"


def run_case(case: Case, alt: bool = False, steps: int | None = None) -> Outcome:
    shape = case.shape(alt)
    torch.manual_seed(0)
    started = time.perf_counter()
    try:
        model = case.build(case.side(alt))
        target: object = model
        with tempfile.TemporaryDirectory() as tmp:
            if case.export_eval:
                model.eval()
                example = (torch.randn(*shape),)
                program = torch.export.export(model, example)
                target = str(Path(tmp) / f"{case.name}.pt2")
                torch.export.save(program, target)
            report = diagnose.check(
                target, input_shapes=[shape], steps=DEFAULT_STEPS if steps is None else steps,
                optimizer=DEFAULT_OPTIMIZER, lr=DEFAULT_LR, seed=0,
            )
    except DiagnoseError as exc:
        return Outcome(case, alt, (), "error", time.perf_counter() - started, error=str(exc))
    except Exception as exc:  # a crash is a result of the sweep, not its end
        return Outcome(case, alt, (), "error", time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    findings = tuple((f.id, f.severity.value) for f in report.findings)
    return Outcome(case, alt, findings, report.status, time.perf_counter() - started)


def table(outcomes: list[Outcome], markdown: bool) -> str:
    header = ("model", "family", "input", "expected", "findings", "verdict", "time s")
    rows = []
    for o in outcomes:
        shape = "x".join(str(d) for d in o.case.shape(o.alt))
        raised = ", ".join(o.raised) or "-"
        if o.error:
            raised = o.error[:90]
        rows.append((o.case.name, o.case.family, shape, o.case.expect, raised, o.verdict, f"{o.seconds:.1f}"))
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])


def summary(outcomes: list[Outcome]) -> str:
    healthy = [o for o in outcomes if o.case.expect == HEALTHY]
    sick = [o for o in outcomes if o.case.expect != HEALTHY]
    false_alarms = sum(o.verdict != "ok" for o in healthy)
    caught = sum(o.verdict == "caught" for o in sick)
    lines = [
        f"healthy: {len(healthy) - false_alarms}/{len(healthy)} clean, false-alarm rate "
        f"{false_alarms / max(1, len(healthy)):.0%}",
        f"sick: {caught}/{len(sick)} caught with the cause named",
    ]
    by_name: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_name.setdefault(o.case.name, []).append(o)
    flips = [n for n, os in by_name.items() if len(os) > 1 and len({o.verdict for o in os}) > 1]
    if any(len(os) > 1 for os in by_name.values()):
        lines.append(f"verdicts that flip between the two input sizes: {', '.join(flips) or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="only these corpus entries")
    parser.add_argument("--fast", action="store_true", help="only the default test suite's subset")
    parser.add_argument("--unseen", action="store_true",
                        help="the second set (calibration.UNSEEN), never used to set a threshold, instead of the corpus")
    parser.add_argument("--both-sizes", action="store_true", help="also run at each family's second input size")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--json", type=Path, help="write the outcomes as JSON here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pool = calibration.UNSEEN if args.unseen else calibration.CASES + (calibration.UNSEEN if args.names else ())
    cases = [c for c in pool if (not args.names or c.name in args.names) and (not args.fast or c.fast)]
    outcomes: list[Outcome] = []
    for case in cases:
        for alt in (False, True) if args.both_sizes else (False,):
            outcome = run_case(case, alt)
            outcomes.append(outcome)
            print(f"{case.name:32s} {'alt ' if alt else ''}{outcome.verdict:12s} {outcome.seconds:6.1f}s "
                  f"{', '.join(outcome.raised) or outcome.error[:120]}", file=sys.stderr, flush=True)
    print(table(outcomes, markdown=False))
    print()
    print(summary(outcomes))
    if args.markdown:
        args.markdown.write_text(table(outcomes, markdown=True) + "\n\n" + summary(outcomes) + "\n")
    if args.json:
        args.json.write_text(json.dumps([
            {"model": o.case.name, "family": o.case.family, "input": list(o.case.shape(o.alt)),
             "expected": o.case.expect, "findings": [list(f) for f in o.findings], "verdict": o.verdict,
             "seconds": round(o.seconds, 2), "error": o.error} for o in outcomes], indent=1))
    bad = [o for o in outcomes if o.verdict not in ("ok", "caught")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
