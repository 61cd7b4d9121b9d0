"""Apply one catalog fix to a fresh copy of a model, so `--try-fixes` can measure its effect.

`apply_fix(fix_id, module, workload, layers)` runs the fix's own applier (`Fix.apply`, defined in
its catalog module next to its doc and snippet) and returns a `FixTrial`: a fixed deep copy of the
module plus the workload to run it with (a fix may change the model, the optimiser settings or the
batch). The user's module is never modified. A fix that cannot be applied to this model
automatically raises `FixNotApplicable` with the reason in one sentence; so does one that no program
can apply soundly (`Fix.not_applicable`).

`layers` are the probe records of the original model at initialisation: they say which weighted
layer is the output layer, which activation runs after it (left alone: it defines the output's
range, not the hidden dynamics), and how many functional activation calls one forward makes.
`run` is the unchanged copy's short run under the same workload: a fix whose setting is measured
(gradient clipping's threshold) reads it there, and its trial carries the snippet with that value.

Importing this module does not import torch; the appliers import it when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from diagnose.evidence import LossTrace
    from diagnose.run import Workload
    from probes.records import LayerRecord

    # What changes a copy of the model in place and says what it did, in words.
    ModelChange = Callable[[str, nn.Module, Sequence[LayerRecord]], str]


class FixNotApplicable(Exception):
    """This fix cannot be applied automatically to this model; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FixTrial:
    """A fixed copy of the model and the workload to measure it with."""

    module: nn.Module
    workload: Workload
    change: str  # what was done, in words: "replaced 7 sigmoid activations with relu; He init on 8 layers"
    snippet: str | None = None  # the fix's snippet for the values measured here (None: the recommender's stands)


def apply_fix(
    fix_id: str, module: nn.Module, workload: Workload, layers: Sequence[LayerRecord], run: LossTrace | None = None
) -> FixTrial:
    """Apply `fix_id` to a deep copy of `module` (and/or to the workload); raise FixNotApplicable."""
    # Imported here: the catalog modules import this one for FixTrial and FixNotApplicable.
    from diagnose.fixes.catalog import FIXES

    fix = FIXES.get(fix_id)
    if fix is None:
        raise FixNotApplicable(f"diagnose does not know how to apply {fix_id!r} automatically")
    if fix.apply is None:
        raise FixNotApplicable(fix.not_applicable)
    return fix.apply(fix_id, module, workload, layers, run)


def on_a_copy(change: ModelChange) -> Callable[..., FixTrial]:
    """The applier of a fix that changes the model: `change(fix_id, copy, layers)` runs on a deep copy,
    with the workload's seed (re-initialisation is reproducible and leaves the global RNG alone)."""

    def apply(
        fix_id: str, module: nn.Module, workload: Workload, layers: Sequence[LayerRecord], run: LossTrace | None
    ) -> FixTrial:
        import torch

        from diagnose.cloning import clone_module

        if isinstance(module, torch.jit.ScriptModule):
            raise FixNotApplicable("a TorchScript model's structure and forward cannot be rebuilt; apply it in the source")
        fixed = clone_module(module)
        with torch.random.fork_rng(devices=[workload.device] if workload.device.type == "cuda" else []):
            torch.manual_seed(workload.seed)
            done = change(fix_id, fixed, layers)
        return FixTrial(module=fixed, workload=workload, change=done)

    return apply
