"""A hidden layer is much narrower than its neighbours.

## What it detects
In a chain of dense layers, a hidden width far smaller than both the width coming in and the width
going out (784-512-4-512-10: the 4-unit layer).

## Why it matters
Whatever the layers after a bottleneck need must pass through its few units; information that does
not fit is lost for good, however wide the later layers are. Such a layer caps the model's capacity
and, with ReLU, a few dead units can cut the path completely. It is sometimes intended
(autoencoder codes, adapters); if so, ignore it for that layer.

## How it is detected
Consecutive `Linear`-kind layers form a chain when one's `fan_out` equals the next one's `fan_in`.
A hidden width h (the output of a layer that feeds another chained layer) is a bottleneck when
`ratio` x h <= min(width in, width out), with `ratio` = 8. Conv channels are not judged (their
spatial extent carries information too).

Severity: warning: the narrow layer caps what the network can represent.

## Example
`nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 4), nn.ReLU(), nn.Linear(4, 512),
nn.ReLU(), nn.Linear(512, 10))`.

## Fixes
`widen-layer` (applied to a copy under `--try-fixes`: the narrow layer and the next one widened to
the narrower neighbour's width, the existing weights kept).

## Options
`ratio`.

## References
- Géron, "Hands-On Machine Learning", ch. 10 (too few neurons in a layer lose information that
  later layers cannot recover; prefer wide "stretch pants" layers and let regularisation trim).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, records, target
from diagnose.checks._model import DECADES, Measure
from diagnose.checks._signal import by_index
from diagnose.findings import Finding
from diagnose.fixes import Widening
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from probes.records import LayerRecord

ID = "bottleneck-layer"
# 8x narrower than both neighbours. Transformer FFNs widen 4x and come back (never narrower);
# LoRA-style adapters and autoencoder codes are far narrower and deliberate, hence a warning, not an
# error, and per-layer ignores for them.
RATIO = 8.0

THRESHOLDS: dict[str, float] = {"ratio": RATIO}


def bottlenecks(layers: Sequence[LayerRecord], ratio: float = RATIO) -> list[tuple[LayerRecord, LayerRecord]]:
    """(narrow layer, the chained layer reading it) for each bottleneck, in execution order.

    Also what `widen-layer` widens on a copy (diagnose/fixes/architecture.py), so the fix and the check
    agree on which layer is narrow and which one follows it.
    """
    dense = [
        r for r in by_index(layers)
        if r.kind == "linear" and r.weight is not None and r.weight.fan_in and r.weight.fan_out and r.output_shape
    ]
    found = []
    for layer, following in zip(dense, dense[1:]):
        if layer.weight.fan_out != following.weight.fan_in:
            continue
        if ratio * layer.weight.fan_out > min(layer.weight.fan_in, following.weight.fan_out):
            continue
        found.append((layer, following))
    return found


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    findings = []
    for layer, following in bottlenecks(evidence.layers, thresholds["ratio"]):
        width = layer.weight.fan_out
        neighbours = min(layer.weight.fan_in, following.weight.fan_out)
        findings.append(
            Finding(
                id=ID,
                severity=Severity.WARNING,
                title="A hidden layer is a bottleneck",
                message=(
                    f"{layer.name} narrows {layer.weight.fan_in} features to {width} before "
                    f"{following.name} widens them to {following.weight.fan_out}"
                ),
                layers=(layer.name,),
                evidence={
                    "width": width,
                    "width_in": layer.weight.fan_in,
                    "width_out": following.weight.fan_out,
                    "narrowing": neighbours / width,
                    "next_layer": following.name,
                },
            )
        )
    return findings


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("widen-layer",)


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    widths = tuple((r.name, r.weight.fan_out) for r in records(context, finding.layers) if r.weight and r.weight.fan_out)
    evidence = finding.evidence
    widening = None
    if widths and all(isinstance(evidence.get(k), int) for k in ("width_in", "width_out")):
        widening = Widening(layer=widths[0][0], width=widths[0][1], width_in=evidence["width_in"],
                            next_layer=str(evidence.get("next_layer") or "the next layer"),
                            width_out=evidence["width_out"])
    return [Choice("widen-layer", target(context, finding.layers, widths=widths, widening=widening))]


def metric(finding: Finding, evidence: Evidence) -> Measure:
    # how many times narrower than its narrower neighbour the narrowest chained layer is (1: none)
    pairs = bottlenecks(evidence.layers, ratio=1.0)
    narrowing = max((min(a.weight.fan_in, b.weight.fan_out) / a.weight.fan_out for a, b in pairs), default=1.0)
    return Measure("narrowing", narrowing, DECADES)
