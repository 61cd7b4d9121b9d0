"""Terminal renderer: plain vs colour, bars on a log scale, run-only columns, non-finite rows."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diagnose.render import render_terminal
from diagnose.render.terminal import BAR_CELLS, TABLE_ROWS, log_bars
from probes.records import ActivationStats

from conftest import build_healthy_report, build_sick_report

ANSI = re.compile(r"\x1b\[")


def _bar_length(bar: str) -> float:
    eighths = " ▏▎▍▌▋▊▉█"
    return sum(eighths.index(ch) / 8 if ch in eighths else 1 for ch in bar.rstrip())


def test_plain_has_no_ansi_and_colour_has():
    report = build_sick_report()
    assert not ANSI.search(render_terminal(report))
    assert ANSI.search(render_terminal(report, color=True))


def test_ascii_only_is_ascii():
    render_terminal(build_sick_report(), ascii_only=True).encode("ascii")


def test_every_layer_and_finding_is_shown():
    report = build_sick_report()
    text = render_terminal(report, width=200, verbose=True)
    for record in report.evidence.layers:
        assert record.name in text
    for finding in report.findings:
        assert finding.id in text
    # severity order: error, warning, info
    assert text.index("vanishing-gradients  ") < text.index("saturated-activations  ") < text.index("bottleneck-layer  ")
    assert "verified: ratio_first_last 1.5e-07 -> 0.41 (resolved)" in text
    assert "tried: ratio_first_last 1.5e-07 -> 2.0e-06 (did not help" in text
    assert "0.5 / 0.0431 glorot" in text
    # verbose shows every fix's snippet, the default only each finding's first
    assert "nn.BatchNorm1d(256)" in text
    assert "nn.BatchNorm1d(256)" not in render_terminal(report, width=200)


def test_update_column_only_after_a_run():
    assert "update" in render_terminal(build_sick_report(steps=20))
    assert "update" not in render_terminal(build_sick_report(steps=0)).split("How to apply")[0]
    assert "update" not in render_terminal(build_healthy_report())


def _long_report(count: int = 200):
    report = build_sick_report()
    ev = report.evidence
    layers = tuple(replace(ev.layers[i % len(ev.layers)], index=i, name=f"blocks.{i}.mlp.fc") for i in range(count))
    return replace(report, evidence=replace(ev, layers=layers))


def test_long_models_get_a_summary_table_and_all_rows_with_verbose():
    report = _long_report()
    row = re.compile(r"^\s*(\d+)\s+\*?\s*blocks\.(\d+)\.mlp\.fc ")
    full = [m for m in map(row.match, render_terminal(report, width=120, verbose=True).splitlines()) if m]
    assert [int(m.group(1)) for m in full] == list(range(200))
    summary = [int(m.group(1)) for m in map(row.match, render_terminal(report, width=120).splitlines()) if m]
    assert len(summary) == TABLE_ROWS
    assert summary[0] == 0 and summary[-1] == 199 and summary == sorted(summary)
    # the layers the findings name are always among the rows shown
    named = {name for f in report.findings if f.severity.value != "info" for name in f.layers}
    shown = {report.evidence.layers[i].name for i in summary}
    assert named & {r.name for r in report.evidence.layers} <= shown
    assert "24 of 200 layers" in render_terminal(report, width=120).replace("\n", " ")


# Table cells of the hand-made sick report, as they must appear whole at every width.
def _table_tokens(report) -> set[str]:
    from diagnose.render import _format as fmt

    tokens = set()
    for record in report.evidence.layers:
        tokens |= {record.name, fmt.number(record.activation.std), fmt.number(fmt.gradient_rms(record)),
                   fmt.number(record.update_ratio)}
    return tokens - {"-"}


@pytest.mark.parametrize("width", [60, 80, 100, 120])
@pytest.mark.parametrize("ascii_only", [False, True])
def test_numbers_and_names_are_whole_at_every_width(width, ascii_only):
    report = _long_report(12)  # 12 rows: the full table, names longer than a narrow column
    report = replace(report, evidence=replace(report.evidence, layers=report.evidence.layers[:11] + (
        replace(report.evidence.layers[11], name="encoder.blocks.11.attention.output.dense_projection"),)))
    text = render_terminal(report, width=width, ascii_only=ascii_only)
    words = set(text.split())
    for token in _table_tokens(report):
        assert token in words, f"{token!r} is not whole at {width} columns"
    # every table row keeps its own index: the rows are numbered 0..11, none cropped to "1"
    indices = [int(line.split()[0]) for line in text.splitlines() if re.match(r"^\s*\d+\s+\*?\s*(blocks|encoder)\.", line)]
    assert indices == list(range(12))
    # nothing but code runs past the width
    code = {line for fix in (f for finding in report.findings for f in finding.fixes) for line in fix.snippet.splitlines()}
    for line in text.splitlines():
        assert len(line) <= width or line.strip() in {c.strip() for c in code} or \
            line.strip() == "encoder.blocks.11.attention.output.dense_projection", line


@pytest.mark.parametrize("width", [60, 80, 100, 120])
def test_snippets_are_printed_as_code_that_parses(width):
    import ast
    import textwrap

    long_line = "nn.init.kaiming_normal_(model.encoder.blocks[11].attention.output.dense_projection.weight, nonlinearity='relu')  # He"
    report = build_sick_report()
    first = next(f for f in report.findings if f.id == "vanishing-gradients")
    fix = replace(first.fixes[0], snippet="for i in (1, 3, 5):\n    model.net[i] = nn.ReLU()\n\n" + long_line)
    report = replace(report, findings=tuple(replace(f, fixes=(fix, *f.fixes[1:])) if f is first else f
                                            for f in report.findings))
    lines = render_terminal(report, width=width).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "for i in (1, 3, 5):")
    block = "\n".join(lines[start:start + 4])
    assert long_line in block  # one line, however wide the terminal
    ast.parse(textwrap.dedent(block))


def test_the_report_ends_on_the_recap():
    text = render_terminal(build_sick_report(), width=80).rstrip().splitlines()
    assert text[-3].startswith("status: error")
    assert text[-2].split()[:2] == ["error", "vanishing-gradients"]
    assert "try relu (verified)" in text[-2]
    assert text[-1].split()[:2] == ["warning", "saturated-activations"]
    # and it starts with the verdict
    assert render_terminal(build_sick_report()).splitlines()[1].startswith("verdict  error: this network will not train")


def test_nonfinite_values_get_a_marker():
    report = build_sick_report()
    ev = report.evidence
    bad = replace(ev.layers[0], activation=ActivationStats(std=math.nan, nonfinite=5))
    text = render_terminal(replace(report, evidence=replace(ev, layers=(bad, *ev.layers[1:]))), width=200)
    row = next(line for line in text.splitlines() if " net.0 " in line and "nan" in line)
    assert "nan" in row and "!" in row


def test_bars_follow_the_log_scale():
    bars = log_bars([1e-9, 1e-6, 1e-3, 1.0])
    lengths = [_bar_length(b) for b in bars]
    assert lengths == sorted(lengths) and lengths[-1] == BAR_CELLS
    # equal steps in log10 give equal steps in length (to within rounding and the minimum sliver)
    steps = [b - a for a, b in zip(lengths, lengths[1:])]
    assert max(steps) - min(steps) <= 2 / 8 + 1e-9


def test_bars_of_similar_values_are_not_exaggerated():
    lengths = [_bar_length(b) for b in log_bars([1.0, 1.5, 2.0])]
    # a factor of two spans a fraction of the minimum two-decade scale, not the whole bar
    assert lengths[-1] - lengths[0] < BAR_CELLS / 4


@given(st.lists(st.one_of(st.none(), st.just(0.0), st.just(math.nan),
                          st.floats(min_value=1e-30, max_value=1e30)), max_size=30),
       st.booleans())
def test_bars_have_fixed_width(values, ascii_only):
    bars = log_bars(values, ascii_only=ascii_only)
    assert len(bars) == len(values)
    assert all(len(b) == BAR_CELLS for b in bars)
    for value, bar in zip(values, bars):
        if value is not None and value > 0:
            assert bar.strip(), "a positive value always shows a bar"


def test_output_gradients_have_their_own_bar_scale():
    report = build_sick_report()
    text = render_terminal(report, width=200)  # wide enough for the type and both bars
    rows = {m.group(1): line for line in text.splitlines()
            if (m := re.match(r"^\s*\d+\s+\*?\s*(net\.\d+)\s+(Linear|Sigmoid) ", line))}
    # net.5 (Sigmoid, no parameters) has the largest output gradient of its kind: a full bar,
    # although weight gradients of the Linear layers are on a different scale
    def grad_bar(name: str, grad_text: str) -> str:
        return rows[name].split(grad_text, 1)[1][:BAR_CELLS + 1]

    assert "████████" in grad_bar("net.5", "2.0e-03")
    assert "████████" in grad_bar("net.6", "0.021")
    assert grad_bar("net.0", "3.1e-09").strip() == "▏"
