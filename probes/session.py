"""`attach(model)`: hooks and the functional mode on one ExitStack; `collect()` = one host sync."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from probes import distributed, grouped
from probes.batched import HOLD_MAX, Pending, reduce_gradients, reduce_outputs
from probes.functional import FunctionalActivations
from probes.gradients import (
    HookHandles,
    ParamGradients,
    current_backward_id,
    queue_after_backward,
    slot_prehook,
)
from probes.records import ActivationStats, GradientStats, LayerRecord, WeightStats
from probes.stats import (
    COLUMNS,
    GRAD_NONFINITE,
    GRAD_SUM_SQ,
    NONFINITE,
    SATURATED,
    SUM,
    SUM_SQ,
    CallTable,
    TableRow,
    observe_activation,
    observe_gradient,
    saturation_bounds,
    tracks_dead,
    unit_dim,
    unit_sums,
)
from probes.targets import (
    ACTIVATION_MODULES,
    WEIGHTED_KINDS,
    exported_type_names,
    expected_std,
    fans,
    function_display_name,
    in_parametrization,
    is_uninitialized,
    kind_of,
    main_weight,
    own_parameters,
    scheme_for,
    type_name_of,
)
from probes.tracker import Frame, LayerState, ModuleStack
from probes.updates import UpdateTracker
from probes.weights import WeightReader, weight_moments

# Device types whose per-call results are read on the host at no sync cost: totals are kept in
# Python floats there (probes/stats.py), on the device everywhere else.
HOST_TOTALS_DEVICES = ("cpu",)

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


# A tensor inside a torch.func transform (vmap, grad, jacrev, ...) is a wrapper with no data of its
# own: `.item()` and reductions into preallocated cells raise on it. Such calls are not measured;
# the model's ordinary forwards and backwards still are.
_is_transformed = torch._C._functorch.is_functorch_wrapped_tensor


def _keep_dynamo_out() -> bool:
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


def _outside_compiled_graphs(hook, dynamo_skips_probes: bool):
    """`hook`, run as plain Python when its module runs inside torch.compile (`_keep_dynamo_out`)."""
    return hook if dynamo_skips_probes else torch.compiler.disable(hook)


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


@dataclasses.dataclass(slots=True)
class _Param:
    layer: str
    local_name: str
    param: torch.Tensor  # its size is read at collect: a lazy module's is unknown until a forward


class Session:
    """Measurements of one attached model. Use `attach(model)` to create one."""

    def __init__(self, model: nn.Module, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"probes.attach: every must be a whole number >= 1, got {every!r}")
        self.model = model
        # Measure one forward of the model in `every` (the first, then every `every`-th), with
        # the backward and optimizer step that follow it; between them no hook of ours but the
        # model's own runs. `forwards` counts the model's forwards, measured or not.
        self.every = every
        self.forwards = 0
        self._measuring = True  # the model's current (or last) forward is measured
        # (module, forward pre-hook, forward hook) of every hooked module but the model itself,
        # whose hooks are removed while forwards are not measured (`_hook_modules`)
        self._hook_plan: list[tuple[nn.Module, object, object]] = []
        # (module, pre-hook handle, pre-hook, post-hook handle or None, post-hook), once registered
        self._module_hooks: list[tuple] = []
        self._modules_hooked = False
        # Bumped whenever something is measured: with every > 1, a collect() that finds it
        # unchanged returns the records of the previous one (nothing new was measured).
        self._generation = 0
        self._collected: tuple | None = None  # ((generation, update steps, reduce), records)
        self._states: dict[str, LayerState] = {}
        self._modules: dict[str, nn.Module] = {}
        self._params: list[_Param] = []
        self._param_grads = ParamGradients(params=[])
        self._stack = ModuleStack()
        self._mode = FunctionalActivations(self)
        self._handles = HookHandles()
        self._pending = Pending()  # small outputs of the running forward (probes/batched.py)
        self._pending_grads = Pending()  # small output gradients of the running backward
        self._collect_layout: _Layout | None = None  # what collect reads, per set of layers
        self._next_index = 0
        self._forward_id = 0
        # id(output tensor) -> (weak reference, layer name), for the current forward only. The
        # data flow is tracked in the first forward and in any forward after one that found new
        # layers (a static model: the first two), not in every step of a training run.
        self._producers: dict[int, tuple[weakref.ref, str]] = {}
        self._tracking_flow = True
        self._new_layers = False  # new layers were found in the current forward
        self._replaying = False  # the current forward runs inside a backward (a checkpoint's)
        self._grad_enabled = torch.is_grad_enabled
        self._after_conv1d = False
        self._open = True
        self._backward_queued = -2  # id of the backward pass whose parameter read is queued
        self._read_queued = False  # that read has not run yet
        self._updates: UpdateTracker | None = None
        self._direct_params: dict[str, list[torch.Tensor]] = {}  # layer -> its own parameters
        self._replaced: list[str] = []  # layers seen running with swapped-in parameters
        self._tables: dict[torch.device, CallTable] = {}
        self._device: torch.device | None = None
        self._static_context: dict[str, tuple[str | None, bool]] = {}
        self._dynamo_skips_probes = True  # set by _install (_keep_dynamo_out)
        # Plain sentences on what could not be measured for this model (and why).
        self.limitations: tuple[str, ...] = ()

    # ---- setup -------------------------------------------------------------------------------

    def _install(self, stack: ExitStack) -> None:
        model = self.model
        self._dynamo_skips_probes = _keep_dynamo_out()
        stack.callback(self._close)  # first in, last out: runs after every handle is removed
        exported = exported_type_names(model)
        tracked: list[torch.Tensor] = []
        scripted: list[str] = []  # ScriptModules that are not inside another one
        script_params: list[torch.Tensor] = []
        parametrized: list[str] = []  # layers whose weight is computed by a parametrization
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
                    self._hook_plan.append((module, self._before_inplace, None))
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
                self._states[name] = state
                self._modules[name] = module
                # Sizes and the main weight are read when a collect lays out its reads, not
                # here: a lazy module (LazyLinear) has no shapes before its first forward.
                self._direct_params[name] = [param for _, param in own]
                direct = None if in_script else next(iter(module._parameters.items()), None)
                if direct is not None and direct[1] is not None:
                    state.param_check = direct
                for local, param in own:
                    if param.requires_grad:
                        self._params.append(_Param(name, local, param))
                        tracked.append(param)
                        if in_script and param.is_leaf:  # only a leaf gets a .grad to read
                            script_params.append(param)
            if in_script:
                continue  # forward hooks cannot be registered on (or run inside) a ScriptModule
            # Known leaf types never call a user-visible activation: the mode stays off inside
            # (and an activation module's own F.relu is not reported a second time).
            observes = (kind is None or kind == "other") and not machinery
            root = module is model
            pre_hook = self._enter(name, observes, inplace, flow_only=_runs_only_children(module), root=root)
            post_hook = self._leave(name, state, type_name in _CONV1D_TYPES, root=root)
            if root:  # the model's own hooks stay on: its pre-hook is the clock of `every`
                stack.enter_context(module.register_forward_pre_hook(pre_hook))
                stack.enter_context(module.register_forward_hook(post_hook, always_call=True))
            else:
                self._hook_plan.append((module, pre_hook, post_hook))
        self._hook_modules(True)
        self._param_grads = ParamGradients(params=tracked)
        # Script code runs no output-gradient hook to queue the parameter-gradient read, so each
        # scripted parameter queues it (once per backward) when its .grad has been accumulated.
        for param in script_params:
            stack.callback(param.register_post_accumulate_grad_hook(self._param_grad_ready).remove)
        self._static_context = _script_sequential_context(model, self._states)
        if parametrized:
            self.limitations += (
                "torch.nn.utils.parametrize (weight_norm, spectral_norm, ...) on "
                f"{', '.join(parametrized)}: the scale of a parametrized weight is not judged against "
                "an init scheme, because reading it runs the parametrization (spectral_norm would "
                "take a power-iteration step); its gradients and update ratios are measured on the "
                "original parameters.",
            )
        if scripted:
            where = "the whole model" if scripted == [""] else ", ".join(scripted)
            self.limitations += (
                f"TorchScript ({where}): module hooks cannot run on ScriptModules, so activation, "
                "dead-unit, saturation and output-gradient probes did not run there; weights, "
                "parameter gradients and update ratios were measured.",
            )
        trainable = [
            (name, [p for p in own if p.requires_grad]) for name, own in self._direct_params.items()
        ]
        trainable = [(name, params) for name, params in trainable if params]
        layers_of: dict[int, list[int]] = {}  # id(parameter) -> its layers (tied weights: several)
        for i, (_, params) in enumerate(trainable):
            for param in params:
                layers_of.setdefault(id(param), []).append(i)
        self._updates = UpdateTracker(
            on_error=self._internal_error,
            every_step=self.every == 1,
            layer_names=[name for name, _ in trainable],
            param_layer={key: layers[0] for key, layers in layers_of.items()},
            shared={key: tuple(layers[1:]) for key, layers in layers_of.items() if len(layers) > 1},
        )
        self._updates.register(stack)
        for param in model.parameters():
            self._device = param.device
            break

    def _close(self) -> None:
        was_open, self._open = self._open, False
        try:  # what the last forward/backward still holds is reduced: nothing is lost on exit
            if was_open:
                self._flush_outputs()
                self._flush_gradients()
        except Exception as exc:
            self._internal_error("the last reduction, on exit", exc)
        finally:
            self._pending.take()
            self._pending_grads.take()
            if self._updates is not None:
                self._updates.release()
            self._remove_module_hooks()
            self._mode.remove()
            self._handles.remove_all()
            self._stack.frames.clear()

    # ---- hooks -------------------------------------------------------------------------------

    def _enter(self, name: str, observes: bool, inplace: bool, flow_only: bool = False, root: bool = False):
        """The forward pre-hook of a module: pushes its frame and switches the mode for it.

        `flow_only`: the module's own forward only calls its children (a plain nn.Sequential),
        so it calls no activation itself; the mode is on inside it only while the data flow is
        tracked (ops of unhooked children such as Dropout or Flatten carry it), not in every step.
        `root`: the model itself, whose forwards `every` counts (`_tick`).
        """
        frames = self._stack.frames
        mode = self._mode
        pending = self._pending

        def pre_hook(module, args):
            if not self._open:
                return
            try:
                if root and not frames and not self._tick():
                    return  # a forward that is not measured: nothing of ours runs inside it
                enter(module)
            except Exception as exc:
                self._internal_error(f"the forward pre-hook of {name or 'the model'!r}", exc)

        def enter(module):
            if inplace and pending:
                self._flush_outputs()  # it overwrites its input, which may be a held output
            if not frames:
                # Forward hooks that fire inside a backward pass are a checkpoint recomputing a
                # forward already observed (torch.utils.checkpoint): not counted a second time.
                self._replaying = current_backward_id() != -1
                if not self._replaying:
                    self._read_queued = False  # a backward that raised never ran its queued read
                    self._handles.prune()  # so handles die young (probes/gradients.py HookHandles)
                self._forward_id += 1
                self._producers.clear()
                self._tracking_flow = self._forward_id <= 1 or self._new_layers
                self._new_layers = False
            on = observes and (not flow_only or self._tracking_flow)
            frames.append(Frame(name, on))
            if mode.on_stack is not on:
                mode.switch(on)

        return _outside_compiled_graphs(pre_hook, self._dynamo_skips_probes)

    def _leave(self, name: str, state: LayerState | None, conv1d: bool, root: bool = False):
        frames = self._stack.frames
        mode = self._mode

        weighted = state is not None and state.kind in WEIGHTED_KINDS

        def post_hook(module, args, output):
            if not self._open or (root and not frames and not self._measuring):
                return
            try:
                if mode.on_stack:
                    mode.switch(False)  # our own reductions must not pass through the mode
                if state is not None:
                    if weighted:
                        self._after_conv1d = conv1d
                    check = state.param_check
                    if check is not None and module._parameters.get(check[0]) is not check[1]:
                        self._parameters_replaced(state)
                    self._observe_output(state, output, args)
                if frames and frames[-1].name == name:
                    frames.pop()
                else:
                    self._stack.pop(name)
                if frames:
                    if frames[-1].observes_functions:
                        mode.switch(True)
                elif self._pending:
                    self._flush_outputs()  # the outermost forward is done: reduce what it held
            except Exception as exc:
                self._internal_error(f"the forward hook of {name or 'the model'!r}", exc)

        return _outside_compiled_graphs(post_hook, self._dynamo_skips_probes)

    def _tick(self) -> bool:
        """A forward of the model starts: count it; True when it is measured (see `every`)."""
        if current_backward_id() != -1:
            return self._measuring  # a checkpoint recomputing a forward: not a forward of its own
        self.forwards += 1
        if self.every == 1:
            return True
        measured = (self.forwards - 1) % self.every == 0
        self._measuring = measured
        self._hook_modules(measured)
        if measured:
            self._generation += 1
            if self._updates is not None:
                self._updates.armed = True  # the optimizer step after this forward is measured
        return measured

    def _hook_modules(self, on: bool) -> None:
        """Put the forward hooks of every hooked module but the model itself on, or take them off.

        Registered once; with `every` > 1 they are then taken out of (and put back into) the
        modules' hook dicts under their first ids, at each change between measured and other
        forwards: ~0.1 us a hook, where registering anew (a RemovableHandle each) cost ~3 us,
        0.7 ms per measured step of the 60-layer MLP W4 (benchmarks/overhead.py). Put back, they
        run after any hook the user added to those modules in the meantime. The handles remove
        them on exit, wherever they are.
        """
        if on == self._modules_hooked:
            return
        self._modules_hooked = on
        entries = self._module_hooks
        if not entries:
            if on:
                for module, pre_hook, post_hook in self._hook_plan:
                    pre = module.register_forward_pre_hook(pre_hook)
                    post = None if post_hook is None else module.register_forward_hook(post_hook, always_call=True)
                    entries.append((module, pre, pre_hook, post, post_hook))
            return
        for module, pre, pre_hook, post, post_hook in entries:
            if on:
                module._forward_pre_hooks[pre.id] = pre_hook
                if post is not None:
                    module._forward_hooks[post.id] = post_hook
                    module._forward_hooks_always_called[post.id] = True
            else:
                module._forward_pre_hooks.pop(pre.id, None)
                if post is not None:
                    module._forward_hooks.pop(post.id, None)
                    module._forward_hooks_always_called.pop(post.id, None)

    def _remove_module_hooks(self) -> None:
        for _, pre, _, post, _ in self._module_hooks:
            pre.remove()
            if post is not None:
                post.remove()
        self._module_hooks.clear()
        self._modules_hooked = False

    def _observe_function(self, func, family, args, kwargs, out: torch.Tensor) -> None:
        frame = self._stack.top
        if frame is None or not frame.observes_functions or not self._open:
            return  # outside the model, or inside a module that has its own record
        display = function_display_name(func)
        if frame.function_calls is None:
            frame.function_calls = {}
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
        self._observe_output(state, out, args)

    def _pass_through(self, inputs, output) -> None:
        """Dropout, reshapes, pooling: their output keeps the producer of their input."""
        if not self._tracking_flow:
            return
        out = output[0] if isinstance(output, tuple) and output else output
        if not isinstance(out, torch.Tensor) or not self._open:
            return
        producer = self._producer_of(inputs)
        if producer:
            self._producers[id(out)] = (weakref.ref(out), producer)

    def _producer_of(self, inputs) -> str:
        """The probed layer that produced the first tensor in `inputs` in this forward, or ""."""
        first = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
        if not isinstance(first, torch.Tensor):
            return ""
        entry = self._producers.get(id(first))
        # ids are reused once a tensor dies: the weak reference proves it is the same tensor
        return entry[1] if entry is not None and entry[0]() is first else ""

    def _observe_output(self, state: LayerState, output, inputs=None) -> None:
        y = output if type(output) is torch.Tensor else _first_float_tensor(output)
        if y is not None and _is_transformed(y):
            return  # inside torch.func.vmap/grad/jacrev (see _is_transformed)
        if self._replaying:  # a checkpoint recomputing this forward inside the backward
            if y is not None and y.is_floating_point() and state.index >= 0:
                self._watch_gradient(state, y)  # reentrant checkpoints backpropagate through it
            return
        state.calls += 1
        if y is None or not y.is_floating_point():
            return
        if state.index < 0:
            self._discover(state, y, inputs)
        elif state.input_from is None and self._tracking_flow:
            state.input_from = self._producer_of(inputs)  # first seen in a forward not tracked
        if self._tracking_flow:
            self._producers[id(y)] = (weakref.ref(y), state.name)
        numel = y.numel()
        first = state.count == 0
        state.count += numel
        dim = -1
        if state.tracks_dead and numel > 0:
            ndim = y.dim()
            if ndim != state.unit_ndim:
                state.unit_ndim = ndim
                state.unit_axis = unit_dim(y, self._after_conv1d) if ndim > 0 else -1
            dim = state.unit_axis
        if numel <= HOLD_MAX and state.holds and not first and numel > 0 and not y.is_inference():
            # Held as is (no detach: the batched reduction runs under no_grad), until the forward ends.
            pending = self._pending
            pending.append((state, y, y._version, dim, self._forward_id, False))
            if len(pending) >= pending.cap:
                self._flush_outputs()
        else:
            data = y.detach()  # reductions of a detached tensor record no graph
            if dim >= 0:  # relu/relu6: per-unit sums give the dead units and the total in one pass
                sums = unit_sums(data, dim)
                observe_activation(state.row, data, state.bounds, total=sums.sum())
                state.alive.add_maxima(sums, self._forward_id)
            else:
                observe_activation(state.row, data, state.bounds)
            if 0 < numel <= HOLD_MAX and first and not data.is_inference():
                # learn whether this output is changed in place later (inference tensors have
                # no version counter: they are reduced at once, always)
                self._pending.append((state, data, data._version, -1, 0, True))
        self._watch_gradient(state, y)

    def _watch_gradient(self, state: LayerState, y: torch.Tensor) -> None:
        """Hook the autograd node that made `y`, to measure the gradient w.r.t. `y`."""
        if y.requires_grad and self._grad_enabled():
            node = y.grad_fn
            try:
                if node is None:  # a leaf returned as is: a tensor hook is exact there
                    hook = state.gradient_hook or self._new_grad_hook(state)
                    self._handles.add(y.register_hook(hook))
                else:
                    slot = y.output_nr
                    prehook = state.gradient_prehooks.get(slot) or self._new_grad_prehook(state, slot)
                    self._handles.add(node.register_prehook(prehook))
            except RuntimeError:
                pass  # a tensor that cannot take hooks: no output gradient for this call

    def _discover(self, state: LayerState, y: torch.Tensor, inputs) -> None:
        """A layer's first output: its place in the execution order, shape and data source."""
        state.index = self._next_index
        self._next_index += 1
        state.output_shape = tuple(y.shape)
        # In a forward that does not track the data flow the source is unknown (None) for now
        # and filled in on the next call, in the next forward, which tracks it.
        state.input_from = self._producer_of(inputs) if self._tracking_flow else None
        self._new_layers = True
        state.row = self._new_row(y)

    def _new_row(self, data: torch.Tensor) -> TableRow:
        table = self._tables.get(data.device)
        if table is None:
            dtype = torch.float64 if data.dtype == torch.float64 else torch.float32
            table = self._tables[data.device] = CallTable(
                device=data.device, dtype=dtype, on_host=data.device.type in HOST_TOTALS_DEVICES
            )
        return table.add_row()

    def _new_grad_hook(self, state: LayerState):
        """The layer's output-gradient hook (made once, kept on its state): gets the gradient."""
        pending = self._pending_grads
        task_id = current_backward_id

        def hook(grad: torch.Tensor) -> None:
            if not self._open:
                return
            try:
                measure(grad)
            except Exception as exc:
                self._internal_error(f"the output-gradient hook of {state.name!r}", exc)

        def measure(grad: torch.Tensor) -> None:
            self._generation += 1
            numel = grad.numel()
            state.gradient_count += numel
            state.gradient_calls += 1
            if 0 < numel <= HOLD_MAX and state.holds_gradient:
                # The engine's own tensor is held (not a detached alias): while we reference it,
                # autograd does not accumulate another gradient into it in place.
                pending.append((state, grad, grad._version))
                if len(pending) >= pending.cap:
                    self._flush_gradients()
            else:
                observe_gradient(state.row, grad.detach())
            if task_id() != self._backward_queued:
                self._queue_param_read()

        state.gradient_hook = hook
        return hook

    def _new_grad_prehook(self, state: LayerState, slot: int):
        """A pre-hook for the autograd node that made the output: it gets the output's gradient."""
        hook = state.gradient_hook or self._new_grad_hook(state)
        prehook = state.gradient_prehooks[slot] = slot_prehook(slot, hook)
        return prehook

    def _param_grad_ready(self, param: torch.Tensor) -> None:
        if self._open and self._measuring:
            try:
                self._queue_param_read()
            except Exception as exc:
                self._internal_error("a parameter-gradient hook", exc)

    def _queue_param_read(self) -> None:
        """Read every tracked `.grad` once, after the backward pass now running is done."""
        backward = current_backward_id()
        if backward != self._backward_queued and (self._params or self._pending_grads):
            self._backward_queued = backward
            if self._read_queued:
                # A backward run inside one whose read is still to come (a reentrant checkpoint):
                # that read covers what this one accumulates; reading here would count it twice.
                return
            self._read_queued = True
            queue_after_backward(self._after_backward)

    def _after_backward(self) -> None:
        self._read_queued = False
        self._generation += 1
        if self._open:
            try:
                self._flush_gradients()
                if self._params:
                    self._param_grads.measure()
            except Exception as exc:
                self._internal_error("the end-of-backward read of parameter gradients", exc)

    def _before_inplace(self, module, args) -> None:
        if self._open and self._pending:
            try:
                self._flush_outputs()
            except Exception as exc:
                self._internal_error("the flush before an in-place module", exc)

    def _parameters_replaced(self, state: LayerState) -> None:
        """The module ran with tensors other than its own parameters (torch.func.functional_call)."""
        state.param_check = None  # said once per layer
        self._replaced.append(state.name)
        note = (
            "parameters replaced during a forward (torch.func.functional_call or "
            "torch.nn.utils.stateless) on {}: gradients of those forwards went to the replacement "
            "tensors, which the probes do not track, so these layers' parameter gradients, "
            "params_without_gradient and update ratios describe their own parameters only."
        )
        self.limitations = tuple(n for n in self.limitations if not n.startswith("parameters replaced"))
        self.limitations += (note.format(", ".join(self._replaced)),)

    def _internal_error(self, where: str, exc: Exception) -> None:
        """A bug in the probes themselves (not in the user's code): stop measuring, keep the run.

        Probes are observers; a failure of theirs must not end a training run. The session stops
        measuring (every hook returns at once, the functional mode passes calls through), warns,
        and says so in `limitations`, which the report shows. With PROBES_STRICT=1 in the
        environment (the test suite sets it) the error is raised instead, where it happened.
        """
        if os.environ.get("PROBES_STRICT") == "1":
            raise exc
        self._open = False
        self._pending.take()
        self._pending_grads.take()
        self._stack.frames.clear()
        # The functional mode is left where it is (it may be dispatching right now, popped by
        # torch until it returns): closed, it passes every call straight through, and the exit
        # takes it off the stack.
        if self._updates is not None:
            self._updates.active = False
        message = (
            f"the probes stopped measuring after an internal error in {where} "
            f"({type(exc).__name__}: {exc}); the statistics cover the calls before it"
        )
        self.limitations += (message + ".",)
        warnings.warn(f"probes: {message}. Please report it.", RuntimeWarning, stacklevel=2)

    def _flush_outputs(self) -> None:
        """Reduce the held outputs now (end of a forward, before an in-place op, collect, exit)."""
        if self._pending:
            reduce_outputs(self._pending.take())

    def _flush_gradients(self) -> None:
        if self._pending_grads:
            reduce_gradients(self._pending_grads.take())

    # ---- collect -----------------------------------------------------------------------------

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
        if self.every == 1:
            return self._collect(reduce)
        key = (self._generation, self._updates.generation if self._updates else 0, reduce)
        # Not under torch.distributed: every rank must take part in each collect's all-reduce.
        if self._collected is not None and self._collected[0] == key and not (
            reduce and distributed.world_size() > 1
        ):
            return list(self._collected[1])
        records = self._collect(reduce)
        self._collected = (key, records)
        return list(records)

    def _collect(self, reduce: bool) -> list[LayerRecord]:
        self._flush_outputs()
        self._flush_gradients()
        layout = self._layout()
        states = layout.states
        device = self._device or torch.device("cpu")
        plan = _TransferPlan(device)
        with torch.no_grad():
            table_slots = {
                id(table): plan.vector(table.totals())
                for table in self._tables.values() if not table.on_host
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
        param_parts = self._param_grads.parts()
        param_slots = [(key, plan.vector(vec)) for key, vec in param_parts]
        reader = layout.weights
        weight_slot = plan.vector(reader.parts()) if reader is not None else None
        update_slots = [plan.vector(v) for v in self._updates.parts()] if self._updates else []
        with torch.no_grad():
            host = plan.fetch()

        tables = {key: plan.values(host, slot) for key, slot in table_slots.items()}
        totals = [_row_totals(s, tables) for s in states]
        self._param_grads.absorb([(key, plan.values(host, slot)) for key, slot in param_slots])
        param_totals = list(self._param_grads.totals)
        param_calls = [0.0] * len(self._params)
        for key, calls in self._param_grads.calls.items():
            for position in key:
                param_calls[position] += calls
        if distributed_run:
            flat = [v for row in totals for v in row] + param_totals + param_calls
            flat = distributed.reduce_host_sums(flat, device)
            width = len(totals[0]) if totals else 0
            totals = [flat[i * width:(i + 1) * width] for i in range(len(totals))]
            rest = flat[len(totals) * width:]
            param_totals, param_calls = rest[:len(self._params)], rest[len(self._params):]
        alive = {}
        if alive_slot is not None:
            counts = [0.0] * len(masks)
            for mask, count in zip(alive_order, plan.values(host, alive_slot)):
                counts[mask] = count
            for i, (state, (_, latest)) in enumerate(maxima):
                alive[state.name] = (int(latest.numel()), counts[2 * i], counts[2 * i + 1])
        weights = reader.values(plan.values(host, weight_slot)) if reader is not None else []
        if self._updates is not None:
            self._updates.absorb([plan.values(host, slot) for slot in update_slots])
        return self._records(layout, totals, alive, weights, param_totals, param_calls)

    def _layout(self) -> "_Layout":
        """Which layers a collect reports, in which order, and what it reads: made once per set."""
        key = (len(self._states), self._next_index)
        if self._collect_layout is not None and self._collect_layout.key == key:
            return self._collect_layout
        executed = sorted((s for s in self._states.values() if s.index >= 0), key=lambda s: s.index)
        unused = [
            s for s in self._states.values()
            if s.index < 0 and s.source == "module"
            and (self._trainable(s.name) or (s.in_script and self._param_count(s.name, False) > 0))
        ]
        states = executed + unused
        positions: dict[str, list[int]] = {}
        for position, param in enumerate(self._params):
            positions.setdefault(param.layer, []).append(position)
        context = _following_context(executed)
        main_weights = {
            s.name: weight[1] for s in states if s.kind in WEIGHTED_KINDS and s.source == "module"
            and (weight := main_weight(self._modules[s.name], s.kind)) is not None
        }
        weighted = [(s, main_weights[s.name]) for s in states if s.name in main_weights]
        slot_of = {s.name: i for i, (s, _) in enumerate(weighted)}
        contexts = [context.get(s.name) or self._static_context.get(s.name, (None, False)) for s in states]
        self._collect_layout = _Layout(
            key=key,
            states=states,
            dead_capable=[s for s in states if s.tracks_dead],
            weights=WeightReader([(w, self._bias(s)) for s, w in weighted]) if weighted else None,
            weight_info=[
                self._weight_info(s, main_weights[s.name], slot_of[s.name], contexts[i][0])
                if s.name in slot_of else None
                for i, s in enumerate(states)
            ],
            context=contexts,
            params=[
                tuple((i, self._params[i].local_name, self._params[i].param.numel()) for i in positions.get(s.name, ()))
                for s in states
            ],
            static=[self._fields_of(s, contexts[i][0]) for i, s in enumerate(states)],
        )
        return self._collect_layout

    def _bias(self, state: LayerState) -> torch.Tensor | None:
        bias = getattr(self._modules[state.name], "bias", None)
        return bias if isinstance(bias, torch.Tensor) and bias.numel() > 0 else None

    def _trainable(self, name: str) -> bool:
        return self._param_count(name, trainable_only=True) > 0

    def _param_count(self, name: str, trainable_only: bool) -> int:
        """Elements of a layer's own parameters (0 for an activation called as a function)."""
        return sum(
            p.numel() for p in self._direct_params.get(name, ())
            if (p.requires_grad or not trainable_only) and not is_uninitialized(p)
        )

    def _records(self, layout, totals, alive, weights, param_totals, param_calls) -> list[LayerRecord]:
        """Plain records from the host values of one collect (runs per layer per collect: kept lean).

        Records are built positionally (`_positional`, probes/records.py) from the layout's fixed
        fields: on a 120-layer model this loop is most of what a collect costs on the host.
        """
        ratios = self._updates.ratios if self._updates else {}
        make_record = LayerRecord._positional
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

    def _fields_of(self, state: LayerState, followed_by: str | None) -> tuple:
        """Record fields fixed while the set of layers is (cached per layout), in `_records` order:
        name, type, kind, source, owner, activation_kind, parameters, trainable_parameters,
        followed_by."""
        return (
            state.name, state.type_name, state.kind, state.source, state.owner, state.family,
            self._param_count(state.name, trainable_only=False),
            self._param_count(state.name, trainable_only=True),
            followed_by if state.kind in WEIGHTED_KINDS else None,
        )

    def _weight_info(self, state: LayerState, weight: torch.Tensor, slot: int, followed_by: str | None) -> tuple:
        """What a weighted layer's WeightStats need besides the measured sums (fixed per layout)."""
        bias = self._bias(state)
        fan_in, fan_out, scheme, expected = self._init_target(state, weight, followed_by)
        return (
            slot, weight.numel(), 0 if bias is None else bias.numel(), not self._trainable(state.name),
            fan_in, fan_out, scheme, expected,
        )

    @staticmethod
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
    # per state: (position in Session._params, local name, numel) of its tracked parameters
    params: list[tuple[tuple[int, str, int], ...]]
    static: list[tuple]  # per state: record fields fixed while attached (Session._fields_of)


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
    return WeightStats._positional(
        w_std, w_mean, expected, scheme, fan_in, fan_out, normalized, frozen, weight_numel, b_mean, b_std
    )


def _activation_stats(state: LayerState, count, s1, s2, nonfinite, saturated, alive) -> ActivationStats:
    if count <= 0:
        return ActivationStats._positional(None, None, None, None, 0, 0, alive[0] if alive else None, None)
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
    return ActivationStats._positional(
        mean, std, dead, (saturated / count) if state.bounds is not None else None,
        int(round(nonfinite)), int(count), units, dead_last,
    )


def _output_gradient_stats(count, calls, g2, g_nonfinite) -> GradientStats:
    """A layer without trainable parameters: its gradient is the one w.r.t. its output."""
    output_rms = math.sqrt(g2 / count) if count > 0 else None
    output_norm = math.sqrt(g2 / calls) if calls > 0 else None
    return GradientStats._positional(
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
    gradient = GradientStats._positional(
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
    """`_following_context` for weighted layers in scripted Sequentials, which never report running.

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
