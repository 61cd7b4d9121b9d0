"""`attach(model)`: hooks and the functional mode on one ExitStack; `collect()` = one host sync.

The session keeps the state (probes/_state.py) and the lifecycle; the hooks live in
probes/_forward.py and probes/_backward.py. Discovery and collect are still here.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from probes import distributed, grouped
from probes._backward import flush_gradients, make_param_grad_ready
from probes._forward import (
    FunctionCalls,
    flush_outputs,
    hook_modules,
    make_flush_before_inplace,
    make_post_hook,
    make_pre_hook,
    remove_module_hooks,
)
from probes._state import SessionState, TrackedParam
from probes.functional import FunctionalActivations
from probes.gradients import ParamGradients
from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats
from probes.stats import (
    COLUMNS,
    GRAD_NONFINITE,
    GRAD_SUM_SQ,
    NONFINITE,
    SATURATED,
    SUM,
    SUM_SQ,
    saturation_bounds,
    tracks_dead,
)
from probes.targets import (
    ACTIVATION_MODULES,
    WEIGHTED_KINDS,
    expected_std,
    exported_type_names,
    fans,
    in_parametrization,
    is_uninitialized,
    kind_of,
    main_weight,
    own_parameters,
    scheme_for,
    type_name_of,
)
from probes.tracker import LayerState
from probes.updates import UpdateTracker
from probes.weights import WeightReader, weight_moments

_CONV1D_TYPES = frozenset({"Conv1d", "ConvTranspose1d", "LazyConv1d"})


def keep_dynamo_out() -> bool:
    """Tell dynamo never to trace code of this package; False when this torch has no such rule.

    Left to dynamo, our hooks are traced when a module runs inside torch.compile: graph breaks at
    every `.item()` and recompilations (weak references, ids) until dynamo's recompile limit,
    with its warnings. With `probes` among dynamo's skipped files, each hook is a graph break that
    runs eagerly, on real tensors, and the hooks cost nothing extra outside compiled code.
    Wrapping every hook in `torch.compiler.disable` instead costs ~2.5 us a call: 0.6 ms a step
    on the 60-layer MLP of benchmarks/overhead.py (W4), and torch >= 2.13 imports dynamo with
    any optimizer, so that wrapper was paid in ordinary eager runs too. The rule is only added
    when dynamo is already loaded (importing it takes ~2 s); it is process-wide and permanent,
    which is harmless: it only says that dynamo must not trace the probes.
    """
    if "torch._dynamo" not in sys.modules:
        return True  # nothing to keep out; a model compiled later still works, with warnings
    global _DYNAMO_SKIPS_PROBES
    if _DYNAMO_SKIPS_PROBES is None:
        try:
            from torch._dynamo import trace_rules

            trace_rules.add(__name__.partition(".")[0])
            _DYNAMO_SKIPS_PROBES = True
        except Exception:  # an older or newer dynamo without this rule: wrap the hooks instead
            _DYNAMO_SKIPS_PROBES = False
    return _DYNAMO_SKIPS_PROBES


_DYNAMO_SKIPS_PROBES: bool | None = None


def _runs_only_children(module: nn.Module) -> bool:
    """A container whose forward is nn.Sequential's: it calls its children in turn, nothing else."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _is_silent_builtin(module: nn.Module, kind: str | None) -> bool:
    """A torch.nn leaf that is not probed and calls no activation (Dropout, pooling, Flatten, ...).

    Such modules get no hooks at all: nothing is measured on them, and any op they run is
    attributed to their parent, which is where it would be reported anyway.
    """
    return (
        kind is None
        and type(module).__module__.startswith("torch.nn.modules.")
        and next(iter(module.children()), None) is None
    )


def install(shared: SessionState, model: nn.Module, stack: ExitStack) -> None:
    """Find the probed layers of `model` into `shared` and put every hook on `stack`."""
    shared.dynamo_skips_probes = keep_dynamo_out()
    exported = exported_type_names(model)
    tracked: list[torch.Tensor] = []
    scripted: list[str] = []  # ScriptModules that are not inside another one
    script_params: list[torch.Tensor] = []
    parametrized: list[str] = []  # layers whose weight is computed by a parametrization
    flush_before_inplace = None
    for name, module in model.named_modules():
        type_name = type_name_of(module, name, exported)
        machinery = in_parametrization(name)
        own = [] if machinery else own_parameters(module)
        kind = None if machinery else kind_of(type_name, bool(own))
        if kind in WEIGHTED_KINDS and parametrize.is_parametrized(module):
            parametrized.append(name)
        in_script = isinstance(module, torch.jit.ScriptModule)
        if in_script and not any(_is_inside(name, outer) for outer in scripted):
            scripted.append(name)
        inplace = getattr(module, "inplace", False) is True
        if not in_script and module is not model and _is_silent_builtin(module, kind):
            if inplace:  # Dropout(inplace=True) would change a held output: reduce first
                flush_before_inplace = flush_before_inplace or make_flush_before_inplace(shared)
                shared.hook_plan.append((module, flush_before_inplace, None))
            continue
        state = None
        if kind is not None:
            family = ACTIVATION_MODULES.get(type_name) if kind == "activation" else None
            state = LayerState(
                name=name, type_name=type_name, kind=kind, source="module", owner=name,
                family=family, tracks_dead=tracks_dead(family), in_script=in_script,
                bounds=saturation_bounds(
                    family, getattr(module, "min_val", None), getattr(module, "max_val", None)
                ),
            )
            shared.states[name] = state
            shared.modules[name] = module
            # Sizes and the main weight are read when a collect lays out its reads, not
            # here: a lazy module (LazyLinear) has no shapes before its first forward.
            shared.direct_params[name] = [param for _, param in own]
            direct = None if in_script else next(iter(module._parameters.items()), None)
            if direct is not None and direct[1] is not None:
                state.param_check = direct
            for local, param in own:
                if param.requires_grad:
                    shared.params.append(TrackedParam(name, local, param))
                    tracked.append(param)
                    if in_script and param.is_leaf:  # only a leaf gets a .grad to read
                        script_params.append(param)
        if in_script:
            continue  # forward hooks cannot be registered on (or run inside) a ScriptModule
        # Known leaf types never call a user-visible activation: the mode stays off inside
        # (and an activation module's own F.relu is not reported a second time).
        observes = (kind is None or kind == "other") and not machinery
        root = module is model
        pre_hook = make_pre_hook(shared, name, observes, inplace, flow_only=_runs_only_children(module), root=root)
        post_hook = make_post_hook(shared, name, state, type_name in _CONV1D_TYPES, root=root)
        if root:  # the model's own hooks stay on: its pre-hook is the clock of `every`
            stack.enter_context(module.register_forward_pre_hook(pre_hook))
            stack.enter_context(module.register_forward_hook(post_hook, always_call=True))
        else:
            shared.hook_plan.append((module, pre_hook, post_hook))
    hook_modules(shared, True)
    shared.param_grads = ParamGradients(params=tracked)
    # Script code runs no output-gradient hook to queue the parameter-gradient read, so each
    # scripted parameter queues it (once per backward) when its .grad has been accumulated.
    if script_params:
        param_grad_ready = make_param_grad_ready(shared)
        for param in script_params:
            stack.callback(param.register_post_accumulate_grad_hook(param_grad_ready).remove)
    shared.static_context = _script_sequential_context(model, shared.states)
    if parametrized:
        shared.limitations += (
            "torch.nn.utils.parametrize (weight_norm, spectral_norm, ...) on "
            f"{', '.join(parametrized)}: the scale of a parametrized weight is not judged against "
            "an init scheme, because reading it runs the parametrization (spectral_norm would "
            "take a power-iteration step); its gradients and update ratios are measured on the "
            "original parameters.",
        )
    if scripted:
        where = "the whole model" if scripted == [""] else ", ".join(scripted)
        shared.limitations += (
            f"TorchScript ({where}): module hooks cannot run on ScriptModules, so activation, "
            "dead-unit, saturation and output-gradient probes did not run there; weights, "
            "parameter gradients and update ratios were measured.",
        )
    trainable = [
        (name, [p for p in own if p.requires_grad]) for name, own in shared.direct_params.items()
    ]
    trainable = [(name, params) for name, params in trainable if params]
    layers_of: dict[int, list[int]] = {}  # id(parameter) -> its layers (tied weights: several)
    for i, (_, params) in enumerate(trainable):
        for param in params:
            layers_of.setdefault(id(param), []).append(i)
    shared.updates = UpdateTracker(
        on_error=shared.internal_error,
        every_step=shared.every == 1,
        layer_names=[name for name, _ in trainable],
        param_layer={key: layers[0] for key, layers in layers_of.items()},
        shared={key: tuple(layers[1:]) for key, layers in layers_of.items() if len(layers) > 1},
    )
    shared.updates.register(stack)
    for param in model.parameters():
        shared.device = param.device
        break


def _is_inside(name: str, outer: str) -> bool:
    return outer == "" or name == outer or name.startswith(outer + ".")


def _is_silent_builtin_name(type_name: str, module: nn.Module) -> bool:
    """A scripted torch.nn leaf that passes its input on without an activation (Dropout, Flatten)."""
    cls = getattr(nn, type_name, None)
    return (
        isinstance(cls, type)
        and cls.__module__.startswith("torch.nn.modules.")
        and type_name not in ACTIVATION_MODULES
        and next(iter(module.children()), None) is None
    )


def _script_sequential_context(model: nn.Module, states: dict[str, LayerState]):
    """The following context (probes/_collect.py) of weighted layers in scripted Sequentials,
    which never report running.

    A scripted Sequential runs its children in order, so that order is the execution order. The
    scan stops at a child whose forward is unknown (a custom module): the follower is then unknown
    (None) unless an activation was already seen. Past the end of the root the follower is "none".
    """
    context: dict[str, tuple[str | None, bool]] = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, torch.jit.ScriptModule) or module.original_name != "Sequential":
            continue
        children = [
            (f"{prefix}.{child}" if prefix else child, sub) for child, sub in module.named_children()
        ]
        for i, (name, _) in enumerate(children):
            state = states.get(name)
            if state is None or state.kind not in WEIGHTED_KINDS:
                continue
            followed_by, normalized = None, False
            ended = True
            for later_name, later in children[i + 1:]:
                later_state = states.get(later_name)
                if later_state is None:
                    if _is_silent_builtin_name(later.original_name, later):
                        continue
                    ended = False
                    break
                if later_state.kind in WEIGHTED_KINDS:
                    followed_by = followed_by or "none"
                    ended = False
                    break
                if later_state.kind == "norm":
                    normalized = True
                elif later_state.kind == "activation" and followed_by is None:
                    followed_by = later_state.family or "none"
            if ended and followed_by is None and module is model:
                followed_by = "none"
            context[name] = (followed_by, normalized)
    return context


# Records are built positionally (probes/records.py): bound once, called per layer per collect.
_new_layer_record = LayerRecord._positional
_new_activation_stats = ActivationStats._positional
_new_gradient_stats = GradientStats._positional
_new_weight_stats = WeightStats._positional


class Collector:
    """Assembles the records of one session (`probes.session.Session.collect`)."""

    def __init__(self, shared: SessionState) -> None:
        self._shared = shared
        self._layout_cache: _Layout | None = None  # what collect reads, per set of layers
        self._collected: tuple | None = None  # ((generation, update steps, reduce), records)

    def collect(self, reduce: bool = True) -> list[LayerRecord]:
        """The records `Session.collect` returns (see there)."""
        shared = self._shared
        if shared.every == 1:
            return self._collect(reduce)
        key = (shared.generation, shared.updates.generation if shared.updates else 0, reduce)
        # Not under torch.distributed: every rank must take part in each collect's all-reduce.
        if self._collected is not None and self._collected[0] == key and not (
            reduce and distributed.world_size() > 1
        ):
            return list(self._collected[1])
        records = self._collect(reduce)
        self._collected = (key, records)
        return list(records)

    def _collect(self, reduce: bool) -> list[LayerRecord]:
        shared = self._shared
        flush_outputs(shared)
        flush_gradients(shared)
        layout = self._layout()
        states = layout.states
        device = shared.device or torch.device("cpu")
        plan = _TransferPlan(device)
        with torch.no_grad():
            table_slots = {
                id(table): plan.vector(table.totals())
                for table in shared.tables.values() if not table.on_host
            }
        distributed_run = reduce and distributed.world_size() > 1
        maxima = [(s, pair) for s in layout.dead_capable if (pair := s.alive.maxima()) is not None]
        masks = [m for _, pair in maxima for m in pair]
        if distributed_run and masks:
            masks = distributed.reduce_max_list(masks)
        # A unit is alive unless its maximum is <= 0: a NaN maximum (a NaN reached the unit in a
        # forward that is not merged with finite ones yet) is unknown, counted alive, so NaN
        # inputs never inflate the dead share. Across forwards `fmax` already skips NaN.
        alive_slot = alive_order = None
        if masks:
            counts, alive_order = _alive_counts(masks)
            alive_slot = plan.vector(counts)
        param_parts = shared.param_grads.parts()
        param_slots = [(key, plan.vector(vec)) for key, vec in param_parts]
        reader = layout.weights
        weight_slot = plan.vector(reader.parts()) if reader is not None else None
        update_slots = [plan.vector(v) for v in shared.updates.parts()] if shared.updates else []
        with torch.no_grad():
            host = plan.fetch()

        tables = {key: plan.values(host, slot) for key, slot in table_slots.items()}
        totals = [_row_totals(s, tables) for s in states]
        shared.param_grads.absorb([(key, plan.values(host, slot)) for key, slot in param_slots])
        param_totals = list(shared.param_grads.totals)
        param_calls = [0.0] * len(shared.params)
        for key, calls in shared.param_grads.calls.items():
            for position in key:
                param_calls[position] += calls
        if distributed_run:
            flat = [v for row in totals for v in row] + param_totals + param_calls
            flat = distributed.reduce_host_sums(flat, device)
            width = len(totals[0]) if totals else 0
            totals = [flat[i * width:(i + 1) * width] for i in range(len(totals))]
            rest = flat[len(totals) * width:]
            param_totals, param_calls = rest[:len(shared.params)], rest[len(shared.params):]
        alive = {}
        if alive_slot is not None:
            counts = [0.0] * len(masks)
            for mask, count in zip(alive_order, plan.values(host, alive_slot)):
                counts[mask] = count
            for i, (state, (_, latest)) in enumerate(maxima):
                alive[state.name] = (int(latest.numel()), counts[2 * i], counts[2 * i + 1])
        weights = reader.values(plan.values(host, weight_slot)) if reader is not None else []
        if shared.updates is not None:
            shared.updates.absorb([plan.values(host, slot) for slot in update_slots])
        return _records(shared, layout, totals, alive, weights, param_totals, param_calls)

    def _layout(self) -> "_Layout":
        """Which layers a collect reports, in which order, and what it reads: made once per set."""
        shared = self._shared
        key = (len(shared.states), shared.next_index)
        if self._layout_cache is not None and self._layout_cache.key == key:
            return self._layout_cache
        executed = sorted((s for s in shared.states.values() if s.index >= 0), key=lambda s: s.index)
        unused = [
            s for s in shared.states.values()
            if s.index < 0 and s.source == "module"
            and (_trainable(shared, s.name) or (s.in_script and _param_count(shared, s.name, False) > 0))
        ]
        states = executed + unused
        positions: dict[str, list[int]] = {}
        for position, param in enumerate(shared.params):
            positions.setdefault(param.layer, []).append(position)
        context = _following_context(executed)
        main_weights = {
            s.name: weight[1] for s in states if s.kind in WEIGHTED_KINDS and s.source == "module"
            and (weight := main_weight(shared.modules[s.name], s.kind)) is not None
        }
        weighted = [(s, main_weights[s.name]) for s in states if s.name in main_weights]
        slot_of = {s.name: i for i, (s, _) in enumerate(weighted)}
        contexts = [context.get(s.name) or shared.static_context.get(s.name, (None, False)) for s in states]
        self._layout_cache = _Layout(
            key=key,
            states=states,
            dead_capable=[s for s in states if s.tracks_dead],
            weights=WeightReader([(w, _bias(shared, s)) for s, w in weighted]) if weighted else None,
            weight_info=[
                _weight_info(shared, s, main_weights[s.name], slot_of[s.name], contexts[i][0])
                if s.name in slot_of else None
                for i, s in enumerate(states)
            ],
            context=contexts,
            params=[
                tuple((i, shared.params[i].local_name, shared.params[i].param.numel()) for i in positions.get(s.name, ()))
                for s in states
            ],
            static=[_fields_of(shared, s, contexts[i][0]) for i, s in enumerate(states)],
        )
        return self._layout_cache



def _bias(shared: SessionState, state: LayerState) -> torch.Tensor | None:
    bias = getattr(shared.modules[state.name], "bias", None)
    return bias if isinstance(bias, torch.Tensor) and bias.numel() > 0 else None


def _trainable(shared: SessionState, name: str) -> bool:
    return _param_count(shared, name, trainable_only=True) > 0


def _param_count(shared: SessionState, name: str, trainable_only: bool) -> int:
    """Elements of a layer's own parameters (0 for an activation called as a function)."""
    return sum(
        p.numel() for p in shared.direct_params.get(name, ())
        if (p.requires_grad or not trainable_only) and not is_uninitialized(p)
    )


def _records(shared: SessionState, layout, totals, alive, weights, param_totals, param_calls) -> list[LayerRecord]:
    """Plain records from the host values of one collect (runs per layer per collect: kept lean).

    Records are built positionally (`_positional`, probes/records.py) from the layout's fixed
    fields: on a 120-layer model this loop is most of what a collect costs on the host.
    """
    ratios = shared.updates.ratios if shared.updates else {}
    make_record = _new_layer_record
    records: list[LayerRecord] = []
    for position, state in enumerate(layout.states):
        name, type_name, kind, source, owner, family, parameters, trainable, followed_by = (
            layout.static[position]
        )
        s1, s2, nonfinite, saturated, g2, g_nonfinite, count, g_count, g_calls = totals[position]
        normalized = layout.context[position][1]
        info = layout.weight_info[position]
        weight = None if info is None else _weight_stats(info, weights[info[0]], normalized)
        mine = layout.params[position]
        if mine:
            gradient, without = _param_gradient_stats(
                g_count, g_calls, g2, g_nonfinite, mine, param_totals, param_calls
            )
        else:
            gradient, without = _output_gradient_stats(g_count, g_calls, g2, g_nonfinite), ()
        history = ratios.get(name)
        if history is not None and history.values:
            ratio, ratio_max, ratio_steps = history.mean(), history.maximum, history.snapshot()
        else:
            ratio, ratio_max, ratio_steps = None, None, ()
        index = state.index
        records.append(make_record(
            name, type_name, index if index >= 0 else position, kind, source, owner, family,
            followed_by, state.calls, state.output_shape, state.input_from, parameters, trainable,
            without,
            _activation_stats(state, count, s1, s2, nonfinite, saturated, alive.get(name)),
            gradient, weight, ratio, ratio_max, ratio_steps,
        ))
    return records


def _fields_of(shared: SessionState, state: LayerState, followed_by: str | None) -> tuple:
    """Record fields fixed while the set of layers is (cached per layout), in `_records` order:
    name, type, kind, source, owner, activation_kind, parameters, trainable_parameters,
    followed_by."""
    return (
        state.name, state.type_name, state.kind, state.source, state.owner, state.family,
        _param_count(shared, state.name, trainable_only=False),
        _param_count(shared, state.name, trainable_only=True),
        followed_by if state.kind in WEIGHTED_KINDS else None,
    )


def _weight_info(shared: SessionState, state: LayerState, weight: torch.Tensor, slot: int, followed_by: str | None) -> tuple:
    """What a weighted layer's WeightStats need besides the measured sums (fixed per layout)."""
    bias = _bias(shared, state)
    fan_in, fan_out, scheme, expected = _init_target(state, weight, followed_by)
    return (
        slot, weight.numel(), 0 if bias is None else bias.numel(), not _trainable(shared, state.name),
        fan_in, fan_out, scheme, expected,
    )


def _init_target(state, weight, followed_by):
    """(fan_in, fan_out, scheme, expected std): static per layer and follower, so cached."""
    fan_in = fan_out = None
    scheme = expected = None
    if state.kind in ("linear", "conv", "attention", "other"):
        fan_in, fan_out = fans(weight, state.type_name)
        # Inside script code an unknown follower stays unknown: no scheme is guessed.
        known = followed_by is not None or not state.in_script
        if fan_in > 0 and fan_out > 0 and known:
            scheme = scheme_for(followed_by if followed_by != "none" else None)
            expected = expected_std(scheme, fan_in, fan_out)
    return fan_in, fan_out, scheme, expected


def _alive_counts(masks: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Units whose maximum is not <= 0 (NaN counts alive) per mask, and the mask of each count.

    Counted in probes/grouped.py layout order: same-shape masks as rows of one stack (the ReLU
    layers of a uniform MLP: one op chain, not one per layer).
    """
    layout = grouped.plan(masks)
    with torch.no_grad():
        parts = [
            (grouped.stack_rows([masks[i] for i in group]) <= 0).logical_not_().sum(1)
            for group in layout.groups
        ]
        parts += [(masks[i] <= 0).logical_not_().sum().reshape(1) for i in layout.singles]
        device = masks[0].device
        return torch.cat([part.to(device) for part in parts]), layout.order


@dataclasses.dataclass(slots=True)
class _Layout:
    """Per-collect facts that only change when layers are found: kept until then."""

    key: tuple[int, int]  # (layers known, layers executed) when made
    states: list[LayerState]  # executed ones in execution order, then unused trainable ones
    dead_capable: list[LayerState]
    weights: WeightReader | None  # reads the main weight (and bias) of every weighted state
    # per state: (position among the weighted states, weight numel, bias numel, frozen, fan_in,
    # fan_out, scheme, expected std), None without a main weight
    weight_info: list[tuple | None]
    context: list[tuple[str | None, bool]]  # per state: (followed_by, normalized)
    # per state: (position in SessionState.params, local name, numel) of its tracked parameters
    params: list[tuple[tuple[int, str, int], ...]]
    static: list[tuple]  # per state: record fields fixed while attached (_fields_of)


class _TransferPlan:
    """Lays out every device value a collect needs in one tensor, fetched with one host copy."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._vectors: list[torch.Tensor] = []
        self._size = 0

    def vector(self, tensor: torch.Tensor) -> tuple[int, int]:
        start = self._size
        self._vectors.append(tensor.reshape(-1))
        self._size += tensor.numel()
        return (start, self._size)

    def fetch(self) -> list[float]:
        if not self._vectors:
            return []
        device = self._device
        pieces = [v if v.device == device else v.to(device) for v in self._vectors]
        flat = torch.cat(pieces).double() if len(pieces) > 1 else pieces[0].double()
        return flat.cpu().tolist()  # the one device -> host sync of a collect

    @staticmethod
    def values(host: list[float], slot: tuple[int, int]) -> list[float]:
        return host[slot[0]:slot[1]]


def _row_totals(state: LayerState, tables: dict[int, list[float]]) -> list[float]:
    """[sum, sum sq, nonfinite, saturated, grad sum sq, grad nonfinite, count, grad count, grad calls]."""
    sums = [0.0] * COLUMNS
    if state.row is not None and state.row.host is not None:
        sums = state.row.host
    elif state.row is not None:
        table = tables[id(state.row.table)]
        start = state.row.index * COLUMNS
        sums = table[start:start + COLUMNS]
    return [sums[SUM], sums[SUM_SQ], sums[NONFINITE], sums[SATURATED], sums[GRAD_SUM_SQ],
            sums[GRAD_NONFINITE], float(state.count), float(state.gradient_count),
            float(state.gradient_calls)]


def _weight_stats(info: tuple, values, normalized: bool) -> WeightStats:
    _, weight_numel, bias_numel, frozen, fan_in, fan_out, scheme, expected = info
    w_std, w_mean, b_std, b_mean = weight_moments(values, weight_numel, bias_numel)
    return _new_weight_stats(
        w_std, w_mean, expected, scheme, fan_in, fan_out, normalized, frozen, weight_numel, b_mean, b_std
    )


def _activation_stats(state: LayerState, count, s1, s2, nonfinite, saturated, alive) -> ActivationStats:
    if count <= 0:
        return _new_activation_stats(None, None, None, None, 0, 0, alive[0] if alive else None, None)
    mean = s1 / count
    if math.isfinite(s2) and math.isfinite(mean):
        std = math.sqrt(max(s2 / count - mean * mean, 0.0))
    else:
        std = math.nan
    if alive:
        units, overall, latest = alive
        dead, dead_last = 1.0 - overall / units, 1.0 - latest / units
    else:
        units = dead = dead_last = None
    return _new_activation_stats(
        mean, std, dead, (saturated / count) if state.bounds is not None else None,
        int(round(nonfinite)), int(count), units, dead_last,
    )


def _output_gradient_stats(count, calls, g2, g_nonfinite) -> GradientStats:
    """A layer without trainable parameters: its gradient is the one w.r.t. its output."""
    output_rms = math.sqrt(g2 / count) if count > 0 else None
    output_norm = math.sqrt(g2 / calls) if calls > 0 else None
    return _new_gradient_stats(
        output_norm, output_rms, output_rms, None, None, int(round(g_nonfinite)), int(calls)
    )


def _param_gradient_stats(count, calls, g2, g_nonfinite, params, param_totals, param_calls):
    """(GradientStats, names of parameters without gradient) of a layer with trainable parameters.

    `params` are (position, local name, numel) of its parameters in the session's totals.
    """
    output_rms = math.sqrt(g2 / count) if count > 0 else None
    nonfinite = int(round(g_nonfinite))
    most_calls = total = elements = bad = 0
    without = []
    for position, local_name, numel in params:
        param_total, param_call_count = param_totals[position], param_calls[position]
        if param_call_count == 0 or param_total == 0.0:
            without.append(local_name)
        if param_call_count > most_calls:
            most_calls = param_call_count
        total += param_total
        elements += numel * param_call_count
        bad += not math.isfinite(param_total)
    param_norm = param_rms = None
    if most_calls > 0:
        param_norm = math.sqrt(total / most_calls) if total == total else math.nan
        param_rms = math.sqrt(total / elements) if elements and total == total else math.nan
        nonfinite += bad
    gradient = _new_gradient_stats(
        param_norm, param_rms, output_rms, param_norm, param_rms, nonfinite, int(max(most_calls, calls))
    )
    return gradient, tuple(without)


def _following_context(executed: list[LayerState]) -> dict[str, tuple[str, bool]]:
    """For each weighted layer: the family of the next activation, and whether a norm runs first.

    Scans forward in execution order until the next weighted layer: what runs in between is
    what this layer's output feeds.
    """
    context: dict[str, tuple[str, bool]] = {}
    for i, state in enumerate(executed):
        if state.kind not in WEIGHTED_KINDS:
            continue
        followed_by, normalized = "none", False
        for later in executed[i + 1:]:
            if later.kind in WEIGHTED_KINDS:
                break
            if later.kind == "norm":
                normalized = True
            elif later.kind == "activation" and followed_by == "none":
                followed_by = later.family or "none"
        context[state.name] = (followed_by, normalized)
    return context


class Session:
    """Measurements of one attached model. Use `attach(model)` to create one."""

    def __init__(self, model: nn.Module, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"probes.attach: every must be a whole number >= 1, got {every!r}")
        self.model = model
        # Measure one forward of the model in `every` (the first, then every `every`-th), with
        # the backward and optimizer step that follow it (see `attach`).
        self.every = every
        shared = self._shared = SessionState(every=every)
        shared.mode = FunctionalActivations(FunctionCalls(shared))
        self._collector = Collector(shared)

    @property
    def forwards(self) -> int:
        """Forwards of the model so far, measured or not."""
        return self._shared.forwards

    @property
    def limitations(self) -> tuple[str, ...]:
        """Plain sentences on what could not be measured for this model (and why)."""
        return self._shared.limitations

    def collect(self, reduce: bool = True) -> list[LayerRecord]:
        """One record per probed layer in execution order; the only host sync of the session.

        Inside an initialised torch.distributed group (and `reduce=True`), sums, counts and
        alive-unit masks are all-reduced, so every rank gets the statistics of all ranks'
        batches together (exact for mean, std, dead and saturated fractions, nonfinite counts,
        output-gradient RMS). Parameter-gradient numbers are then the root-mean-square over
        ranks of each rank's local gradient (see probes/gradients.py); weights and update ratios
        are the local ones, identical on every rank under DDP. Every rank must call collect().

        With `every` > 1, a collect that follows no new measurement (the forwards since the last
        one were not measured) returns the same records again, without reading anything.
        """
        return self._collector.collect(reduce)

    def _install(self, stack: ExitStack) -> None:
        stack.callback(self._close)  # first in, last out: runs after every handle is removed
        install(self._shared, self.model, stack)

    def _close(self) -> None:
        shared = self._shared
        was_open = shared.open
        shared.close_gates()
        try:  # what the last forward/backward still holds is reduced: nothing is lost on exit
            if was_open:
                flush_outputs(shared)
                flush_gradients(shared)
        except Exception as exc:
            shared.internal_error("the last reduction, on exit", exc)
        finally:
            shared.pending.take()
            shared.pending_grads.take()
            if shared.updates is not None:
                shared.updates.release()
            remove_module_hooks(shared)
            shared.mode.remove()
            shared.handles.remove_all()
            shared.stack.frames.clear()


@contextmanager
def attach(model: nn.Module, every: int = 1) -> Iterator[Session]:
    """Probe `model` while the block runs; every hook and mode is removed on exit, also on error.

    `every`: measure one forward of the model in `every` (the 1st, the every+1-th, ...) with the
    backward and the optimizer step that follow it, as SageMaker Debugger's `save_interval` or
    wandb.watch's `log_freq` do, for runs that keep the probes on: between measured forwards
    only the model's own two hooks run (benchmarks/overhead.py prints the cost of both).
    Statistics then describe the measured forwards; dead units are those that never fired in
    any of them. Forwards are counted at calls of `model` itself.

    Nothing about the model changes: hooks return None, statistics are computed without
    recording any graph (on detached tensors, or under no_grad), no activation is kept beyond
    the forward that produced it (small outputs and gradients are held until their
    forward/backward ends, at most probes.batched.HOLD_MAX elements per layer call and
    HOLD_CAP_ITEMS tensors at once; memory O(layers)), and training flags, `requires_grad` and
    the global RNG state are never touched. Outputs and gradients are bit-for-bit the ones
    computed without probes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"probes.attach expects an nn.Module, got {type(model).__name__}")
    session = Session(model, every)
    with ExitStack() as stack:
        session._install(stack)
        yield session
