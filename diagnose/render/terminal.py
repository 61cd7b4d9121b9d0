"""The human report for a terminal: header, per-layer table with log-scale bars, findings, summary.

`render_terminal(report)` returns a string. It is plain text (no ANSI codes) unless `color=True`,
and pure ASCII when `ascii_only=True` (for consoles that cannot print block characters). The
width is fixed (120 by default) so the output is reproducible; the CLI passes the terminal's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from io import StringIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from diagnose.findings import Finding, FixSuggestion
from diagnose.render import _format as fmt
from diagnose.report import Report
from diagnose.severity import Severity

DEFAULT_WIDTH = 120
# Eight cells of eighth-blocks give 64 distinguishable lengths: enough to see a trend across
# depth, narrow enough to leave room for the numbers on a 120-column terminal.
BAR_CELLS = 8
# The bars span at least this many decades, so a model whose layers all sit within a factor of
# two does not look like a dramatic slope; vanishing/exploding trends span 3+ decades.
MIN_BAR_SPAN_DECADES = 2.0
# Long layer names (HF-style "model.encoder.layers.11.attention.output.dense") are cut with an
# ellipsis rather than wrapped, so each layer stays on one row: the name column is the only one
# that gives up width when the table does not fit, the numbers never do.
TYPE_MAX_WIDTH = 14
# On a narrow terminal the name still keeps this much; the other columns shrink instead.
NAME_MIN_WIDTH = 16

_EIGHTHS = " ▏▎▍▌▋▊▉█"
# box.SIMPLE_HEAD (a rule under the header, nothing else) drawn with "-" for ASCII-only consoles.
_ASCII_SIMPLE_HEAD = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)
_SEVERITY_ORDER = (Severity.ERROR, Severity.WARNING, Severity.INFO)
_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.INFO: "bold blue"}
_STATUS_STYLE = {"error": "bold red", "warning": "bold yellow", "healthy": "bold green"}


def render_terminal(
    report: Report, *, width: int = DEFAULT_WIDTH, color: bool = False, ascii_only: bool = False
) -> str:
    buffer = StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        color_system="auto" if color else None,
        no_color=not color,
        markup=False,
        emoji=False,
        highlight=False,
        legacy_windows=False,
    )
    console.print(_header(report))
    console.print()
    console.print(_layer_table(report, ascii_only=ascii_only, width=width))
    console.print()
    console.print(_findings(report.findings))
    console.print(_summary(report))
    text = buffer.getvalue()
    if color:
        return text
    # Rich pads every line to the console width; trailing blanks only make diffs noisy.
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _header(report: Report) -> RenderableType:
    ev = report.evidence
    model, run = ev.model, ev.run
    title = Text.assemble(("diagnose", "bold"), f" {_version()}  ", (model.source or "<model>", "bold"), f" ({model.format})")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    trainable = ""
    if model.trainable_parameters != model.parameters:
        trainable = f" ({fmt.number(model.trainable_parameters)} trainable)"
    grid.add_row("model", f"{fmt.number(model.parameters)} parameters{trainable}, {model.layers} probed layers")
    inputs = f"{run.inputs}, shapes {fmt.shapes(run.input_shapes)}"
    if run.batch_size is not None:
        inputs += f", batch {run.batch_size}"
    grid.add_row("inputs", inputs)
    grid.add_row("device", f"{run.device}, seed {run.seed}")
    grid.add_row("loss", fmt.loss_description(ev))
    grid.add_row("run", fmt.run_description(ev))
    for limitation in model.limitations:
        grid.add_row("limitation", Text(limitation, style="yellow"))
    for note in report.notes:
        grid.add_row("note", note)
    return Group(title, grid)


def _version() -> str:
    from diagnose import __version__

    return __version__


def _layer_table(report: Report, *, ascii_only: bool, width: int) -> RenderableType:
    ev = report.evidence
    show_updates = fmt.had_run(ev)
    ratios = fmt.update_ratios(ev)
    grad_rms = [fmt.gradient_rms(r) for r in ev.layers]
    act_bars = log_bars([r.activation.std for r in ev.layers], ascii_only=ascii_only)
    grad_bars = _gradient_bars(ev.layers, grad_rms, ascii_only=ascii_only)

    headers = ["#", "layer", "type", "act std", "", "dead", "sat", "grad rms", "", "weight / expected"]
    if show_updates:
        headers.append("update")
    rows: list[list[str]] = []
    for i, record in enumerate(ev.layers):
        act = record.activation
        row = [
            str(record.index),
            record.name,
            record.type,
            fmt.number(act.std),
            act_bars[i],
            fmt.percent(act.dead_fraction),
            fmt.percent(act.saturated_fraction),
            fmt.number(grad_rms[i]),
            grad_bars[i],
            fmt.weight_scale(record),
        ]
        if show_updates:
            row.append(fmt.number(ratios.get(record.name)))
        rows.append(row)

    natural = [max([len(h)] + [len(row[c]) for row in rows]) for c, h in enumerate(headers)]
    natural[2] = min(natural[2], TYPE_MAX_WIDTH)
    # The name column takes what the others leave (one space between columns), never less than
    # NAME_MIN_WIDTH: rich would otherwise squeeze it to nothing on a narrow terminal.
    others = sum(natural) - natural[1] + len(headers) - 1
    name_width = max(min(natural[1], width - others), min(natural[1], NAME_MIN_WIDTH))
    for row in rows:
        row[1] = shorten_middle(row[1], name_width, ascii_only=ascii_only)
        row[2] = shorten_middle(row[2], natural[2], ascii_only=ascii_only)

    table = Table(
        box=_ASCII_SIMPLE_HEAD if ascii_only else box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=0,
        caption="grad rms: of the parameters; of the output for layers without parameters (own bar scale)"
        + ("; update: |dW|/|W| per step" if show_updates else ""),
        caption_justify="left",
        caption_style="dim",
    )
    numeric = {"#", "act std", "dead", "sat", "grad rms", "update"}
    bar_styles = iter(("cyan", "magenta"))
    for c, header in enumerate(headers):
        table.add_column(
            header,
            justify="right" if header in numeric else "left",
            no_wrap=True,
            overflow="crop",
            width=name_width if c == 1 else natural[c],
            style=next(bar_styles) if header == "" else None,
        )
    for record, row in zip(ev.layers, rows):
        nonfinite = record.activation.nonfinite or record.gradient.nonfinite
        table.add_row(*row, style="red" if nonfinite else None)
    return table


def _gradient_bars(layers, grad_rms: Sequence[float | None], *, ascii_only: bool) -> list[str]:
    """Bars for parameter gradients and for output gradients, each on its own scale.

    The two are different quantities (a ReLU's output gradient is often 100x smaller than the
    next Linear's weight gradient); on one shared scale the parameter-free rows would look like
    dips and hide the trend over depth that the bars are there to show.
    """
    bars = [""] * len(layers)
    for output_only in (False, True):
        indices = [i for i, r in enumerate(layers) if (r.parameters == 0) is output_only]
        for i, bar in zip(indices, log_bars([grad_rms[i] for i in indices], ascii_only=ascii_only)):
            bars[i] = bar
    return bars


def shorten_middle(text: str, width: int, *, ascii_only: bool = False) -> str:
    """Cut the middle out of a long name: both ends of "encoder.layers.11.attention.output.dense"
    matter (which block, which sublayer), the middle repeats across rows."""
    if len(text) <= width:
        return text
    mark = "..." if ascii_only else "…"
    if width <= len(mark):
        return text[:width]
    keep = width - len(mark)
    head = keep // 2
    return text[:head] + mark + text[len(text) - (keep - head):]


def log_bars(values: Sequence[float | None], *, ascii_only: bool = False, cells: int = BAR_CELLS) -> list[str]:
    """One bar per value, its length the value's position on a log10 scale over all the values.

    Missing and zero values get an empty bar, NaN/Inf a `!` (they have no place on the scale).
    """
    logs = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not logs:
        return [_blank_or_bang(v, cells) for v in values]
    high = max(logs)
    low = min(min(logs), high - MIN_BAR_SPAN_DECADES)
    span = high - low
    bars = []
    for v in values:
        if v is None or not math.isfinite(v) or v <= 0:
            bars.append(_blank_or_bang(v, cells))
            continue
        fraction = (math.log10(v) - low) / span
        bars.append(_bar(fraction, cells, ascii_only))
    return bars


def _blank_or_bang(value: float | None, cells: int) -> str:
    if value is not None and not math.isfinite(value):
        return "!".ljust(cells)
    return " " * cells


def _bar(fraction: float, cells: int, ascii_only: bool) -> str:
    if ascii_only:
        length = max(1, round(fraction * cells))
        return ("#" * length).ljust(cells)
    eighths = max(1, round(fraction * cells * 8))  # a positive value always shows something
    full, partial = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[partial] if partial else "")
    return bar.ljust(cells)


def _findings(findings: Sequence[Finding]) -> RenderableType:
    if not findings:
        return Text("No findings: nothing in these probes says this network will fail to train.\n", style="green")
    parts: list[RenderableType] = []
    for severity in _SEVERITY_ORDER:
        for finding in (f for f in findings if f.severity is severity):
            parts.append(_finding(finding))
    return Group(*parts)


def _finding(finding: Finding) -> RenderableType:
    style = _SEVERITY_STYLE[finding.severity]
    lines: list[RenderableType] = [
        Text.assemble((finding.severity.value.upper(), style), " ", (finding.id, "bold"), f"  {finding.title}"),
    ]
    body: list[RenderableType] = [Text(finding.message)]
    if finding.layers:
        body.append(Text.assemble(("layers: ", "dim"), fmt.layer_list(finding.layers)))
    if finding.evidence:
        body.append(Text.assemble(("evidence: ", "dim"), fmt.evidence_items(finding.evidence)))
    for rank, fix in enumerate(finding.fixes, start=1):
        body.append(_fix(rank, fix))
    lines.append(Padding(Group(*body), (0, 0, 1, 2)))
    return Group(*lines)


def _fix(rank: int, fix: FixSuggestion) -> RenderableType:
    parts: list[RenderableType] = [
        Text.assemble(f"fix {rank}: ", (fix.id, "bold green"), f"  {fix.title}"),
    ]
    details: list[RenderableType] = []
    if fix.rationale:
        details.append(Text(fix.rationale, style="dim"))
    if fix.snippet:
        details.append(Padding(Text(fix.snippet, style="cyan"), (0, 0, 0, 2)))
    if fix.verified is not None:
        style = "green" if fix.verified.resolved else "red"
        details.append(Text.assemble((fmt.verification_label(fix.verified) + ": ", style), fmt.verification(fix.verified)))
    elif fix.not_verified:
        details.append(Text.assemble(("not tried: ", "yellow"), fix.not_verified))
    if details:
        parts.append(Padding(Group(*details), (0, 0, 0, 2)))
    return Group(*parts)


def _summary(report: Report) -> RenderableType:
    status = report.status
    text = Text.assemble(
        ("status: ", "bold"),
        (status, _STATUS_STYLE.get(status, "bold")),
        f"  {fmt.summary_counts(report.errors, report.warnings, report.infos)}",
    )
    if report.checks_run:
        text.append(f"; {len(report.checks_run)} checks ran")
    if report.elapsed_s is not None:
        text.append(f" in {report.elapsed_s:.1f} s")
    return text
