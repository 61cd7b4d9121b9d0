"""The report's figures, drawn with matplotlib: gradient flow, activation scale, dead and saturated units, loss, fixes.

matplotlib is an optional extra (`diagnose[plot]`) and is imported only inside these functions.
Figures are built as `matplotlib.figure.Figure` on their own `FigureCanvasAgg`, never through
pyplot: a library must not switch a user's backend or leave figures in pyplot's global registry.

The depth figures share one x axis: the layer's position in execution order (the `#` of the
terminal table), with a sparse set of tick labels, so that a model with hundreds of layers stays
readable. Values a log axis cannot show (zero, NaN, Inf) are drawn as markers on its edges.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diagnose.errors import DiagnoseError
from diagnose.render import _format as fmt
from diagnose.severity import Severity

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from diagnose.findings import Finding, FixSuggestion, Verification
    from diagnose.range_test import LRFindResult
    from diagnose.report import Report

INSTALL_HINT = 'pip install "diagnose[plot]"'

# File stems, stable so that a CI job can publish them by name.
GRADIENT_FLOW = "gradient_flow"
ACTIVATION_STD = "activation_std"
DEAD_SATURATED = "dead_saturated"
LOSS = "loss"
FIXES = "fixes"
LR_FIND = "lr_find"

# 11 inches at the page's 144 dpi is about the width of a laptop browser window; the depth
# figures are wide because their x axis can hold hundreds of layers.
FIGURE_WIDTH_IN = 11.0
DEPTH_HEIGHT_IN = 4.6
LOSS_HEIGHT_IN = 3.6
PNG_DPI = 144
# Rotated 40 degrees, parallel labels 1/24 of the axes apart (about 43 px at 144 dpi) are
# 43 * sin(40) = 28 px apart across their baselines, and an 8 pt label is 16 px tall: they never
# touch, however long they are.
MAX_TICK_LABELS = 24
# Longer layer names keep their last dotted parts ("…denselayer16.conv2"): the position in the
# label and the page's layer table give the full name.
MAX_NAME_CHARS = 28
MAX_FIX_LABEL_CHARS = 52
# A y axis spanning at least this ratio is drawn on a log scale (losses that diverge, fix metrics
# such as a gradient ratio going from 1e-9 to 0.4); a narrower one reads better linear.
LOG_SCALE_SPAN = 100.0
# Below this ratio (two decades) a log axis has two decade ticks or fewer, too few to read values
# against: its minor ticks get plain labels as well.
NARROW_LOG_SPAN = 100.0
# Within a factor of 3 every minor tick gets a label; within a decade all but 7 and 9 times a
# power of ten, wider only 1, 2, 3 and 5 times: ticks crowd together toward the top of a decade.
LABEL_EVERY_TICK_SPAN = 3.0
# Lines joining consecutive layers help follow a trend over tens of layers; over hundreds they
# zig-zag (conv, norm, activation in turn) into a band that hides the points.
MAX_JOINED_POINTS = 100
# A dot per step reads well up to this many steps; beyond, the dots merge into a thick line.
MAX_MARKED_STEPS = 60
# Edge markers for values a log axis cannot place, in axes fraction.
BOTTOM_EDGE = 0.03
TOP_EDGE = 0.97

PARAMETER_COLOR = "#1f5fa8"
OUTPUT_COLOR = "#e08a00"
ACTIVATION_COLOR = "#3b7d3b"
DEAD_COLOR = "#6b4fa0"
SATURATED_COLOR = "#d0632c"
FLAGGED_COLOR = "#c8102e"
RESOLVED_COLOR = "#2e8b3d"
UNRESOLVED_COLOR = "#c8102e"
NEUTRAL_COLOR = "#777777"
SUGGESTED_COLOR = "#e08a00"
GRID_COLOR = "#dddddd"


@dataclass(frozen=True, slots=True)
class NamedFigure:
    """One figure of the report: its file stem, a caption for the page, and the figure itself."""

    name: str
    caption: str
    figure: Figure


def require_matplotlib(option: str = "--html/--plot") -> None:
    """Raise `DiagnoseError` with the install line when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:
        raise DiagnoseError(f"{option} draws figures with matplotlib, which is not installed: {INSTALL_HINT}") from exc


def build_figures(report: Report) -> list[NamedFigure]:
    """Every figure the report has data for; `fixes` only when `--try-fixes` verified something."""
    require_matplotlib()
    figures = [
        NamedFigure(GRADIENT_FLOW, "Gradient size by depth", gradient_flow_figure(report)),
        NamedFigure(ACTIVATION_STD, "Activation std by depth", activation_std_figure(report)),
        NamedFigure(DEAD_SATURATED, "Dead and saturated units per layer", dead_saturated_figure(report)),
        NamedFigure(LOSS, "Loss over the short run", loss_figure(report)),
    ]
    if _verified_fixes(report):
        figures.append(NamedFigure(FIXES, "Fixes tried on a copy (--try-fixes): before -> after", fixes_figure(report)))
    return figures


def write_figures(report: Report, directory: str | Path) -> list[Path]:
    """Write the report's figures as `<name>.png` in `directory` (created when its parent exists)."""
    target = Path(directory)
    require_writable_directory(target, "--plot")
    target.mkdir(exist_ok=True)
    written = []
    for named in build_figures(report):
        path = target / f"{named.name}.png"
        try:
            path.write_bytes(png_bytes(named.figure))
        except OSError as exc:
            raise DiagnoseError(f"cannot write the --plot figure {path}: {exc.strerror or exc}") from exc
        written.append(path)
    # A figure this report has no data for (no fix verified this time) must not be left from an
    # earlier run, where it would read as this model's: only files of our own names are removed.
    for name in (FIXES,):
        stale = target / f"{name}.png"
        if stale not in written and stale.is_file():
            try:
                stale.unlink()
            except OSError as exc:
                raise DiagnoseError(f"cannot remove the stale --plot figure {stale}: {exc.strerror or exc}") from exc
    return written


def require_writable_directory(target: Path, option: str) -> None:
    """Fail with what to do when `target` cannot become a directory of figures."""
    if target.exists() and not target.is_dir():
        raise DiagnoseError(f"cannot write the {option} figures to {target}: it is a file; give a directory")
    if not target.exists() and not target.parent.is_dir():
        raise DiagnoseError(
            f"cannot write the {option} figures to {target}: directory {target.parent} does not exist; create it first"
        )


def png_bytes(figure: Figure, dpi: int = PNG_DPI) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# depth figures


def gradient_flow_figure(report: Report) -> Figure:
    """Gradient RMS per layer on a log axis: parameter gradients, and output gradients of parameter-free layers."""
    layers = report.evidence.layers
    parameter: list[tuple[int, float]] = []
    output: list[tuple[int, float]] = []
    for position, record in enumerate(layers):
        value = fmt.gradient_rms(record)
        if value is None:
            continue
        if record.gradient.nonfinite:
            value = math.nan
        is_parameter = record.parameters > 0 and record.gradient.rms is not None
        (parameter if is_parameter else output).append((position, value))

    figure, ax = _titled_figure(DEPTH_HEIGHT_IN, "Gradient size by depth (RMS, log scale)", "gradient RMS")
    if not parameter and not output:
        _empty(ax, "no gradient was measured (no backward pass reached a probed layer)")
        return figure
    _log_series(ax, parameter, color=PARAMETER_COLOR, marker="o", label="parameter gradient (weighted layers)",
                short_label="parameter gradient")
    _log_series(ax, output, color=OUTPUT_COLOR, marker="s", label="output gradient (parameter-free layers)",
                short_label="output gradient")
    _readable_log_ticks(ax, [v for _, v in parameter + output])
    _depth_axis(ax, report, values=dict(parameter + output))
    return figure


def activation_std_figure(report: Report) -> Figure:
    """The std of each layer's output on a log axis."""
    points = []
    for position, record in enumerate(report.evidence.layers):
        std = record.activation.std
        if std is None:
            continue
        points.append((position, math.nan if record.activation.nonfinite else std))

    figure, ax = _titled_figure(DEPTH_HEIGHT_IN, "Activation std by depth (log scale)", "std of the layer's output")
    if not points:
        _empty(ax, "no activation statistics were measured (module hooks could not run on this model)")
        return figure
    _log_series(ax, points, color=ACTIVATION_COLOR, marker="o", label="activation std",
                short_label="activation std")
    _readable_log_ticks(ax, [v for _, v in points])
    _depth_axis(ax, report, values=dict(points))
    return figure


def dead_saturated_figure(report: Report) -> Figure:
    """Share of dead units (ReLU family) and saturated outputs (bounded activations) per layer."""
    ev = report.evidence
    dead = _fractions(ev.layers, lambda r: r.activation.dead_fraction)
    saturated = _fractions(ev.layers, lambda r: r.activation.saturated_fraction)
    run_by_name = {r.name: r for r in ev.run_layers}
    dead_last = _fractions(
        ev.layers,
        lambda r: run_by_name[r.name].activation.dead_fraction_last if r.name in run_by_name else None,
    )

    figure, ax = _titled_figure(DEPTH_HEIGHT_IN, "Dead and saturated units per layer", "share of the layer's units")
    if not dead and not saturated:
        _empty(ax, "no ReLU-family or bounded activation was probed: no unit can be dead or saturated")
        return figure
    # Bars thinner than a slot so that neighbours separate; a dot on each bar's top so that a
    # measured 0% (a healthy layer) is visible, not mistaken for a layer that was not measured.
    for points, color, label in (
        (dead, DEAD_COLOR, "dead at initialisation (never fire on the batch)"),
        (saturated, SATURATED_COLOR, "saturated (within the margin of an asymptote)"),
    ):
        if points:
            xs, ys = zip(*points)
            ax.bar(xs, ys, width=0.8, color=color, label=label)
            ax.scatter(xs, ys, s=10, color=color, zorder=2, clip_on=False)
    if dead_last:
        ax.scatter([p for p, _ in dead_last], [v for _, v in dead_last], marker="_", s=60, linewidths=1.5,
                   color="black", zorder=3, label="dead in the short run's last step")
    if all(v == 0 for _, v in dead + saturated + dead_last):
        ax.text(0.5, 0.5, "no unit is dead or saturated in any measured layer", transform=ax.transAxes,
                ha="center", va="center", color=NEUTRAL_COLOR)
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(_percent_formatter())
    values = dict(saturated)
    values.update(dead)
    _depth_axis(ax, report, values=values, log=False)
    return figure


def _fractions(layers: Sequence, read: Callable) -> list[tuple[int, float]]:
    points = []
    for position, record in enumerate(layers):
        value = read(record)
        if value is not None and math.isfinite(value):
            points.append((position, value))
    return points


def _log_series(ax: Axes, points: Sequence[tuple[int, float]], *, color: str, marker: str, label: str,
                short_label: str) -> None:
    """Positive finite values on the log axis; zeros on the bottom edge, NaN/Inf on the top edge."""
    if not points:
        return
    shown = [(p, v) for p, v in points if math.isfinite(v) and v > 0]
    zeros = [p for p, v in points if v == 0]
    nonfinite = [p for p, v in points if not math.isfinite(v)]
    if shown:
        xs, ys = zip(*shown)
        if len(shown) <= MAX_JOINED_POINTS:
            ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.35, zorder=1)
        ax.scatter(xs, ys, color=color, marker=marker, s=14, zorder=2, label=label)
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction
    if zeros:
        ax.scatter(zeros, [BOTTOM_EDGE] * len(zeros), transform=edge, color=color, marker="v", s=30,
                   zorder=2, clip_on=False, label=f"{short_label}: exactly 0")
    if nonfinite:
        ax.scatter(nonfinite, [TOP_EDGE] * len(nonfinite), transform=edge, color=color, marker="X", s=40,
                   zorder=2, clip_on=False, label=f"{short_label}: NaN or Inf")
    ax.set_yscale("log")


def _readable_log_ticks(ax: Axes, values: Sequence[float]) -> None:
    """Within two decades matplotlib labels one or two ticks, or minor ones as `6x10^-1`: plain numbers read better.

    `values`: every value on the axis (zero and non-finite ones are left out here).
    """
    values = [v for v in values if math.isfinite(v) and v > 0]
    if not values or max(values) / min(values) >= NARROW_LOG_SPAN:
        return
    from matplotlib.ticker import FuncFormatter

    span = max(values) / min(values)
    labelled = "123456789" if span < LABEL_EVERY_TICK_SPAN else "1234568" if span < 10 else "1235"

    def label(tick: float, _position: int) -> str:
        mantissa = f"{tick:.0e}"  # "5e-03"
        if mantissa[0] not in labelled:
            return ""
        return fmt.number(float(tick), 2) if fmt.PLAIN_MIN <= tick < fmt.PLAIN_MAX else mantissa

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))


def _depth_axis(ax: Axes, report: Report, *, values: dict[int, float], log: bool = True) -> None:
    """The shared x axis: positions, sparse labels `index: short.name`, flagged layers ringed."""
    layers = report.evidence.layers
    count = len(layers)
    pad = max(0.5, count * 0.01)
    ax.set_xlim(-pad, count - 1 + pad)
    ticks = _tick_positions(count, MAX_TICK_LABELS)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{i}: {short_name(layers[i].name)}" for i in ticks], rotation=40, ha="right",
                       rotation_mode="anchor", fontsize=8)
    ax.set_xlabel(f"layer, in execution order ({count} probed layers; the page's layer table has every name)")

    flagged = [(p, values[p]) for p in sorted(flagged_positions(report)) if p in values]
    on_axis = [(p, v) for p, v in flagged if math.isfinite(v) and (v > 0 or not log)]
    # a flagged zero or NaN sits on an edge marker: ring it there
    on_edges = [(p, BOTTOM_EDGE if v == 0 else TOP_EDGE) for p, v in flagged if (p, v) not in on_axis]
    label = "layer named by an error or warning"
    for points, transform in ((on_axis, ax.transData), (on_edges, ax.get_xaxis_transform())):
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, transform=transform, s=90, facecolors="none", edgecolors=FLAGGED_COLOR,
                       linewidths=1.4, zorder=3, clip_on=False, label=label)
            label = "_nolegend_"
    ax.grid(True, axis="y", color=GRID_COLOR, linewidth=0.6)
    ax.grid(True, axis="x", color=GRID_COLOR, linewidth=0.4)
    ax.set_axisbelow(True)
    _legend_outside(ax)


def _tick_positions(count: int, most: int) -> list[int]:
    """Up to `most` evenly spaced positions including the first and the last layer."""
    if count <= 0:
        return []
    if count <= most:
        return list(range(count))
    step = (count - 1) / (most - 1)
    return sorted({round(i * step) for i in range(most)})


def flagged_positions(report: Report) -> set[int]:
    """Positions of the layers an error or warning names (infos only describe, so they are not flagged)."""
    names = {name for finding in report.findings if finding.severity is not Severity.INFO for name in finding.layers}
    return {position for position, record in enumerate(report.evidence.layers) if record.name in names}


def short_name(name: str, limit: int = MAX_NAME_CHARS) -> str:
    """`features.denseblock4.denselayer16.conv2` -> `…denselayer16.conv2`: the last dotted parts that fit."""
    if len(name) <= limit:
        return name
    parts = name.split(".")
    kept = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(kept) + 1 > limit:
            break
        kept = f"{part}.{kept}"
    if len(kept) + 1 > limit:
        kept = kept[-(limit - 1):]
    return "…" + kept


# ---------------------------------------------------------------------------------------------
# loss


def loss_figure(report: Report) -> Figure:
    """The short run's loss per step, with chance level and the first non-finite step marked."""
    ev = report.evidence
    loss = ev.loss
    figure, ax = _titled_figure(LOSS_HEIGHT_IN, f"Loss over the short run: {fmt.run_description(ev)}",
                                f"{loss.kind} loss" if loss is not None else "loss")
    ax.set_xlabel("optimizer step")
    history = list(loss.history) if loss is not None else []
    if not history and loss is not None and loss.initial is not None:
        history = [loss.initial]
    finite = [(step, value) for step, value in enumerate(history) if math.isfinite(value)]
    if not finite:
        _empty(ax, "no finite loss was recorded")
        return figure

    xs, ys = zip(*finite)
    ax.plot(xs, ys, color=PARAMETER_COLOR, linewidth=1.6, marker="o" if len(finite) <= MAX_MARKED_STEPS else None,
            markersize=3, label="training loss on the run's batch")
    if loss.expected_initial is not None and math.isfinite(loss.expected_initial):
        ax.axhline(loss.expected_initial, color=NEUTRAL_COLOR, linestyle="--", linewidth=1.0,
                   label=f"chance level ({fmt.number(loss.expected_initial, fmt.LOSS_DIGITS)}): a uniform guess")
    if ev.nonfinite_loss_step is not None:
        ax.axvline(ev.nonfinite_loss_step, color=UNRESOLVED_COLOR, linestyle=":", linewidth=1.4,
                   label=f"loss became NaN/Inf at step {ev.nonfinite_loss_step}")
    values = [v for _, v in finite] + ([loss.expected_initial] if loss.expected_initial else [])
    if _wants_log(values):
        ax.set_yscale("log")
    last = max(len(history) - 1, ev.nonfinite_loss_step or 0, 1)
    ax.set_xlim(-0.02 * last, last * 1.02)
    ax.xaxis.set_major_locator(_integer_locator())
    if len(finite) == 1:
        ax.text(0.5, 0.5, "no training steps were run (--steps 0): only the initial loss", transform=ax.transAxes,
                ha="center", va="center", color=NEUTRAL_COLOR)
    ax.grid(True, color=GRID_COLOR, linewidth=0.6)
    _legend_outside(ax)
    return figure


# ---------------------------------------------------------------------------------------------
# fixes


def _verified_fixes(report: Report) -> list[tuple[Finding, list[FixSuggestion]]]:
    groups = []
    for finding in report.findings:
        tried = [fix for fix in finding.fixes if fix.verified is not None]
        if tried:
            groups.append((finding, tried))
    return groups


def fixes_figure(report: Report) -> Figure:
    """One row per tried fix: the check's metric before -> after (left), the short-run loss (right).

    Each finding gets its own metric panel, because metrics differ in meaning and scale; the loss
    panels share one axis, because every fixed copy ran the same steps on the same batch.
    """
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.lines import Line2D

    groups = _verified_fixes(report)
    rows = [len(fixes) for _, fixes in groups]
    height = 0.9 + sum(0.42 * n + 0.75 for n in rows)
    figure = _with_canvas(MplFigure(figsize=(FIGURE_WIDTH_IN, height), layout="constrained"))
    has_loss = any(_loss_pair(fix.verified) != (None, None) for _, fixes in groups for fix in fixes)
    grid = figure.add_gridspec(len(groups), 2 if has_loss else 1, height_ratios=rows,
                               width_ratios=[3, 2] if has_loss else [1])
    all_losses = [v for _, fixes in groups for fix in fixes for v in _loss_pair(fix.verified)]
    loss_axes: list[Axes] = []
    for row, (finding, fixes) in enumerate(groups):
        metric_ax = figure.add_subplot(grid[row, 0])
        metric = fixes[0].verified.metric
        _arrows(metric_ax, [(fix.verified.before, fix.verified.after, _fix_color(fix.verified)) for fix in fixes])
        metric_ax.set_yticks(range(len(fixes)))
        metric_ax.set_yticklabels([_fix_label(fix) for fix in fixes], fontsize=8)
        metric_ax.set_title(f"{finding.id}: {metric}", loc="left", fontsize=10)
        if has_loss:
            loss_ax = figure.add_subplot(grid[row, 1], sharex=loss_axes[0] if loss_axes else None)
            _arrows(loss_ax, [(*_loss_pair(fix.verified), _loss_color(fix.verified)) for fix in fixes],
                    scale_values=all_losses)
            loss_ax.set_yticks(range(len(fixes)))
            loss_ax.set_yticklabels([])
            loss_ax.set_title("short-run loss", loc="left", fontsize=10)
            loss_axes.append(loss_ax)
    legend = [
        Line2D([], [], color=NEUTRAL_COLOR, marker="o", markerfacecolor="white", linestyle="", label="before (unchanged copy)"),
        Line2D([], [], color=RESOLVED_COLOR, marker="o", linestyle="-", label="after: resolved / loss lower"),
        Line2D([], [], color=UNRESOLVED_COLOR, marker="o", linestyle="-", label="after: not resolved / loss worse"),
        Line2D([], [], color=NEUTRAL_COLOR, marker="o", linestyle="-", label="after: loss not lower, not clearly worse"),
    ]
    figure.legend(handles=legend, loc="outside upper center", ncols=4, fontsize=8, frameon=False)
    return figure


def _loss_pair(verified: Verification) -> tuple[float | None, float | None]:
    return getattr(verified, "loss_before", None), getattr(verified, "loss_after", None)


def _fix_color(verified: Verification) -> str:
    return RESOLVED_COLOR if verified.resolved else UNRESOLVED_COLOR


def _loss_color(verified: Verification) -> str:
    before, after = _loss_pair(verified)
    if getattr(verified, "loss_worse", False):
        return UNRESOLVED_COLOR
    if before is not None and after is not None and math.isfinite(before) and math.isfinite(after) and after < before:
        return RESOLVED_COLOR
    return NEUTRAL_COLOR


def _fix_label(fix: FixSuggestion) -> str:
    label = f"{fix.id}: {fix.title}"
    if len(label) > MAX_FIX_LABEL_CHARS:
        label = label[: MAX_FIX_LABEL_CHARS - 1] + "…"
    return label


def _arrows(ax: Axes, pairs: Sequence[tuple[float | None, float | None, str]], *,
            scale_values: Sequence[float | None] | None = None) -> None:
    """Row i: a hollow marker at before, an arrow to a filled marker at after, the numbers right of the axes.

    A side that was not measured (a fix that failed to apply) or is not finite is only written.
    `scale_values` sets the axis range when panels share it (every value they show).
    """
    values = _finite([v for before, after, _ in pairs for v in (before, after)])
    scale = _finite(scale_values) if scale_values is not None else values
    log = _wants_log(scale)
    if log:
        ax.set_xscale("log")
    for row, (before, after, color) in enumerate(pairs):
        before_ok = before in values and (before > 0 or not log)
        after_ok = after in values and (after > 0 or not log)
        if before_ok:
            ax.scatter([before], [row], s=40, facecolors="white", edgecolors=NEUTRAL_COLOR, linewidths=1.3, zorder=3)
        if after_ok:
            ax.scatter([after], [row], s=40, color=color, zorder=4)
        if before_ok and after_ok and before != after:
            ax.annotate("", xy=(after, row), xytext=(before, row),
                        arrowprops={"arrowstyle": "->", "color": color, "linewidth": 1.5, "shrinkA": 4, "shrinkB": 4})
        ax.annotate(f"{fmt.number(before)} -> {fmt.number(after)}", xy=(1.0, row), xycoords=("axes fraction", "data"),
                    xytext=(6, 0), textcoords="offset points", ha="left", va="center", fontsize=8, color=color)
    if scale:
        _pad_limits(ax, scale, log)
    else:
        ax.set_xticks([])
    ax.set_ylim(len(pairs) - 0.5, -0.5)
    ax.grid(True, axis="x", color=GRID_COLOR, linewidth=0.6)
    ax.set_axisbelow(True)


def _pad_limits(ax: Axes, values: Sequence[float], log: bool) -> None:
    low, high = min(values), max(values)
    if log:
        ax.set_xlim(low / 2, high * 2)
        return
    span = (high - low) or abs(high) or 1.0
    ax.set_xlim(low - 0.08 * span, high + 0.08 * span)


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


# ---------------------------------------------------------------------------------------------
# shared


def _titled_figure(height: float, title: str, ylabel: str) -> tuple[Figure, Axes]:
    """A full-width figure with one axes, its title on the left (the legend goes on the right)."""
    from matplotlib.figure import Figure as MplFigure

    figure = _with_canvas(MplFigure(figsize=(FIGURE_WIDTH_IN, height), layout="constrained"))
    ax = figure.add_subplot()
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    return figure, ax


def _with_canvas(figure: Figure) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def _empty(ax: Axes, message: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color=NEUTRAL_COLOR, wrap=True)


def _legend_outside(ax: Axes) -> None:
    """The legend outside the axes (constrained layout keeps room for it), so that it never covers a point."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.figure.legend(handles, labels, loc="outside upper right", ncols=min(len(handles), 3), fontsize=8,
                         frameon=False)


def _wants_log(values: Sequence[float]) -> bool:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or min(finite) <= 0:
        return False
    return max(finite) / min(finite) >= LOG_SCALE_SPAN


def _percent_formatter():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


# ---------------------------------------------------------------------------------------------
# lr-find


def write_lr_find_figure(result: LRFindResult, directory: str | Path) -> Path:
    """Write `diagnose lr-find`'s figure as `lr_find.png` in `directory` (created when its parent exists)."""
    require_matplotlib("--plot")
    target = Path(directory)
    require_writable_directory(target, "--plot")
    target.mkdir(exist_ok=True)
    path = target / f"{LR_FIND}.png"
    try:
        path.write_bytes(png_bytes(lr_find_figure(result)))
    except OSError as exc:
        raise DiagnoseError(f"cannot write the --plot figure {path}: {exc.strerror or exc}") from exc
    return path


def lr_find_figure(result: LRFindResult) -> Figure:
    """The range test: the sweep's loss against the LR (log x), the verifying runs' losses, and the
    suggested, verified and current (--lr) LRs as vertical lines.

    The sweep's points are the loss after one step at each LR of a ramp; the runs' points are the
    loss after a whole short run at one LR. Both are losses on the same batch, so they share the
    y axis, but they are different experiments, drawn with different markers.
    """
    figure, ax = _titled_figure(
        LOSS_HEIGHT_IN,
        f"LR range test: {result.source} ({result.optimizer}, {result.loss} loss, one fixed batch)",
        f"{result.loss} loss on the batch",
    )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    sweep = [(lr, raw) for lr, raw in zip(result.lrs, result.losses) if math.isfinite(raw)]
    smoothed = [(lr, value) for lr, value in zip(result.lrs, result.smoothed) if math.isfinite(value)]
    runs = [c for c in result.candidates if math.isfinite(c.loss_after)]
    diverged = [c for c in result.candidates if not math.isfinite(c.loss_after)]
    if not sweep and not runs:
        _empty(ax, "no finite loss was recorded")
        return figure
    if sweep:
        ax.scatter(*zip(*sweep), s=9, color=PARAMETER_COLOR, alpha=0.35, linewidths=0,
                   label="sweep: loss after one step at this lr")
    if smoothed:
        ax.plot(*zip(*smoothed), color=PARAMETER_COLOR, linewidth=1.6, label="sweep, smoothed")
    steps = result.verify_steps
    if runs:
        ax.scatter([c.lr for c in runs], [c.loss_after for c in runs], marker="s", s=36, color=ACTIVATION_COLOR,
                   zorder=4, label=f"short run: loss after {steps} steps at this lr")
    for candidate in diverged:
        ax.scatter([candidate.lr], [TOP_EDGE], transform=ax.get_xaxis_transform(), marker="x", s=40,
                   color=UNRESOLVED_COLOR, zorder=4, clip_on=False)
    if diverged:
        ax.scatter([], [], marker="x", s=40, color=UNRESOLVED_COLOR, label="short run diverged (top edge)")
    verified, baseline = result.verified, result.baseline
    for lr, color, style, words in (
        (baseline.lr if baseline else None, NEUTRAL_COLOR, ":", "your --lr"),
        (result.suggested_lr, SUGGESTED_COLOR, "--", "suggested"),
        (verified.lr if verified else None, RESOLVED_COLOR, "-", "verified"),
    ):
        if lr is not None and lr > 0:
            # LRs as the terminal report writes them (0.005, 1e-07), not in the loss's number format
            ax.axvline(lr, color=color, linestyle=style, linewidth=1.4, label=f"{words}: lr {lr:.3g}")
    values = [v for _, v in sweep] + [c.loss_after for c in runs]
    bottom, top = min(values), max([result.initial_loss, *[v for _, v in smoothed]] if math.isfinite(result.initial_loss)
                                   else values)
    if _wants_log([bottom, top]):
        ax.set_yscale("log")
        ax.set_ylim(bottom / 1.5, top * 1.5)
    else:
        margin = 0.06 * ((top - bottom) or abs(top) or 1.0)
        ax.set_ylim(bottom - margin, top + margin)  # a diverging raw tail above the smoothed curve is clipped
    xs = [lr for lr, _ in sweep] + [c.lr for c in result.candidates]
    ax.set_xlim(min([result.min_lr, *xs]) / 1.5, max([result.max_lr, *xs]) * 1.5)
    ax.grid(True, color=GRID_COLOR, linewidth=0.6)
    ax.set_axisbelow(True)
    _legend_outside(ax)
    return figure
