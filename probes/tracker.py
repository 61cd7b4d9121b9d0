"""Per-layer mutable state while attached, and the stack of modules whose forward is running."""

from __future__ import annotations

from dataclasses import dataclass, field

from probes.stats import AliveUnits, TableRow


@dataclass(slots=True)
class LayerState:
    """What a session accumulates for one probed layer (device tensors, Python counters)."""

    name: str
    type_name: str
    kind: str
    source: str  # "module" | "function"
    owner: str
    family: str | None
    bounds: tuple[float, float, bool] | None
    tracks_dead: bool
    in_script: bool = False  # inside a ScriptModule: no hooks run, only weights/grads are read
    index: int = -1  # execution order, set when the layer first produces an output
    input_from: str | None = None  # producer of the first input on the first call ("" untracked)
    calls: int = 0
    output_shape: tuple[int, ...] | None = None
    row: TableRow | None = None  # where this layer's per-call sums are written
    count: int = 0  # output elements observed (Python ints: counting never touches the device)
    gradient_count: int = 0  # output-gradient elements observed
    gradient_calls: int = 0
    alive: AliveUnits = field(default_factory=AliveUnits)
    # Small outputs (gradients) are held for a batched reduction (probes/batched.py) unless one
    # was seen changed in place after its call: then this layer is reduced at once, per call.
    holds: bool = True
    holds_gradient: bool = True
    unit_ndim: int = -1  # output rank the unit axis below was worked out for
    unit_axis: int = -1
    # (local name, parameter) of one direct parameter: if the module holds another tensor under
    # that name during a forward, torch.func.functional_call (or stateless) swapped its parameters
    param_check: tuple[str, object] | None = None
    gradient_hook: object = None  # the output-gradient hook, made once (probes/_backward.py)
    gradient_prehooks: dict = field(default_factory=dict)  # autograd-node pre-hook per output slot


@dataclass(slots=True)
class Frame:
    """A module whose forward is running, with per-call counters of the functions it called.

    `observes_functions` is False for modules whose forward is known not to call a user-visible
    activation (Linear, Conv, norms, activation modules, ...): the functional mode is switched
    off while they run, which saves a Python dispatch per op inside them.
    """

    name: str
    observes_functions: bool
    function_calls: dict[str, int] | None = None  # made on the first function call


@dataclass(slots=True)
class ModuleStack:
    frames: list[Frame] = field(default_factory=list)

    def pop(self, name: str) -> None:
        # Pop down to the matching frame: post-hooks use always_call=True, so a forward that
        # raised still pops its own frame; this only guards against a frame left by a hook
        # that could not run at all.
        while self.frames:
            frame = self.frames.pop()
            if frame.name == name:
                return

    @property
    def top(self) -> Frame | None:
        return self.frames[-1] if self.frames else None
