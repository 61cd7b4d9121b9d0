"""Plain, frozen records that probes hand to their callers: one `LayerRecord` per probed layer."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


class StepValues(Sequence):
    """The first `n` values of an append-only list or array, as an immutable sequence sharing its storage.

    A layer's per-step update ratios grow by one value a step; copying them into a tuple at every
    `collect()` cost O(steps) per layer per collect (120 layers x 1000 steps: 120k floats copied,
    and as many for the garbage collector to walk, every step). The list is only ever appended
    to, so its first `n` values are fixed: a view of them is a snapshot. Compares equal to a
    tuple or list of the same values.
    """

    __slots__ = ("_values", "_n")

    def __init__(self, values: Sequence[float], n: int | None = None) -> None:
        self._values = values
        self._n = len(values) if n is None else n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(itertools.islice(self._values, self._n))[index]
        position = index + self._n if index < 0 else index
        if not 0 <= position < self._n:
            raise IndexError("StepValues index out of range")
        return self._values[position]

    def __iter__(self):
        return itertools.islice(self._values, self._n)

    def __eq__(self, other) -> bool:
        if isinstance(other, (StepValues, tuple, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __deepcopy__(self, memo) -> tuple[float, ...]:  # dataclasses.asdict: plain data out
        return tuple(self)


def _fast_init(cls):
    """Give a frozen slotted dataclass a faster `__init__`, and `_positional` for hot paths.

    `__init__` keeps the keyword-only signature, defaults and immutability of the generated one
    (which calls `object.__setattr__` by name per field) but sets the slots through their
    descriptors: about 40% faster. `_positional(*values)` takes every field in declaration order
    and skips argument parsing as well (about 2x faster again): `collect()` builds four records per
    layer per call (benchmarks/overhead.py W4: 120 layers every step).
    """
    fields = dataclasses.fields(cls)
    namespace: dict[str, object] = {"_MISSING": dataclasses.MISSING, "_cls": cls, "_new": object.__new__}
    params, body, values = [], [], []
    for i, f in enumerate(fields):
        namespace[f"_set{i}"] = cls.__dict__[f.name].__set__
        values.append(f"v{i}")
        if f.default is not dataclasses.MISSING:
            namespace[f"_default{i}"] = f.default
            params.append(f"{f.name}=_default{i}")
            body.append(f"    _set{i}(self, {f.name})")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{i}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            body.append(f"    _set{i}(self, _factory{i}() if {f.name} is _MISSING else {f.name})")
        else:
            params.append(f.name)
            body.append(f"    _set{i}(self, {f.name})")
    source = f"def __init__(self, *, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    source += f"def _positional({', '.join(values)}):\n    self = _new(_cls)\n"
    source += "".join(f"    _set{i}(self, v{i})\n" for i in range(len(fields))) + "    return self\n"
    exec(source, namespace)  # noqa: S102 - code built above from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init
    positional = namespace["_positional"]
    positional.__qualname__ = f"{cls.__qualname__}._positional"
    cls._positional = staticmethod(positional)
    return cls


def positional_constructor(cls):
    """The constructor `_fast_init` gave `cls` that takes every field in declaration order.

    For hot paths only (probes/_collect.py builds four records per layer per collect): it
    checks nothing, so a value in the wrong place goes unnoticed.
    """
    return cls._positional


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationStats:
    """Statistics of a layer's output over every call while attached.

    `dead_fraction` is set for ReLU-family outputs (units that were zero for every sample of every
    call), `saturated_fraction` for bounded activations (outputs within the documented margin of an
    asymptote). `dead_fraction_last` is the dead share in the most recent forward of the model.
    """

    mean: float | None = None
    std: float | None = None
    dead_fraction: float | None = None
    saturated_fraction: float | None = None
    nonfinite: int = 0
    count: int = 0
    units: int | None = None
    dead_fraction_last: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class GradientStats:
    """Gradient sizes, averaged (root mean square) over the backward passes seen while attached.

    `norm`/`rms` describe the layer's trainable parameters when it has any, else the gradient
    with respect to its output; `output_rms` is always the gradient with respect to the output.
    """

    norm: float | None = None
    rms: float | None = None
    output_rms: float | None = None
    param_norm: float | None = None
    param_rms: float | None = None
    nonfinite: int = 0
    backward_calls: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WeightStats:
    """Scale of a layer's main weight against the init its following activation needs."""

    std: float
    mean: float
    expected_std: float | None
    scheme: str | None
    fan_in: int | None
    fan_out: int | None
    normalized: bool
    frozen: bool
    numel: int
    bias_mean: float | None = None
    bias_std: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class LayerRecord:
    """Everything measured about one probed layer (a module, or an activation called as a function).

    `kind` is one of: linear, conv, embedding, recurrent, norm, attention, activation, other.
    `input_from` traces the data flow between probed layers, so that parallel branches (an
    attention block's query, key and value) are not mistaken for a chain.
    `activation_kind` names the activation family (relu, tanh, sigmoid, selu, gelu, ...) for
    activation layers; `followed_by` names the family of the first activation that runs after a
    weighted layer and before the next one ("none" when there is none).
    """

    name: str
    type: str
    index: int
    kind: str
    source: str = "module"
    owner: str = ""
    activation_kind: str | None = None
    followed_by: str | None = None
    calls: int = 0
    output_shape: tuple[int, ...] | None = None
    # The probed layer whose output this layer's first input was, on its first call: "" when the
    # input came from an op no probe saw (a reshape, an add, the model input), None when unknown.
    input_from: str | None = None
    parameters: int = 0
    trainable_parameters: int = 0
    params_without_gradient: tuple[str, ...] = ()
    activation: ActivationStats = field(default_factory=ActivationStats)
    gradient: GradientStats = field(default_factory=GradientStats)
    weight: WeightStats | None = None
    update_ratio: float | None = None
    update_ratio_max: float | None = None
    update_ratios: Sequence[float] = ()  # a tuple, or a StepValues view while attached

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["output_shape"] = list(self.output_shape) if self.output_shape is not None else None
        data["params_without_gradient"] = list(self.params_without_gradient)
        data["update_ratios"] = list(self.update_ratios)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LayerRecord":
        data = dict(data)
        data["activation"] = ActivationStats(**data.get("activation") or {})
        data["gradient"] = GradientStats(**data.get("gradient") or {})
        weight = data.get("weight")
        data["weight"] = WeightStats(**weight) if weight else None
        shape = data.get("output_shape")
        data["output_shape"] = tuple(shape) if shape is not None else None
        data["params_without_gradient"] = tuple(data.get("params_without_gradient") or ())
        data["update_ratios"] = tuple(data.get("update_ratios") or ())
        return cls(**data)
