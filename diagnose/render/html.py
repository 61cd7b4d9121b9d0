"""The HTML report: one self-contained page (inline CSS, figures as base64 PNG) that opens from a CI artifact.

Nothing on the page is fetched: no script, font, stylesheet or image from elsewhere, so it
renders offline and from a sandboxed artifact viewer. Every string that came from the model or
the user (layer names, messages, paths, snippets) goes through `html.escape`. The markup is
XHTML-compatible (void elements closed, only XML's own entities), so an XML parser reads it too.
"""

from __future__ import annotations

import base64
import html
from diagnose.findings import Finding, FixSuggestion
from diagnose.render import _format as fmt
from diagnose.render import figures as fig
from diagnose.report import Report
from diagnose.severity import Severity

_SEVERITY_ORDER = (Severity.ERROR, Severity.WARNING, Severity.INFO)
_STATUS_WORD = {"error": "FAILING", "warning": "WARNINGS", "healthy": "HEALTHY"}
# The figures are drawn at PNG_DPI for sharp text on high-density screens and shown at this
# many CSS pixels per inch, the browser's nominal 96.
_CSS_DPI = 96
# A finding can name hundreds of layers; the first ones show inline, the rest behind a <details>.
LAYERS_INLINE = 12

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1120px; padding: 16px 24px 48px; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; word-break: break-all; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin: 0 0 0.3em; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.9em; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 4px; padding: 8px 10px; overflow-x: auto; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 0.8em;
         font-weight: 600; vertical-align: middle; }
.error { background: #c8102e; } .warning { background: #b86e00; } .info { background: #1f5fa8; }
.healthy { background: #2e8b3d; }
.facts { color: #444; }
.facts dt { font-weight: 600; float: left; clear: left; width: 7em; }
.facts dd { margin-left: 7.5em; }
.finding { border: 1px solid #ddd; border-left-width: 5px; border-radius: 4px; padding: 10px 14px; margin: 12px 0; }
.finding.sev-error { border-left-color: #c8102e; } .finding.sev-warning { border-left-color: #b86e00; }
.finding.sev-info { border-left-color: #1f5fa8; }
.finding .message { margin: 0.3em 0; }
.muted { color: #666; font-size: 0.92em; }
.fixes li { margin-bottom: 0.8em; }
details summary { cursor: pointer; color: #444; }
.resolved { color: #2e8b3d; font-weight: 600; } .unresolved { color: #c8102e; font-weight: 600; }
figure { margin: 18px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border-bottom: 1px solid #eee; padding: 2px 8px; text-align: right; }
th.text, td.text { text-align: left; }
tr.flagged td { background: #fdecee; }
blockquote { margin: 6px 0; padding: 2px 10px; border-left: 3px solid #ccc; color: #444; }
"""


def render_html(report: Report) -> str:
    """The whole page as a string (needs the `diagnose[plot]` extra for its figures)."""
    fig.require_matplotlib("--html")
    ev = report.evidence
    title = f"diagnose: {ev.model.source or '<model>'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8" />',
        '<meta name="viewport" content="width=device-width, initial-scale=1" />',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        *_header(report),
        '<nav class="muted"><a href="#verdict">Verdict</a> | <a href="#findings">Findings</a> | '
        '<a href="#figures">Figures</a> | <a href="#layers">Layers</a></nav>',
        *_verdict(report),
        *_findings(report),
        *_figures(report),
        *_layer_table(report),
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _header(report: Report) -> list[str]:
    ev = report.evidence
    status = report.status
    model = ev.model
    trainable = "" if model.trainable_parameters == model.parameters else f" ({fmt.number(model.trainable_parameters)} trainable)"
    facts = [
        ("model", f"{model.format}, {fmt.number(model.parameters)} parameters{trainable}, {model.layers} probed layers"),
        ("inputs", f"{ev.run.inputs} {fmt.shapes(ev.run.input_shapes)}"),
        ("loss", fmt.loss_description(ev)),
        ("run", f"{fmt.run_description(ev)} on {ev.run.device}, seed {ev.run.seed}"),
    ]
    if report.elapsed_s is not None:
        facts.append(("took", f"{report.elapsed_s:.1f} s"))
    lines = [
        "<header>",
        f'<h1>diagnose: <code>{_e(model.source or "<model>")}</code> '
        f'<span class="badge {_e(status)}">{_e(_STATUS_WORD.get(status, status.upper()))}</span></h1>',
        '<dl class="facts">',
    ]
    lines += [f"<dt>{_e(name)}</dt><dd>{_e(text)}</dd>" for name, text in facts]
    lines += ["</dl>", "</header>"]
    return lines


def _verdict(report: Report) -> list[str]:
    counts = fmt.summary_counts(report.errors, report.warnings, report.infos)
    checks = f", {len(report.checks_run)} checks ran" if report.checks_run else ""
    lines = [
        '<section id="verdict">',
        "<h2>Verdict</h2>",
        f'<p>Status: <span class="badge {_e(report.status)}">{_e(report.status)}</span> ({_e(counts)}{_e(checks)}).</p>',
    ]
    ev = report.evidence
    lines += [f"<blockquote>Limitation: {_e(text)}</blockquote>" for text in ev.model.limitations]
    lines += [f"<blockquote>Note: {_e(text)}</blockquote>" for text in report.notes]
    lines += [
        f"<blockquote>Not judged: <code>{_e(check_id)}</code> had nothing to judge: {_e(reason)}</blockquote>"
        for check_id, reason in report.checks_not_judged
    ]
    lines.append("</section>")
    return lines


def _findings(report: Report) -> list[str]:
    lines = ['<section id="findings">', "<h2>Findings</h2>"]
    findings = sorted(report.findings, key=lambda f: _SEVERITY_ORDER.index(f.severity))
    if not findings:
        lines.append("<p>No findings.</p>")
    for finding in findings:
        lines += _finding(finding)
    lines.append("</section>")
    return lines


def _finding(finding: Finding) -> list[str]:
    severity = finding.severity.value
    lines = [
        f'<article class="finding sev-{_e(severity)}" id="finding-{_e(finding.id)}">',
        f'<h3><span class="badge {_e(severity)}">{_e(severity)}</span> <code>{_e(finding.id)}</code>: '
        f"{_e(finding.title)}</h3>",
        f'<p class="message">{_e(finding.message)}</p>',
    ]
    if finding.layers:
        # a div, not a p: the names past LAYERS_INLINE sit in a <details>, which a <p> may not hold
        lines.append(f'<div class="muted">Layers: {_layer_names(finding.layers)}</div>')
    if finding.evidence:
        lines.append(f'<p class="muted">Evidence: {_e(fmt.evidence_items(finding.evidence, limit=None))}</p>')
    if finding.fixes:
        lines.append('<ol class="fixes">')
        for rank, fix in enumerate(finding.fixes):
            lines += _fix(fix, snippet_open=rank == 0)
        lines.append("</ol>")
    lines.append("</article>")
    return lines


def _layer_names(names: tuple[str, ...]) -> str:
    shown = ", ".join(f"<code>{_e(name)}</code>" for name in names[:LAYERS_INLINE])
    rest = names[LAYERS_INLINE:]
    if not rest:
        return shown
    hidden = ", ".join(f"<code>{_e(name)}</code>" for name in rest)
    return f"{shown} <details><summary>and {len(rest)} more</summary>{hidden}</details>"


def _fix(fix: FixSuggestion, *, snippet_open: bool) -> list[str]:
    """One fix; its snippet shown for the best fix, folded for the others (as the terminal does)."""
    lines = [f"<li><strong>{_e(fix.title)}</strong> (<code>{_e(fix.id)}</code>)"]
    if fix.rationale:
        lines.append(f"<br />{_e(fix.rationale)}")
    verified = fix.verified
    if verified is not None:
        outcome_class = "resolved" if verified.resolved else "unresolved"
        label = fmt.verification_label(verified).capitalize()
        loss = fmt.loss_change(verified)
        lines.append(
            f'<br /><span class="{outcome_class}">{_e(label)}:</span> {_e(fmt.verification(verified))}'
            + (f"; {_e(loss)}" if loss else "")
        )
    elif fix.not_verified:
        lines.append(f'<br /><span class="muted">Not tried: {_e(fix.not_verified)}</span>')
    if fix.snippet and snippet_open:
        lines.append(f"<pre><code>{_e(fix.snippet)}</code></pre>")
    elif fix.snippet:
        lines.append(f"<details><summary>snippet</summary><pre><code>{_e(fix.snippet)}</code></pre></details>")
    lines.append("</li>")
    return lines


def _figures(report: Report) -> list[str]:
    lines = ['<section id="figures">', "<h2>Figures</h2>"]
    for named in fig.build_figures(report):
        png = fig.png_bytes(named.figure)
        width_in, height_in = named.figure.get_size_inches()
        data = base64.b64encode(png).decode("ascii")
        lines += [
            f'<figure id="figure-{_e(named.name)}">',
            f'<img src="data:image/png;base64,{data}" alt="{_e(named.caption)}" '
            f'width="{round(width_in * _CSS_DPI)}" height="{round(height_in * _CSS_DPI)}" />',
            f"<figcaption>{_e(named.caption)} (<code>{_e(named.name)}.png</code> with --plot DIR)</figcaption>",
            "</figure>",
        ]
    lines.append("</section>")
    return lines


def _layer_table(report: Report) -> list[str]:
    ev = report.evidence
    if not ev.layers:
        return []
    flagged = fig.flagged_positions(report)
    show_updates = fmt.had_run(ev)
    ratios = fmt.update_ratios(ev)
    header = ["#", "layer", "type", "act std", "dead", "sat", "grad rms", "weight std / expected"]
    if show_updates:
        header.append("update")
    text_columns = {"layer", "type", "weight std / expected"}
    lines = [
        '<section id="layers">',
        "<h2>Layers</h2>",
        f"<details><summary>Per-layer statistics ({len(ev.layers)} layers, in execution order; "
        "# is the x axis of the depth figures; highlighted rows are named by an error or warning)</summary>",
        "<table>",
        "<thead><tr>" + "".join(_cell("th", h, h in text_columns) for h in header) + "</tr></thead>",
        "<tbody>",
    ]
    for position, record in enumerate(ev.layers):
        act = record.activation
        row = [
            str(position),
            record.name,
            record.type,
            fmt.number(act.std),
            fmt.percent(act.dead_fraction),
            fmt.percent(act.saturated_fraction),
            fmt.number(fmt.gradient_rms(record)),
            fmt.weight_scale(record),
        ]
        if show_updates:
            row.append(fmt.number(ratios.get(record.name)))
        row_class = ' class="flagged"' if position in flagged else ""
        lines.append(f"<tr{row_class}>" + "".join(_cell("td", c, h in text_columns) for c, h in zip(row, header)) + "</tr>")
    lines += ["</tbody>", "</table>", "</details>", "</section>"]
    return lines


def _cell(tag: str, text: str, is_text: bool) -> str:
    css = ' class="text"' if is_text else ""
    return f"<{tag}{css}>{_e(text)}</{tag}>"


def _e(text: object) -> str:
    """Escaped for element content and for quoted attribute values."""
    return html.escape(str(text), quote=True)
