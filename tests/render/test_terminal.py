"""Terminal renderer: plain vs colour, bars on a log scale, run-only columns, non-finite rows."""

from __future__ import annotations

import math
import re
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from diagnose.render import render_terminal
from diagnose.render.terminal import BAR_CELLS, log_bars
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
    text = render_terminal(report, width=200)
    for record in report.evidence.layers:
        assert record.name in text
    for finding in report.findings:
        assert finding.id in text
    # severity order: error, warning, info
    assert text.index("vanishing-gradients  ") < text.index("saturated-activations  ") < text.index("bottleneck-layer  ")
    assert "verified: ratio_first_last 1.5e-07 -> 0.41 (resolved)" in text
    assert "tried: ratio_first_last 1.5e-07 -> 2.0e-06 (did not help" in text
    assert "0.5 / 0.0431 glorot" in text


def test_update_column_only_after_a_run():
    assert "update" in render_terminal(build_sick_report(steps=20))
    assert "update" not in render_terminal(build_sick_report(steps=0)).split("ERROR")[0]
    assert "update" not in render_terminal(build_healthy_report())


def test_long_models_keep_one_row_per_layer():
    report = build_sick_report()
    ev = report.evidence
    layers = tuple(replace(ev.layers[i % len(ev.layers)], index=i, name=f"blocks.{i}.mlp.fc") for i in range(200))
    text = render_terminal(replace(report, evidence=replace(ev, layers=layers)), width=120)
    rows = [line for line in text.splitlines() if re.match(r"^\s*\d+ blocks\.\d+\.mlp\.fc ", line)]
    assert len(rows) == 200
    assert all(len(line) <= 120 for line in text.splitlines())


def test_nonfinite_values_get_a_marker():
    report = build_sick_report()
    ev = report.evidence
    bad = replace(ev.layers[0], activation=ActivationStats(std=math.nan, nonfinite=5))
    text = render_terminal(replace(report, evidence=replace(ev, layers=(bad, *ev.layers[1:]))))
    row = next(line for line in text.splitlines() if " net.0 " in line)
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
    text = render_terminal(report)
    rows = {line.split()[1]: line for line in text.splitlines() if re.match(r"^\s*\d+ \S+\s+(Linear|Sigmoid) ", line)}
    # net.5 (Sigmoid, no parameters) has the largest output gradient of its kind: a full bar,
    # although weight gradients of the Linear layers are on a different scale
    def grad_bar(name: str, grad_text: str) -> str:
        return rows[name].split(grad_text, 1)[1][:BAR_CELLS + 1]

    assert "████████" in grad_bar("net.5", "2.0e-03")
    assert "████████" in grad_bar("net.6", "0.021")
    assert grad_bar("net.0", "3.1e-09").strip() == "▏"
