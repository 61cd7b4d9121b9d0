"""The export archive was made in eval mode, so its batch norm never trains.

## What it detects
A `torch.export` archive (`.pt2`) whose graph runs its batch-norm layers in inference mode: the
model was exported after `.eval()`, as the torch.export tutorials do for deployment.

## Why it matters
Export records the mode the model is in. After `.eval()` every batch norm is baked into the graph
as "normalise with the running statistics", and calling `.train()` on the loaded module does not
undo it. At initialisation those statistics are mean 0 and variance 1, so the layers normalise
nothing: the graph is the network without its batch norm, and any diagnosis of it (vanishing
gradients, dead units, missing gradients) describes a network you do not train. Such an archive is
the right thing to deploy and the wrong thing to diagnose.

## How it is detected
When the archive loads, the exported graph is read: each `batch_norm` op whose `training`
argument is False (or an `_native_batch_norm_legit_no_training` op) counts. The check fires when
every batch-norm op of the graph is frozen: a train-mode export in which some batch norms were
frozen on purpose (fine-tuning with frozen statistics) keeps the others training, and is left
alone. Findings of the checks that measure gradient flow, activations, initialisation and the
short run are then withdrawn (they would describe the frozen graph), and the report says how many.
`non-finite`, `output-loss-mismatch` and `unnormalized-inputs` still report: they do not depend on
the normalisation mode.

Severity: error (what the archive trains is not the user's network; nothing measured on it can be
trusted as a diagnosis).

## Example
`torchvision.models.mobilenet_v3_small()`, then `model.eval()`,
`torch.export.save(torch.export.export(model, (x,)), "m.pt2")`: 34 frozen batch-norm ops.

## Fixes
No catalog fix applies: export the model in training mode for diagnosis (`model.train()` before
`torch.export.export`), or point `diagnose check` at the factory that builds it
(`pkg.module:build`).

## Options
None.

## References
- PyTorch docs, "torch.export": the exported program captures the module's mode; `.train()` /
  `.eval()` on an exported module are not supported.
- Ioffe & Szegedy, "Batch Normalization", ICML 2015 (batch statistics in training, population
  statistics at inference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "eval-mode-export"
THRESHOLDS: dict[str, float] = {}

# What this finding withdraws: every check whose measurement depends on batch norm normalising.
SUPERSEDES = (
    "no-gradient", "vanishing-gradients", "exploding-gradients", "dead-relu", "saturated-activations",
    "activation-variance-collapse", "activation-variance-explosion", "residual-stream-growth",
    "poor-initialization", "selu-misconfigured", "bad-initial-loss", "bottleneck-layer", "lr-too-high",
    "lr-too-low", "loss-not-decreasing", "adagrad-deep-network",
)


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    frozen = evidence.model.frozen_norms
    if frozen <= 0:
        return []
    return [Finding(
        id=ID,
        severity=Severity.ERROR,
        title="The archive was exported in eval mode",
        message=(
            f"{frozen} batch-norm op{'s' if frozen != 1 else ''} in this archive normalise{'s' if frozen == 1 else ''} "
            "with frozen running statistics (the model was "
            "exported after .eval()), so it does not train as your model does; call model.train() before "
            "torch.export.export, or diagnose the factory that builds the model"
        ),
        evidence={"frozen_batch_norm_ops": frozen},
    )]


# The graph is not the one the user trains: nothing measured on it can be trusted to move.
STOPS_LEARNING = True

# The archive must be exported again from the model in train mode: no catalog fix applies to it;
# the finding's message says how.
NO_FIX = "re-export in train mode: the message says how"
