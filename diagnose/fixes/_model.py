"""The shape of a catalog fix, and the context its snippet is written for."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diagnose.fixes.trial import FixTrial


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationCall:
    """An activation called as a function inside a module's `forward`: there is no module to swap."""

    name: str  # the probes' name for it: "sigmoid()", "sigmoid()#2"
    family: str  # sigmoid, tanh, relu, ...
    owner: str  # the module whose forward calls it; "" for the model's own forward
    after: str | None = None  # the layer whose output it reads, when the probes saw it
    calls: int = 1  # calls per forward


@dataclass(frozen=True, slots=True, kw_only=True)
class Widening:
    """A bottleneck to widen: `layer` (width_in -> width) read by `next_layer` (width -> width_out)."""

    layer: str
    width: int
    width_in: int
    next_layer: str
    width_out: int

    @property
    def new_width(self) -> int:
        """As wide as the narrower neighbour: what `--try-fixes` verifies."""
        return min(self.width_in, self.width_out)


@dataclass(frozen=True, slots=True, kw_only=True)
class FixTarget:
    """What a snippet needs to name the user's own layers and settings."""

    layers: tuple[str, ...] = ()  # the layers the fix touches, by their names in the model
    # of those, the activations called as functions, with their caller; and the weighted layers
    # feeding the activations the fix touches (what an activation swap re-initialises)
    calls: tuple[ActivationCall, ...] = ()
    feeders: tuple[str, ...] = ()
    activation: str | None = None  # the activation family involved (relu, tanh, sigmoid, selu, ...)
    optimizer: str = "sgd"
    lr: float = 0.01
    widths: tuple[tuple[str, int], ...] = ()  # (layer, current width), for widen-layer
    widening: Widening | None = None  # the bottleneck and its neighbours, for widen-layer
    recurrent: bool = False
    conv: bool = False
    head: bool = False  # the fix targets the output layer (an overconfident classifier head)
    forget_gate: bool = False  # the fix targets LSTM forget-gate biases (recurrent-gradient-flow)
    recurrent_weights: bool = False  # the layers are RNN/LSTM/GRU modules (an init fix re-draws their weights)
    nonfinite_inputs: bool = False  # the inputs hold NaN/Inf (normalize-inputs imputes them)
    clip_norm: float | None = None  # gradient-clipping's threshold, measured in the short run (None: unmeasured)
    clip_steps: int = 0  # how many steps' gradient norms it was chosen from
    proposed_lr: float | None = None  # the LR an LR range test verified on the model (None: not run)
    warmup_steps: int | None = None  # lr-warmup's ramp length, from that range test (None: not run)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fix:
    """A catalog entry. `doc` is Markdown in the anatomy What it does / Why it works / When not to
    use / Example; `rationale` is the one-paragraph reason shown next to a finding.

    `--try-fixes` runs `apply(fix_id, module, workload, layers, run) -> FixTrial` (see
    `diagnose.fixes.trial`), which raises FixNotApplicable when this model does not allow it. A fix
    no program can apply soundly says why in `not_applicable` instead: exactly one of the two.
    """

    id: str
    title: str
    summary: str
    rationale: str
    doc: str
    snippet: Callable[[FixTarget], str] = field(repr=False)
    apply: Callable[..., FixTrial] | None = field(default=None, repr=False)
    not_applicable: str | None = None

    def __post_init__(self) -> None:
        if (self.apply is None) == (self.not_applicable is None):
            raise TypeError(f"fix {self.id!r} needs exactly one of apply= and not_applicable=")


def name_list(names: Sequence[str]) -> str:
    """A Python list literal of layer names, wrapped so a long list stays readable."""
    quoted = [repr(n) for n in names]
    line = "[" + ", ".join(quoted) + "]"
    if len(line) <= 80:
        return line
    rows, row = [], []
    for q in quoted:
        if row and len(", ".join(row + [q])) > 72:
            rows.append(", ".join(row))
            row = []
        row.append(q)
    rows.append(", ".join(row))
    return "[\n    " + ",\n    ".join(rows) + ",\n]"


def layer_loop(names: Sequence[str], body: str, fallback: str) -> str:
    """A loop over the named layers of `model` running `body` on each (`layer`), or `fallback`
    (a loop over module types) when no names are known."""
    if not names:
        return fallback
    indented = "\n".join("    " + line if line else line for line in body.splitlines())
    return (
        "modules = dict(model.named_modules())\n"
        f"for name in {name_list(names)}:\n"
        "    layer = modules[name]\n"
        f"{indented}"
    )
