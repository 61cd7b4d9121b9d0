"""`attach(model)`: hooks and the functional mode on one ExitStack; `collect()` = one host sync."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from probes import distributed
from probes.functional import FunctionalActivations
from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats
from probes.stats import (
    ACTIVATION_WIDTH,
    GRADIENT_WIDTH,
    MomentAccumulator,
    activation_part,
    alive_units,
    gradient_part,
    saturation_bounds,
    tracks_dead,
    unit_dim,
)
from probes.targets import (
    ACTIVATION_MODULES,
    WEIGHTED_KINDS,
    exported_type_names,
    expected_std,
    fans,
    function_display_name,
    kind_of,
    main_weight,
    scheme_for,
    type_name_of,
)
from probes.tracker import Frame, LayerState, ModuleStack
from probes.updates import UpdateTracker
from probes.weights import WEIGHT_WIDTH, weight_part

_CONV1D_TYPES = frozenset({"Conv1d", "ConvTranspose1d", "LazyConv1d"})


def _first_float_tensor(value, depth: int = 0) -> torch.Tensor | None:
    """The tensor a layer 'outputs': the first floating tensor in tuples, dicts, dataclasses."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    if depth > 4:
        return None
    if isinstance(value, dict):
        items = value.values()
    elif isinstance(value, (tuple, list)):
        items = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = (getattr(value, f.name) for f in dataclasses.fields(value))
    else:
        return None
    for item in items:
        found = _first_float_tensor(item, depth + 1)
        if found is not None:
            return found
    return None


def _no_torch_function():
    # Our own reductions must not be seen by the functional mode (nor pay for it).
    disable = getattr(torch._C, "DisableTorchFunction", None)
    return disable() if disable is not None else contextlib.nullcontext()


@dataclasses.dataclass(slots=True)
class _ParamState:
    layer: str
    local_name: str
    numel: int
    sq: MomentAccumulator = dataclasses.field(default_factory=MomentAccumulator)  # count = calls


class Session:
    """Measurements of one attached model. Use `attach(model)` to create one."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._states: dict[str, LayerState] = {}
        self._modules: dict[str, nn.Module] = {}
        self._params: dict[int, _ParamState] = {}
        self._stack = ModuleStack()
        self._next_index = 0
        self._forward_id = 0
        self._after_conv1d = False
        self._open = True
        self._tensor_handles: list = []
        self._updates: UpdateTracker | None = None
        self._device: torch.device | None = None

    # ---- setup -------------------------------------------------------------------------------

    def _install(self, stack: ExitStack) -> None:
        model = self.model
        exported = exported_type_names(model)
        for name, module in model.named_modules():
            type_name = type_name_of(module, name, exported)
            has_params = any(True for _ in module.parameters(recurse=False))
            kind = kind_of(type_name, has_params)
            is_activation = kind == "activation"
            if kind is not None:
                family = ACTIVATION_MODULES.get(type_name) if is_activation else None
                bounds = saturation_bounds(
                    family, getattr(module, "min_val", None), getattr(module, "max_val", None)
                )
                self._states[name] = LayerState(
                    name=name, type_name=type_name, kind=kind, source="module", owner=name,
                    family=family, bounds=bounds, tracks_dead=tracks_dead(family),
                )
                self._modules[name] = module
                for local, param in module.named_parameters(recurse=False):
                    if param.requires_grad:
                        self._params[id(param)] = _ParamState(name, local, param.numel())
                        stack.enter_context(param.register_hook(self._param_hook(self._params[id(param)])))
            stack.enter_context(module.register_forward_pre_hook(self._enter(name, is_activation)))
            stack.enter_context(
                module.register_forward_hook(
                    self._leave(name, self._states.get(name), type_name), always_call=True
                )
            )
        stack.enter_context(FunctionalActivations(self))
        trainable = [
            (name, [p for p in self._modules[name].parameters(recurse=False) if p.requires_grad])
            for name in self._states
        ]
        trainable = [(name, params) for name, params in trainable if params]
        self._updates = UpdateTracker(
            layer_names=[name for name, _ in trainable],
            param_layer={id(p): i for i, (_, params) in enumerate(trainable) for p in params},
        )
        self._updates.register(stack)
        stack.callback(self._close)
        for param in model.parameters():
            self._device = param.device
            break

    def _close(self) -> None:
        self._open = False
        if self._updates is not None:
            self._updates.active = False
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles.clear()
        self._stack.frames.clear()

    # ---- hooks -------------------------------------------------------------------------------

    def _enter(self, name: str, is_activation: bool):
        def pre_hook(module, args):
            if not self._stack.frames:
                self._forward_id += 1
            self._stack.push(Frame(name=name, is_activation=is_activation))

        return pre_hook

    def _leave(self, name: str, state: LayerState | None, type_name: str):
        conv1d = type_name in _CONV1D_TYPES

        def post_hook(module, args, output):
            try:
                if state is not None and self._open:
                    if state.kind in WEIGHTED_KINDS:
                        self._after_conv1d = conv1d
                    self._observe_output(state, output)
            finally:
                self._stack.pop(name)

        return post_hook

    def _observe_function(self, func, family, args, kwargs, out: torch.Tensor) -> None:
        frame = self._stack.top
        if frame is None or frame.is_activation or not self._open:
            return  # outside the model, or inside an activation module that has its own record
        display = function_display_name(func)
        nth = frame.function_calls.get(display, 0)
        frame.function_calls[display] = nth + 1
        base = f"{frame.name}.{display}()" if frame.name else f"{display}()"
        name = base if nth == 0 else f"{base}#{nth + 1}"
        state = self._states.get(name)
        if state is None:
            low = kwargs.get("min_val", args[1] if len(args) > 1 else None)
            high = kwargs.get("max_val", args[2] if len(args) > 2 else None)
            bounds = saturation_bounds(
                family,
                low if isinstance(low, (int, float)) else None,
                high if isinstance(high, (int, float)) else None,
            )
            state = LayerState(
                name=name, type_name=display, kind="activation", source="function", owner=frame.name,
                family=family, bounds=bounds, tracks_dead=tracks_dead(family),
            )
            self._states[name] = state
        self._observe_output(state, out)

    def _observe_output(self, state: LayerState, output) -> None:
        y = _first_float_tensor(output)
        state.calls += 1
        if y is None:
            return
        if state.index < 0:
            state.index = self._next_index
            self._next_index += 1
            state.output_shape = tuple(y.shape)
        with torch.no_grad(), _no_torch_function():
            data = y.detach()
            state.activation.add(activation_part(data, state.bounds), data.numel())
            if state.tracks_dead and data.dim() > 0:
                alive = alive_units(data, unit_dim(data, self._after_conv1d))
                state.units = int(alive.numel())
                if state.alive is None or state.alive.shape != alive.shape:
                    state.alive = alive
                else:
                    state.alive = state.alive | alive
                if state.alive_last_forward != self._forward_id or state.alive_last is None or (
                    state.alive_last.shape != alive.shape
                ):
                    state.alive_last = alive
                    state.alive_last_forward = self._forward_id
                else:
                    state.alive_last = state.alive_last | alive
        if y.requires_grad and torch.is_grad_enabled():
            try:
                self._tensor_handles.append(y.register_hook(self._output_grad_hook(state)))
            except RuntimeError:
                pass  # a tensor that cannot take hooks (e.g. some in-place views): no output grad

    def _output_grad_hook(self, state: LayerState):
        def hook(grad: torch.Tensor) -> None:
            if not self._open or grad is None:
                return
            with torch.no_grad(), _no_torch_function():
                state.output_gradient.add(gradient_part(_as_float(grad)), grad.numel())
                state.output_gradient_calls += 1

        return hook

    def _param_hook(self, param_state: _ParamState):
        def hook(grad: torch.Tensor) -> None:
            if not self._open or grad is None:
                return
            with torch.no_grad(), _no_torch_function():
                flat = _as_float(grad).reshape(-1)
                param_state.sq.add(torch.dot(flat, flat).double().reshape(1), 1)

        return hook

    # ---- collect -----------------------------------------------------------------------------

    def collect(self, reduce: bool = True) -> list[LayerRecord]:
        """One record per probed layer in execution order; the only host sync of the session.

        Inside an initialised torch.distributed group, sums and counts are all-reduced first
        (`reduce=True`), so every rank gets the statistics of all ranks' batches together.
        """
        executed = sorted((s for s in self._states.values() if s.index >= 0), key=lambda s: s.index)
        unused = [
            s for s in self._states.values()
            if s.index < 0 and s.source == "module" and self._trainable(s.name)
        ]
        states = executed + unused
        device = self._device or torch.device("cpu")
        with torch.no_grad(), _no_torch_function():
            sums, masks, fixed = self._gather(states, device)
            if reduce and distributed.world_size() > 1:
                sums = distributed.reduce_sums(sums)
                if masks.numel():
                    masks = distributed.reduce_any(masks)
            host = torch.cat((sums, masks.double(), fixed)).cpu().tolist()
        return self._records(states, executed, host, sums.numel(), masks.numel())

    def _trainable(self, name: str) -> bool:
        return any(p.requires_grad for p in self._modules[name].parameters(recurse=False))

    def _layer_params(self, name: str) -> list[_ParamState]:
        return [ps for ps in self._params.values() if ps.layer == name]

    def _gather(self, states: list[LayerState], device: torch.device):
        sum_parts: list[torch.Tensor] = []
        mask_parts: list[torch.Tensor] = []
        fixed_parts: list[torch.Tensor] = []
        for state in states:
            counts = torch.tensor(
                [float(state.activation.count), float(state.output_gradient.count),
                 float(state.output_gradient_calls)],
                dtype=torch.float64, device=device,
            )
            sum_parts += [
                counts,
                state.activation.total(ACTIVATION_WIDTH, device).to(device),
                state.output_gradient.total(GRADIENT_WIDTH, device).to(device),
            ]
            for param in self._layer_params(state.name):
                sum_parts.append(param.sq.total(1, device).to(device))
                sum_parts.append(torch.tensor([float(param.sq.count)], dtype=torch.float64, device=device))
            for mask in (state.alive, state.alive_last):
                if state.tracks_dead and state.units:
                    mask_parts.append(
                        mask.to(device).double() if mask is not None
                        else torch.zeros(state.units, dtype=torch.float64, device=device)
                    )
            if state.source == "module" and state.kind in WEIGHTED_KINDS:
                weight = main_weight(self._modules[state.name], state.kind)
                if weight is not None:
                    fixed_parts.append(weight_part(self._modules[state.name], weight[1]).to(device))
        updates = self._updates.history(device) if self._updates else torch.zeros((0, 0))
        fixed_parts.append(updates.reshape(-1).to(device))

        def cat(parts):
            return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)

        return cat(sum_parts), cat(mask_parts), cat(fixed_parts)

    def _records(self, states, executed, host: list[float], n_sums: int, n_masks: int) -> list[LayerRecord]:
        sums = iter(host[:n_sums])
        masks = host[n_sums:n_sums + n_masks]
        fixed = iter(host[n_sums + n_masks:])
        mask_pos = 0
        partial: list[dict] = []
        for state in states:
            act_count, grad_count, grad_calls = next(sums), next(sums), next(sums)
            s1, s2, finite, saturated = (next(sums) for _ in range(ACTIVATION_WIDTH))
            g2, g_finite = (next(sums) for _ in range(GRADIENT_WIDTH))
            param_sq: list[tuple[_ParamState, float, float]] = []
            for param in self._layer_params(state.name):
                param_sq.append((param, next(sums), next(sums)))
            dead = dead_last = None
            if state.tracks_dead and state.units:
                alive_all = masks[mask_pos:mask_pos + state.units]
                alive_last = masks[mask_pos + state.units:mask_pos + 2 * state.units]
                mask_pos += 2 * state.units
                dead = 1.0 - sum(1.0 for v in alive_all if v > 0) / state.units
                dead_last = 1.0 - sum(1.0 for v in alive_last if v > 0) / state.units
            weight_values = None
            if state.source == "module" and state.kind in WEIGHTED_KINDS:
                if main_weight(self._modules[state.name], state.kind) is not None:
                    weight_values = [next(fixed) for _ in range(WEIGHT_WIDTH)]
            partial.append(dict(
                state=state, act=(act_count, s1, s2, finite, saturated), grad=(grad_count, grad_calls, g2, g_finite),
                params=param_sq, dead=(dead, dead_last), weight_values=weight_values,
            ))
        update_history = list(fixed)
        return self._assemble(partial, executed, update_history)

    def _assemble(self, partial, executed, update_history) -> list[LayerRecord]:
        update_names = self._updates.layer_names if self._updates else []
        n_layers = len(update_names)
        steps = len(update_history) // n_layers if n_layers else 0
        per_layer_updates = {
            name: [update_history[step * n_layers + i] for step in range(steps)]
            for i, name in enumerate(update_names)
        }
        context = _following_context(executed)
        records: list[LayerRecord] = []
        for position, item in enumerate(partial):
            state: LayerState = item["state"]
            followed_by, normalized = context.get(state.name, (None, False))
            records.append(
                LayerRecord(
                    name=state.name, type=state.type_name,
                    index=state.index if state.index >= 0 else position,
                    kind=state.kind, source=state.source, owner=state.owner,
                    activation_kind=state.family,
                    followed_by=followed_by if state.kind in WEIGHTED_KINDS else None,
                    calls=state.calls, output_shape=state.output_shape,
                    parameters=self._count_params(state, trainable_only=False),
                    trainable_parameters=self._count_params(state, trainable_only=True),
                    params_without_gradient=tuple(
                        p.local_name for p, total, calls in item["params"] if calls == 0 or total == 0.0
                    ),
                    activation=_activation_stats(state, item["act"], item["dead"]),
                    gradient=_gradient_stats(item["grad"], item["params"]),
                    weight=self._weight_stats(state, item["weight_values"], followed_by, normalized),
                    **_update_fields(per_layer_updates.get(state.name)),
                )
            )
        return records

    def _count_params(self, state: LayerState, trainable_only: bool) -> int:
        if state.source != "module":
            return 0
        return sum(
            p.numel() for p in self._modules[state.name].parameters(recurse=False)
            if p.requires_grad or not trainable_only
        )

    def _weight_stats(self, state, values, followed_by, normalized) -> WeightStats | None:
        if values is None:
            return None
        module = self._modules[state.name]
        name, weight = main_weight(module, state.kind)
        w_std, w_mean, b_std, b_mean = values
        fan_in = fan_out = None
        scheme = expected = None
        if state.kind in ("linear", "conv", "attention", "other"):
            fan_in, fan_out = fans(weight, state.type_name)
            if fan_in > 0 and fan_out > 0:
                scheme = scheme_for(followed_by if followed_by != "none" else None)
                expected = expected_std(scheme, fan_in, fan_out)
        return WeightStats(
            std=w_std, mean=w_mean, expected_std=expected, scheme=scheme, fan_in=fan_in, fan_out=fan_out,
            normalized=normalized, frozen=not any(p.requires_grad for p in module.parameters(recurse=False)),
            numel=weight.numel(), bias_mean=None if math.isnan(b_mean) else b_mean,
            bias_std=None if math.isnan(b_std) else b_std,
        )


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _finite_or_none(value: float) -> float | None:
    return value


def _activation_stats(state: LayerState, act, dead) -> ActivationStats:
    count, s1, s2, finite, saturated = act
    dead_fraction, dead_last = dead
    if count <= 0:
        return ActivationStats(units=state.units)
    mean = s1 / count
    variance = max(s2 / count - mean * mean, 0.0) if math.isfinite(s2) and math.isfinite(mean) else float("nan")
    return ActivationStats(
        mean=mean,
        std=math.sqrt(variance) if math.isfinite(variance) else float("nan"),
        dead_fraction=dead_fraction,
        saturated_fraction=(saturated / count) if state.bounds is not None else None,
        nonfinite=int(round(count - finite)),
        count=int(count),
        units=state.units,
        dead_fraction_last=dead_last,
    )


def _gradient_stats(grad, params) -> GradientStats:
    count, calls, g2, g_finite = grad
    output_rms = math.sqrt(g2 / count) if count > 0 else None
    nonfinite = int(round(count - g_finite)) if count > 0 else 0
    param_norm = param_rms = None
    param_calls = max((c for _, _, c in params), default=0)
    if param_calls > 0:
        total = sum(t for _, t, _ in params)
        elements = sum(p.numel * c for p, _, c in params)
        param_norm = math.sqrt(total / param_calls) if total == total else float("nan")
        param_rms = math.sqrt(total / elements) if elements and total == total else float("nan")
        nonfinite += sum(1 for _, t, _ in params if not math.isfinite(t))
    has_params = bool(params)
    output_norm = math.sqrt(g2 / calls) if calls > 0 else None
    return GradientStats(
        norm=param_norm if has_params else output_norm,
        rms=param_rms if has_params else output_rms,
        output_rms=output_rms,
        param_norm=param_norm,
        param_rms=param_rms,
        nonfinite=nonfinite,
        backward_calls=int(max(param_calls, calls)),
    )


def _update_fields(history: list[float] | None) -> dict:
    if not history:
        return {}
    finite = [v for v in history if not math.isnan(v)]
    if not finite:
        return {}
    return {
        "update_ratio": sum(finite) / len(finite),
        "update_ratio_max": max(finite),
        "update_ratios": tuple(finite),
    }


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


@contextmanager
def attach(model: nn.Module) -> Iterator[Session]:
    """Probe `model` while the block runs; every hook and mode is removed on exit, also on error."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"probes.attach expects an nn.Module, got {type(model).__name__}")
    session = Session(model)
    with ExitStack() as stack:
        session._install(stack)
        yield session
