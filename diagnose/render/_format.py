"""Number and text formatting shared by the human-readable renderers (terminal, Markdown)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from diagnose.findings import Verification
    from probes.records import LayerRecord

MISSING = "-"
# Plain decimals read best between these bounds; outside them scientific notation keeps the
# column narrow and the order of magnitude (what these reports are about) visible.
PLAIN_MIN = 1e-2
PLAIN_MAX = 1e4
LOSS_DIGITS = 4


def number(value: float | int | None, digits: int = 3) -> str:
    """Compact, order-of-magnitude-first formatting: 0.051, 2.31, 1.2e-07, nan, -."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if PLAIN_MIN <= abs(value) < PLAIN_MAX:
        return f"{value:.{digits}g}"
    return f"{value:.1e}"


def percent(fraction: float | None) -> str:
    if fraction is None:
        return MISSING
    if math.isnan(fraction):
        return "nan"
    return f"{fraction:.0%}"


def value(item: object) -> str:
    """Any evidence value: numbers via `number`, the rest as text."""
    if item is None or isinstance(item, (int, float)):
        return number(item)  # type: ignore[arg-type]
    return str(item)


# A finding's evidence can carry per-layer numbers for dozens of layers; the first few tell the
# story in a human report, and the JSON report keeps them all.
EVIDENCE_ITEMS_SHOWN = 8


def evidence_items(evidence: Mapping[str, object], limit: int | None = EVIDENCE_ITEMS_SHOWN) -> str:
    items = list(evidence.items())
    shown = items if limit is None else items[:limit]
    text = ", ".join(f"{key}={value(item)}" for key, item in shown)
    if len(items) > len(shown):
        text += f" and {len(items) - len(shown)} more (in the JSON report)"
    return text


def layer_list(names: Sequence[str], limit: int = 8) -> str:
    """Up to `limit` names, then how many more: long models must not flood a finding."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def gradient_rms(record: LayerRecord) -> float | None:
    """Parameter-gradient RMS for weighted layers; output-gradient RMS for parameter-free ones."""
    grad = record.gradient
    if record.parameters == 0 and grad.output_rms is not None:
        return grad.output_rms
    return grad.rms if grad.rms is not None else grad.output_rms


def weight_scale(record: LayerRecord) -> str:
    """`0.051 / 0.063 he`: the weight's std against the std its init scheme expects."""
    weight = record.weight
    if weight is None:
        return MISSING
    if weight.expected_std is None:
        return number(weight.std)
    scheme = f" {weight.scheme}" if weight.scheme else ""
    return f"{number(weight.std)} / {number(weight.expected_std)}{scheme}"


def update_ratios(evidence: Evidence) -> dict[str, float | None]:
    """Update ratio per layer name: from the short run's records when there was a run."""
    ratios = {r.name: r.update_ratio for r in evidence.layers}
    ratios.update({r.name: r.update_ratio for r in evidence.run_layers})
    return ratios


def had_run(evidence: Evidence) -> bool:
    return evidence.run.steps > 0 or bool(evidence.run_layers)


def verification_label(verified: Verification) -> str:
    return "verified" if verified.resolved else "tried"


def verification(verified: Verification) -> str:
    """`ratio_first_last 1.0e-09 -> 0.4 (resolved)`, or says why the fix did not cure it."""
    if verified.resolved:
        outcome = "resolved"
    elif verified.loss_worse:
        outcome = "not resolved: training got worse"
    else:
        outcome = "did not help: the check still fires"
    text = f"{verified.metric} {number(verified.before)} -> {number(verified.after)} ({outcome})"
    if verified.note:
        text += f"; {verified.note}"
    return text


def loss_change(verified: Verification) -> str | None:
    """`short-run loss 2.29 -> 1.47`: the unchanged and the fixed copy's loss at the end of the run."""
    if verified.loss_before is None and verified.loss_after is None:
        return None
    before = number(verified.loss_before, LOSS_DIGITS)
    after = number(verified.loss_after, LOSS_DIGITS)
    return f"short-run loss {before} -> {after}"


def shapes(input_shapes: Sequence[Sequence[int]]) -> str:
    if not input_shapes:
        return MISSING
    return ", ".join("[" + ", ".join(str(d) for d in shape) + "]" for shape in input_shapes)


def run_description(evidence: Evidence) -> str:
    run = evidence.run
    if run.steps <= 0:
        return "one forward + backward at initialisation (no training steps)"
    batch = "on one fixed batch" if run.fixed_batch else "on fresh batches"
    plural = "s" if run.steps != 1 else ""
    return f"{run.steps} step{plural} of {run.optimizer} at lr {number(run.lr)} {batch}"


def loss_description(evidence: Evidence) -> str:
    loss = evidence.loss
    if loss is None:
        return evidence.run.loss
    parts = [loss.kind]
    if loss.initial is not None:
        # Four digits: the initial loss is read against chance level (ln 10 = 2.3026), and three
        # would round a healthy 2.3026 and a suspicious 2.2960 to the same 2.3.
        initial = f"initial {number(loss.initial, LOSS_DIGITS)}"
        if loss.expected_initial is not None:
            initial += f" (chance {number(loss.expected_initial, LOSS_DIGITS)})"
        parts.append(initial)
    if loss.final is not None and len(loss.history) > 1:
        parts.append(f"final {number(loss.final, LOSS_DIGITS)}")
    if loss.model_computed:
        parts.append("computed by the model")
    return ", ".join(parts)


def summary_counts(errors: int, warnings: int, infos: int) -> str:
    def plural(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    return f"{plural(errors, 'error')}, {plural(warnings, 'warning')}, {plural(infos, 'info')}"
