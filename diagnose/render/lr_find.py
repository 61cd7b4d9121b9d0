"""`diagnose lr-find` for people and for programs: a text plot of the loss against a log-LR axis, the
verifying runs, the suggestion and its rule (terminal, 80 columns); the same as strict JSON."""

from __future__ import annotations

import json
import math
import textwrap
from typing import TYPE_CHECKING

from diagnose.render._format import number
from diagnose.render.json import finite_json

if TYPE_CHECKING:
    from diagnose.range_test import LRFindResult

# The plot reads at 80 columns whatever the terminal: wider only stretches the log axis.
MAX_WIDTH = 80
PLOT_ROWS = 10
# The y-axis labels ("  0.0931 ") and the axis line take this many columns.
LABEL_WIDTH = 8
# Roles as the candidates table names them.
_ROLE_WORDS = {"baseline": "your --lr (baseline)"}


def render_lr_find_json(result: "LRFindResult") -> str:
    return json.dumps(finite_json(result.to_dict()), indent=2, allow_nan=False) + "\n"


def render_lr_find_text(
    result: "LRFindResult", *, width: int = MAX_WIDTH, color: bool = False, ascii_only: bool = False,
    verbose: bool = False,
) -> str:
    """The human report. `color` and `verbose` are accepted for the CLI's renderer signature; the
    plot is plain text either way."""
    width = min(width, MAX_WIDTH)
    glyphs = _ASCII if ascii_only else _UNICODE
    shapes = ", ".join("x".join(str(d) for d in s) for s in result.input_shapes) or "no inputs"
    lines = _wrap(
        f"diagnose lr-find: {result.source} ({result.optimizer}, {result.loss} loss, one fixed "
        f"{result.inputs} batch {shapes}, seed {result.seed})", width)
    lines.append("")
    lines += _wrap(
        f"Loss after each step of the sweep ({glyphs.smooth} smoothed, {glyphs.raw} raw), {len(result.lrs)} of "
        f"{result.sweep_steps} steps from lr {result.min_lr:g} to {result.max_lr:g}:", width)
    lines += plot(result, width=width, glyphs=glyphs)
    if result.stopped:
        lines += _wrap(f"Stopped early: {result.stopped}.", width)
    lines.append("")
    lines += _candidates_table(result, width)
    lines.append("")
    lines += _conclusion(result, width)
    for note in result.notes:
        lines += _wrap(f"Note: {note}.", width)
    return "\n".join(lines) + "\n"


def _candidates_table(result: "LRFindResult", width: int) -> list[str]:
    steps = result.verify_steps
    lines = _wrap(
        f"Short runs ({steps} {result.optimizer} steps from the starting weights, same batch):",
        width)
    verified = result.verified
    lines.append(f"  {'lr':<10}  loss after {steps} steps")
    for candidate in result.candidates:
        loss = "diverged" if not math.isfinite(candidate.loss_after) else number(candidate.loss_after, 4)
        role = _ROLE_WORDS.get(candidate.role, candidate.role)
        mark = "  <- verified" if verified is not None and candidate.lr == verified.lr else ""
        lines.append(f"  {_lr(candidate.lr):<10}  {loss:<22}  {role}{mark}".rstrip())
    return lines


def _conclusion(result: "LRFindResult", width: int) -> list[str]:
    if not result.found:
        return _wrap(f"No suggestion: {result.rule.removeprefix('no suggestion: ')}.", width)
    lines = _wrap(f"Suggested lr {_lr(result.suggested_lr)}: {result.rule}.", width)
    verified, baseline = result.verified, result.baseline
    if verified is None:
        return lines
    against = ""
    if baseline is not None and verified.lr != baseline.lr:
        base = "diverged" if not math.isfinite(baseline.loss_after) else number(baseline.loss_after, 4)
        against = f", against {base} at your --lr {_lr(baseline.lr)}"
    elif baseline is not None:
        against = ": your --lr is already the best of the runs"
    lines += _wrap(
        f"Verified lr {_lr(verified.lr)}: loss {number(verified.loss_after, 4)} after "
        f"{result.verify_steps} steps{against}.", width)
    return lines


def _lr(lr: float | None) -> str:
    """LRs as people write them (0.003, 1e-07, 0.000333): three significant digits, no padding."""
    return "-" if lr is None else f"{lr:.3g}"


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=width, subsequent_indent="  ", break_on_hyphens=False) or [""]


# ---------------------------------------------------------------------------------------------
# The plot


class _Glyphs:
    def __init__(self, smooth: str, raw: str, axis: str, tick: str, corner: str, line: str, label_tick: str) -> None:
        self.smooth, self.raw, self.axis, self.tick = smooth, raw, axis, tick
        self.corner, self.line, self.label_tick = corner, line, label_tick


_UNICODE = _Glyphs(smooth="•", raw="·", axis="│", tick="┬", corner="└", line="─", label_tick="┤")
_ASCII = _Glyphs(smooth="*", raw=".", axis="|", tick="+", corner="+", line="-", label_tick="+")


def plot(result: "LRFindResult", *, width: int = MAX_WIDTH, glyphs: _Glyphs = _UNICODE) -> list[str]:
    """The loss against log10(lr) over the requested range, with the suggested (S), verified (V) and
    baseline (B) LRs marked under the axis."""
    columns = max(width - LABEL_WIDTH - 1, 20)
    low_x, high_x = math.log10(result.min_lr), math.log10(result.max_lr)

    def column(lr: float) -> int:
        share = (math.log10(lr) - low_x) / (high_x - low_x)
        return min(max(round(share * (columns - 1)), 0), columns - 1)

    bottom, top = _loss_range(result)

    def row(loss: float) -> int:
        share = (top - loss) / (top - bottom)
        return min(max(round(share * (PLOT_ROWS - 1)), 0), PLOT_ROWS - 1)

    grid = [[" "] * columns for _ in range(PLOT_ROWS)]
    for lr, raw, smoothed in zip(result.lrs, result.losses, result.smoothed):
        if math.isfinite(raw):
            grid[row(raw)][column(lr)] = glyphs.raw
    for lr, smoothed in zip(result.lrs, result.smoothed):
        if math.isfinite(smoothed):
            grid[row(smoothed)][column(lr)] = glyphs.smooth
    labels = {0: number(top), PLOT_ROWS // 2: number((top + bottom) / 2), PLOT_ROWS - 1: number(bottom)}
    lines = []
    for index, cells in enumerate(grid):
        label = labels.get(index, "")
        axis = glyphs.label_tick if label else glyphs.axis
        lines.append(f"{label:>{LABEL_WIDTH - 1}} {axis}{''.join(cells)}".rstrip())
    ticks, tick_labels = _decade_axis(low_x, high_x, column, columns)
    axis_line = [glyphs.line] * columns
    for position in ticks:
        axis_line[position] = glyphs.tick
    lines.append(" " * (LABEL_WIDTH - 1) + " " + glyphs.corner + "".join(axis_line))
    lines.append((" " * (LABEL_WIDTH + 1) + tick_labels).rstrip())
    lines += _markers(result, column, columns)
    return lines


def _loss_range(result: "LRFindResult") -> tuple[float, float]:
    """From the lowest loss to the starting loss (or the highest smoothed loss before the minimum,
    should the curve first rise): the fall is what the plot is for; a diverging tail is clipped."""
    finite = [v for v in (*result.losses, *result.smoothed) if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    bottom = min(finite)
    smoothed = [v for v in result.smoothed if math.isfinite(v)]
    before_minimum = smoothed[: smoothed.index(min(smoothed)) + 1] if smoothed else []
    top = max([result.initial_loss, *before_minimum]) if math.isfinite(result.initial_loss) else max(finite)
    if top - bottom <= 1e-12 * max(1.0, abs(top)):
        return bottom - 0.5, bottom + 0.5  # a flat curve sits in the middle
    return bottom, top


def _decade_label(exponent: int) -> str:
    return str(10**exponent) if 0 <= exponent <= 3 else f"1e{exponent}"


def _decade_axis(low_x: float, high_x: float, column, columns: int) -> tuple[list[int], str]:
    """Tick columns at whole decades, and a label line naming as many as fit without touching."""
    exponents = list(range(math.ceil(low_x - 1e-9), math.floor(high_x + 1e-9) + 1))
    ticks = [column(10.0**e) for e in exponents]
    text = [" "] * (columns + 6)
    last_end = -2
    for exponent, position in zip(exponents, ticks):
        label = _decade_label(exponent)
        start = max(position - len(label) // 2, 0)
        if start <= last_end + 1 or start + len(label) > len(text):
            continue
        text[start : start + len(label)] = label
        last_end = start + len(label) - 1
    return ticks, "".join(text)


def _markers(result: "LRFindResult", column, columns: int) -> list[str]:
    """A line with S / V / B under the axis at the suggested, verified and baseline LRs, and a key."""
    marks: dict[int, str] = {}
    key = []
    verified, baseline = result.verified, result.baseline
    for letter, lr, words in (
        ("B", baseline.lr if baseline else None, "your --lr"),
        ("S", result.suggested_lr, "suggested"),
        ("V", verified.lr if verified else None, "verified"),
    ):
        if lr is None or not (lr > 0):
            continue
        marks[column(lr)] = letter  # later letters win a shared column: V over S over B
        key.append(f"{letter} {words} {_lr(lr)}")
    if not marks:
        return []
    cells = [" "] * columns
    for position, letter in marks.items():
        cells[position] = letter
    return [(" " * (LABEL_WIDTH + 1) + "".join(cells)).rstrip(), " " * (LABEL_WIDTH + 1) + ", ".join(key)]
