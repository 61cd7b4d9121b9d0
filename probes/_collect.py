"""Collect: the records of one session, assembled from its device totals with one host sync.

`Collector` lays out what a collect reads (cached while the set of layers stays the same), fetches
every device value in one copy (`_TransferPlan`), all-reduces under torch.distributed, and builds
the plain frozen records (probes/records.py) on the host.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch

from probes import distributed, grouped
from probes._backward import flush_gradients
from probes._forward import flush_outputs
from probes.records import (
    ActivationStats,
    GradientStats,
    LayerRecord,
    WeightStats,
    positional_constructor,
)
from probes.stats import COLUMNS, GRAD_NONFINITE, GRAD_SUM_SQ, NONFINITE, SATURATED, SUM, SUM_SQ
from probes.targets import WEIGHTED_KINDS, expected_std, fans, is_uninitialized, main_weight, scheme_for
from probes.tracker import LayerState
from probes.weights import WeightReader, weight_moments

if TYPE_CHECKING:
    from probes._state import SessionState

# Records are built positionally (probes/records.py): bound once, called per layer per collect.
_new_layer_record = positional_constructor(LayerRecord)
_new_activation_stats = positional_constructor(ActivationStats)
_new_gradient_stats = positional_constructor(GradientStats)
_new_weight_stats = positional_constructor(WeightStats)


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

    Records are built positionally (`positional_constructor`, probes/records.py) from the layout's fixed
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
