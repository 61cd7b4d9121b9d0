"""The human report for a terminal: verdict, findings, a compact per-layer table, fixes, recap.

`render_terminal(report)` returns a string. It is plain text (no ANSI codes) unless `color=True`,
and pure ASCII when `ascii_only=True` (for consoles that cannot print block characters). The width
is fixed (120 by default) so the output is reproducible; the CLI passes the terminal's own.

Three promises hold at any width (tests check 60 to 200 columns):
- a number or a layer name is never cut: when the table does not fit, whole columns go (type, bars,
  the init scheme's name, the weight column), and if a name still does not fit, each layer takes two
  lines (name, then its numbers);
- code is never wrapped: a snippet's lines are printed as they are, so what a user copies parses;
- the report reads top-down as verdict, findings, evidence, fixes, and ends on a recap, so the last
  screen of a long report says what is wrong and what to try.

The table shows every layer of a small model; a large one gets the layers the findings name plus an
even sample over depth (`verbose=True` shows every layer and every fix's snippet).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import StringIO

from rich.console import Console
from rich.text import Text

from diagnose.findings import Finding, FixSuggestion
from diagnose.render import _format as fmt
from diagnose.report import Report
from diagnose.severity import Severity
from diagnose.version import __version__

DEFAULT_WIDTH = 120
# Eight cells of eighth-blocks give 64 distinguishable lengths: enough to see a trend across
# depth, narrow enough to leave room for the numbers.
BAR_CELLS = 8
# The bars span at least this many decades, so a model whose layers all sit within a factor of
# two does not look like a dramatic slope; vanishing/exploding trends span 3+ decades.
MIN_BAR_SPAN_DECADES = 2.0
# A model up to this many probed layers gets one row per layer: that still fits a screen next to
# the findings. Beyond it the table is a summary of TABLE_ROWS rows (DenseNet-121 has 363 layers;
# a full table buried the diagnosis under it).
FULL_TABLE_MAX = 30
TABLE_ROWS = 24
# Of those rows, at most this many are layers that findings name (half of them from the shallow
# end, half from the deep end); the rest sample the depth evenly, so the trend stays visible.
FLAGGED_ROWS_MAX = 16
# The numbers of a two-line (stacked) row are indented under the name by this much.
STACK_INDENT = 5

_SEVERITY_ORDER = (Severity.ERROR, Severity.WARNING, Severity.INFO)
_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.INFO: "bold blue"}
_STATUS_STYLE = {"error": "bold red", "warning": "bold yellow", "healthy": "bold green"}
# What each status promises about training (the contract's meaning of the severities).
_VERDICT = {
    "error": "this network will not train as configured",
    "warning": "it will train, but worse than it should",
    "healthy": "nothing in these probes says this network will fail to train",
}
_EIGHTHS = " ▏▎▍▌▋▊▉█"


@dataclass(frozen=True, slots=True)
class _Glyphs:
    rule: str
    flagged: str


_UNICODE = _Glyphs(rule="─", flagged="*")
_ASCII = _Glyphs(rule="-", flagged="*")


def render_terminal(
    report: Report, *, width: int = DEFAULT_WIDTH, color: bool = False, ascii_only: bool = False,
    verbose: bool = False,
) -> str:
    glyphs = _ASCII if ascii_only else _UNICODE
    lines: list[Text] = []
    lines += _header(report, width)
    lines.append(Text())
    lines += _findings(report.findings, width)
    lines += _layer_table(report, width=width, glyphs=glyphs, ascii_only=ascii_only, verbose=verbose)
    lines += _how_to_fix(report.findings, width, verbose=verbose)
    lines.append(Text())
    lines += _recap(report, width)
    return _print(_single_blank_lines(lines), width=width, color=color)


def _print(lines: Iterable[Text], *, width: int, color: bool) -> str:
    buffer = StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=color, color_system="auto" if color else None,
        no_color=not color, markup=False, emoji=False, highlight=False, legacy_windows=False,
    )
    for line in lines:
        # soft_wrap: rich neither wraps nor crops; every line was laid out to fit already, and the
        # ones that may not (code, an over-long name) must stay whole.
        console.print(line, soft_wrap=True)
    text = buffer.getvalue()
    return text if color else "\n".join(line.rstrip() for line in text.split("\n"))


def _single_blank_lines(lines: list[Text]) -> list[Text]:
    """Sections end with a blank line; where one is empty, two blanks would meet."""
    out: list[Text] = []
    for line in lines:
        if not line.plain and out and not out[-1].plain:
            continue
        out.append(line)
    return out


# ---------------------------------------------------------------------------------------------
# Prose


def _wrapped(body: str, width: int, *, indent: int = 0, hang: int = 0, label: str = "",
             label_style: str = "dim", style: str | None = None) -> list[Text]:
    """`label + body` wrapped at spaces to `width`; words are never split (a long layer name
    overflows the line instead of losing its middle)."""
    first = " " * indent
    rest = " " * (indent + hang)
    raw = textwrap.wrap(label + body, width=max(width, len(first) + 20), initial_indent=first,
                        subsequent_indent=rest, break_long_words=False, break_on_hyphens=False) or [first]
    out = []
    for i, line in enumerate(raw):
        text = Text(line, style=style or "")
        if i == 0 and label:
            text.stylize(label_style, indent, indent + len(label))
        out.append(text)
    return out


def _header(report: Report, width: int) -> list[Text]:
    ev = report.evidence
    model, run = ev.model, ev.run
    lines = [Text.assemble(("diagnose", "bold"), f" {__version__}  ", (model.source or "<model>", "bold"),
                           f" ({model.format})")]
    status = report.status
    verdict = Text.assemble(("verdict", "dim"), "  ", (status, _STATUS_STYLE.get(status, "bold")),
                            f": {_VERDICT.get(status, status)} ",
                            f"({fmt.summary_counts(report.errors, report.warnings, report.infos)})")
    lines += _fit(verdict, width, hang=len("verdict") + 2)
    trainable = ""
    if model.trainable_parameters != model.parameters:
        trainable = f" ({fmt.number(model.trainable_parameters)} trainable)"
    inputs = f"{run.inputs}, shapes {fmt.shapes(run.input_shapes)}"
    if run.batch_size is not None:
        inputs += f", batch {run.batch_size}"
    rows = [
        ("model", f"{fmt.number(model.parameters)} parameters{trainable}, {model.layers} probed layers"),
        ("inputs", inputs),
        ("device", f"{run.device}, seed {run.seed}"),
        ("loss", fmt.loss_description(ev)),
        ("run", fmt.run_description(ev)),
        *(("limitation", text) for text in model.limitations),
        *(("note", text) for text in report.notes),
    ]
    label_width = max(len(label) for label, _ in rows)
    for label, value in rows:
        style = "yellow" if label == "limitation" else None
        lines += _wrapped(value, width, label=f"{label:<{label_width}}  ", hang=label_width + 2, style=style)
    return lines


def _fit(text: Text, width: int, *, hang: int) -> list[Text]:
    """A styled line wrapped at spaces with a hanging indent; words are never split."""
    if text.cell_len <= width:
        return [text]
    plain = text.plain
    pieces = textwrap.wrap(plain, width=width, subsequent_indent=" " * hang, break_long_words=False,
                           break_on_hyphens=False)
    out, start = [], 0
    for i, piece in enumerate(pieces):
        body = piece[hang:] if i else piece
        at = plain.index(body, start)
        segment = text[at:at + len(body)]
        out.append(Text(" " * hang) + segment if i else segment)
        start = at + len(body)
    return out


# ---------------------------------------------------------------------------------------------
# Findings


def _findings(findings: Sequence[Finding], width: int) -> list[Text]:
    if not findings:
        return [Text("No findings.", style="green"), Text()]
    lines: list[Text] = []
    for finding in _by_severity(findings):
        style = _SEVERITY_STYLE[finding.severity]
        title = Text.assemble((finding.severity.value.upper(), style), " ", (finding.id, "bold"),
                              f"  {finding.title}")
        lines += _fit(title, width, hang=2)
        lines += _wrapped(finding.message, width, indent=2)
        if finding.layers:
            lines += _wrapped(fmt.layer_list(finding.layers), width, indent=2, hang=4, label="layers: ")
        if finding.evidence:
            lines += _wrapped(fmt.evidence_items(finding.evidence), width, indent=2, hang=4, label="evidence: ")
        for rank, fix in enumerate(finding.fixes, start=1):
            lines += _fix_line(rank, fix, width)
        lines.append(Text())
    return lines


def _by_severity(findings: Sequence[Finding]) -> list[Finding]:
    return [f for severity in _SEVERITY_ORDER for f in findings if f.severity is severity]


def _fix_line(rank: int, fix: FixSuggestion, width: int) -> list[Text]:
    lead = f"  fix {rank}: "
    head = Text.assemble(lead, (fix.id, "bold green"), f"  {fix.title}")
    lines = _fit(head, width, hang=len(lead))
    if fix.verified is not None:
        label = fmt.verification_label(fix.verified) + ": "
        style = "green" if fix.verified.resolved else "red"
        text = fmt.verification(fix.verified)
        loss = fmt.loss_change(fix.verified)
        if loss:
            text += f"; {loss}"  # what the user cares about in the end: did training get better
        lines += _wrapped(text, width, indent=4, hang=2, label=label, label_style=style)
    elif fix.not_verified:
        lines += _wrapped(fix.not_verified, width, indent=4, hang=2, label="not tried: ", label_style="yellow")
    return lines


def _how_to_fix(findings: Sequence[Finding], width: int, *, verbose: bool) -> list[Text]:
    """Rationale and snippet of each finding's first fix (every fix with `verbose`), each once.

    Snippets come after the diagnosis, not inside it: the code is long, and read only once the user
    knows which fix to apply.
    """
    shown: set[tuple[str, str]] = set()
    blocks: list[list[Text]] = []
    others = 0
    for finding in _by_severity(findings):
        for rank, fix in enumerate(finding.fixes, start=1):
            if rank > 1 and not verbose:
                others += bool(fix.snippet)
                continue
            key = (fix.id, fix.snippet)
            if key in shown or not (fix.rationale or fix.snippet):
                continue
            shown.add(key)
            block = _fit(Text.assemble((fix.id, "bold green"), f"  {fix.title}", (f"  (for {finding.id})", "dim")),
                         width, hang=2)
            if fix.rationale:
                block += _wrapped(fix.rationale, width, indent=2, hang=0, style="dim")
            if fix.snippet:
                block += _code(fix.snippet, indent=4)
            blocks.append(block)
    if not blocks:
        return []
    lines = [Text("How to apply", style="bold")]
    for block in blocks:
        lines += block
        lines.append(Text())
    if others:
        lines += _wrapped(f"{others} more fix{'es have snippets' if others > 1 else ' has a snippet'}: add --verbose, "
                          "or see the --markdown or --json report.", width, style="dim")
    return lines


def _code(snippet: str, *, indent: int) -> list[Text]:
    """Code lines exactly as written, indented as one block (dedent it and it parses)."""
    pad = " " * indent
    return [Text(pad + line if line.strip() else "", style="cyan") for line in snippet.rstrip("\n").split("\n")]


# ---------------------------------------------------------------------------------------------
# The per-layer table


@dataclass(frozen=True, slots=True)
class _Column:
    key: str
    header: str
    cells: tuple[str, ...]
    right: bool
    style: str | None = None

    @property
    def width(self) -> int:
        return max([len(self.header)] + [len(c) for c in self.cells])


def _layer_table(report: Report, *, width: int, glyphs: _Glyphs, ascii_only: bool, verbose: bool) -> list[Text]:
    ev = report.evidence
    layers = ev.layers
    if not layers:
        return []
    flagged = _flagged_indices(report)
    shown = list(range(len(layers))) if verbose or len(layers) <= FULL_TABLE_MAX else _sample_rows(layers, flagged)
    columns = _columns(report, shown, flagged, glyphs=glyphs, ascii_only=ascii_only)
    layout = _choose_layout(columns, width)
    nonfinite = [bool(layers[i].activation.nonfinite or layers[i].gradient.nonfinite) for i in shown]

    lines = _table_lines(layout, shown, nonfinite, glyphs, width)
    caption = "grad rms: of the parameters; of the output for layers without parameters (own bar scale)"
    if fmt.had_run(ev):
        caption += "; update: |dW|/|W| per step"
    if flagged and any(c.key == "mark" for c in layout.columns):
        caption += f"; {glyphs.flagged} a layer a finding names"
    if len(shown) < len(layers):
        named = len([i for i in shown if i in flagged])
        caption += (f". {len(shown)} of {len(layers)} layers: " + (f"the {named} findings name and " if named else "")
                    + "an even sample of the weighted layers over depth (see #); --verbose shows all")
    lines += _wrapped(caption, width, style="dim")
    lines.append(Text())
    return lines


def _flagged_indices(report: Report) -> set[int]:
    """Table positions of layers a finding names, or whose numbers are not finite."""
    names = {name for finding in report.findings if finding.severity is not Severity.INFO for name in finding.layers}
    return {i for i, r in enumerate(report.evidence.layers)
            if r.name in names or r.activation.nonfinite or r.gradient.nonfinite}


def _sample_rows(layers: Sequence, flagged: set[int]) -> list[int]:
    """TABLE_ROWS positions: flagged layers (shallow and deep ends first), the first and last layer,
    and for the rest an even spread over depth of the weighted layers (their gradient, weight scale
    and update say the most; a norm or activation layer's numbers follow from its neighbours)."""
    ordered = sorted(flagged)
    if len(ordered) > FLAGGED_ROWS_MAX:
        half = FLAGGED_ROWS_MAX // 2
        ordered = ordered[:half] + ordered[-half:]
    chosen = set(ordered) | {0, len(layers) - 1}
    weighted = [i for i, r in enumerate(layers) if r.kind in _WEIGHTED_KINDS] or list(range(len(layers)))
    pool = [i for i in weighted if i not in chosen]
    free = TABLE_ROWS - len(chosen)
    if free >= len(pool):
        chosen |= set(pool)
    elif free > 0:
        step = len(pool) / free
        chosen |= {pool[int(step * k + step / 2)] for k in range(free)}
    return sorted(chosen)


def _columns(report: Report, shown: Sequence[int], flagged: set[int], *, glyphs: _Glyphs,
             ascii_only: bool) -> list[_Column]:
    ev = report.evidence
    layers = ev.layers
    ratios = fmt.update_ratios(ev)
    grad_rms = [fmt.gradient_rms(r) for r in layers]
    # Bars are scaled over every layer, shown or not, so a sampled table reads on the same scale.
    act_bars = log_bars([r.activation.std for r in layers], ascii_only=ascii_only)
    grad_bars = _gradient_bars(layers, grad_rms, ascii_only=ascii_only)
    rows = [layers[i] for i in shown]
    columns = [_Column("index", "#", tuple(str(r.index) for r in rows), right=True)]
    if flagged:
        columns.append(_Column("mark", "", tuple(glyphs.flagged if i in flagged else " " for i in shown), right=False,
                               style="bold"))
    columns += [
        _Column("name", "layer", tuple(r.name for r in rows), right=False),
        _Column("type", "type", tuple(r.type for r in rows), right=False),
        _Column("act", "act std", tuple(fmt.number(r.activation.std) for r in rows), right=True),
        _Column("act_bar", "", tuple(act_bars[i] for i in shown), right=False, style="cyan"),
        _Column("dead", "dead", tuple(fmt.percent(r.activation.dead_fraction) for r in rows), right=True),
        _Column("sat", "sat", tuple(fmt.percent(r.activation.saturated_fraction) for r in rows), right=True),
        _Column("grad", "grad rms", tuple(fmt.number(grad_rms[i]) for i in shown), right=True),
        _Column("grad_bar", "", tuple(grad_bars[i] for i in shown), right=False, style="magenta"),
        _Column("weight", "weight / expected", tuple(fmt.weight_scale(r) for r in rows), right=False),
    ]
    if fmt.had_run(ev):
        columns.append(_Column("update", "update", tuple(fmt.number(ratios.get(r.name)) for r in rows), right=True))
    return columns


@dataclass(frozen=True, slots=True)
class _Layout:
    columns: tuple[_Column, ...]
    name_width: int  # a longer name takes a line of its own, its numbers on the next
    stacked: bool  # every layer on two lines: index and name, then the numbers
    types: tuple[str, ...] = ()  # the layer types, when stacked without a type column


# What goes, in order, when the table is wider than the terminal: the least informative first.
# The activation bar repeats the number beside it; the type is in the name most of the time; the
# gradient bar (the flow over depth at a glance) next; the scheme's name (he/glorot) is in the
# findings that need it; the weight column last.
_SHEDDING = ("act_bar", "type", "grad_bar", "weight_scheme", "weight")
# A layout keeps names inline when all but this share of them (and at least one) fit the name
# column: a few long names wrap onto their own line rather than costing every row its bars.
WRAPPED_NAME_SHARE = 0.1
_NAME_KEYS = ("index", "mark", "name")
_WEIGHTED_KINDS = frozenset({"linear", "conv", "embedding", "recurrent", "attention"})


def _choose_layout(columns: list[_Column], width: int) -> _Layout:
    current = list(columns)
    candidates = [tuple(current)]
    for step in _SHEDDING:
        current = _shed(current, step)
        candidates.append(tuple(current))
    names = sorted(len(cell) for c in columns if c.key == "name" for cell in c.cells)
    longest = names[-1]
    typical = names[max(0, len(names) - 1 - max(1, int(WRAPPED_NAME_SHARE * len(names))))]
    for need in (longest, typical):
        for candidate in candidates:
            room = width - _line_width([c for c in candidate if c.key != "name"]) - 1
            if room >= need:
                return _Layout(candidate, name_width=min(room, longest), stacked=False)
    types = next((c.cells for c in columns if c.key == "type"), ())
    for candidate in candidates:
        if STACK_INDENT + _line_width(_numbers(candidate)) <= width:
            return _Layout(candidate, name_width=0, stacked=True,
                           types=() if any(c.key == "type" for c in candidate) else types)
    # narrower than any layout: the lines run over
    return _Layout(candidates[-1], name_width=0, stacked=True, types=types)


def _numbers(columns: Sequence[_Column]) -> list[_Column]:
    return [c for c in columns if c.key not in _NAME_KEYS]


def _shed(columns: list[_Column], step: str) -> list[_Column]:
    if step == "weight_scheme":
        return [_Column(c.key, "weight / exp.", tuple(_without_scheme(cell) for cell in c.cells), right=False)
                if c.key == "weight" else c for c in columns]
    return [c for c in columns if c.key != step]


def _without_scheme(cell: str) -> str:
    """`0.072 / 0.125 glorot` -> `0.072/0.125`."""
    parts = cell.split(" ")
    return f"{parts[0]}/{parts[2]}" if len(parts) >= 3 and parts[1] == "/" else cell


def _line_width(columns: Sequence[_Column]) -> int:
    return sum(c.width for c in columns) + max(len(columns) - 1, 0)


def _table_lines(layout: _Layout, shown: Sequence[int], nonfinite: Sequence[bool], glyphs: _Glyphs,
                 width: int) -> list[Text]:
    columns = layout.columns
    widths = [layout.name_width if c.key == "name" else c.width for c in columns]
    heads = [c for c in columns if c.key in _NAME_KEYS]
    numbers = _numbers(columns)
    if layout.stacked:
        header = [_row_text(heads, [c.header for c in heads], [0] * len(heads)),
                  Text(" " * STACK_INDENT) + _row_text(numbers, [c.header for c in numbers], [c.width for c in numbers])]
        rule_width = STACK_INDENT + _line_width(numbers)
    else:
        header = [_row_text(columns, [c.header for c in columns], widths)]
        rule_width = sum(widths) + len(widths) - 1
    lines = header + [Text(glyphs.rule * min(width, rule_width))]
    for row, position in enumerate(shown):
        style = "red" if nonfinite[row] else None
        cells = [c.cells[row] for c in columns]
        name = next(cell for c, cell in zip(columns, cells) if c.key == "name")
        if layout.stacked or len(name) > layout.name_width:
            # the whole name on its own line, the numbers under it: a name is never cut
            head_cells = [cell for c, cell in zip(columns, cells) if c.key in _NAME_KEYS]
            name_line = _row_text(heads, head_cells, [c.width if c.key != "name" else 0 for c in heads])
            if layout.stacked and layout.types:
                name_line.append(f" ({layout.types[row]})", style="dim")  # the type column went; its word stays
            lines.append(_styled(name_line, style))
            if layout.stacked:
                lines.append(_styled(Text(" " * STACK_INDENT) + _row_text(
                    numbers, [c.cells[row] for c in numbers], [c.width for c in numbers]), style))
            else:
                blanked = ["" if c.key in _NAME_KEYS else cell for c, cell in zip(columns, cells)]
                lines.append(_styled(_row_text(columns, blanked, widths), style))
        else:
            lines.append(_styled(_row_text(columns, cells, widths), style))
    return lines


def _row_text(columns: Sequence[_Column], cells: Sequence[str], widths: Sequence[int]) -> Text:
    text = Text()
    for k, (column, cell, cell_width) in enumerate(zip(columns, cells, widths)):
        if k:
            text.append(" ")
        padded = cell.rjust(cell_width) if column.right else cell.ljust(cell_width)
        text.append(padded, style=column.style or "")
    return text


def _styled(text: Text, style: str | None) -> Text:
    if style:
        text.stylize(style)
    return text


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


# ---------------------------------------------------------------------------------------------
# Recap


def _recap(report: Report, width: int) -> list[Text]:
    """The last lines on the screen: status, counts, and one line per error or warning."""
    status = report.status
    text = Text.assemble(("status: ", "bold"), (status, _STATUS_STYLE.get(status, "bold")),
                         f"  {fmt.summary_counts(report.errors, report.warnings, report.infos)}")
    if report.checks_run:
        text.append(f"; {len(report.checks_run)} checks ran")
    if report.elapsed_s is not None:
        text.append(f" in {report.elapsed_s:.1f} s")
    lines = _fit(text, width, hang=2)
    reasons: dict[str, list[str]] = {}
    for check_id, reason in report.checks_not_judged:
        reasons.setdefault(reason, []).append(check_id)
    for reason, ids in reasons.items():
        lines += _wrapped(f"{', '.join(ids)} had nothing to judge: {reason}", width, indent=2, hang=2,
                          label=f"{len(ids)} not judged: ", label_style="yellow")
    serious = [f for f in _by_severity(report.findings) if f.severity is not Severity.INFO]
    id_width = max((len(f.id) for f in serious), default=0)
    for finding in serious:
        line = Text.assemble("  ", (f"{finding.severity.value:<7}", _SEVERITY_STYLE[finding.severity]), " ",
                             f"{finding.id:<{id_width}}")
        if finding.fixes:
            top = finding.fixes[0]
            outcome = ""
            if top.verified is not None:
                outcome = " (verified)" if top.verified.resolved else " (tried: did not cure it)"
            line.append(f"  try {top.id}{outcome}")
        lines += _fit(line, width, hang=4)
    return lines
