"""The forward hooks of a session: module frames, the clock of `every`, and each layer's output.

Every function takes the session's `SessionState` (probes/_state.py); the hooks made here bind it
(and the frame list, the mode, the held outputs) once, when they are made, so a hook call does no
more lookups than a method of the session would. Activations called as functions arrive through
`FunctionCalls`, the narrow face the functional mode (probes/functional.py) sees.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import TYPE_CHECKING

import torch

from probes._backward import watch_gradient
from probes.batched import HOLD_MAX, reduce_outputs
from probes.gradients import current_backward_id
from probes.stats import (
    CallTable,
    TableRow,
    observe_activation,
    saturation_bounds,
    tracks_dead,
    unit_dim,
    unit_sums,
)
from probes.targets import WEIGHTED_KINDS, function_display_name
from probes.tracker import Frame, LayerState

if TYPE_CHECKING:
    from probes._state import SessionState

# Device types whose per-call results are read on the host at no sync cost: totals are kept in
# Python floats there (probes/stats.py), on the device everywhere else.
HOST_TOTALS_DEVICES = ("cpu",)


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


def _outside_compiled_graphs(hook, dynamo_skips_probes: bool):
    """`hook`, run as plain Python when its module runs inside torch.compile (see
    probes/_install.py keep_dynamo_out)."""
    return hook if dynamo_skips_probes else torch.compiler.disable(hook)


# ---- module hooks ----------------------------------------------------------------------------


def make_pre_hook(
    shared: SessionState, name: str, observes: bool, inplace: bool, flow_only: bool = False, root: bool = False
):
    """The forward pre-hook of a module: pushes its frame and switches the mode for it.

    `flow_only`: the module's own forward only calls its children (a plain nn.Sequential),
    so it calls no activation itself; the mode is on inside it only while the data flow is
    tracked (ops of unhooked children such as Dropout or Flatten carry it), not in every step.
    `root`: the model itself, whose forwards `every` counts (`tick`).
    """
    frames = shared.stack.frames
    mode = shared.mode
    pending = shared.pending

    def pre_hook(module, args):
        if not shared.open:
            return
        try:
            if root and not frames and not tick(shared):
                return  # a forward that is not measured: nothing of ours runs inside it
            enter(module)
        except Exception as exc:
            shared.internal_error(f"the forward pre-hook of {name or 'the model'!r}", exc)

    def enter(module):
        if inplace and pending:
            flush_outputs(shared)  # it overwrites its input, which may be a held output
        if not frames:
            # Forward hooks that fire inside a backward pass are a checkpoint recomputing a
            # forward already observed (torch.utils.checkpoint): not counted a second time.
            shared.replaying = current_backward_id() != -1
            if not shared.replaying:
                shared.read_queued = False  # a backward that raised never ran its queued read
                shared.handles.prune()  # so handles die young (probes/gradients.py HookHandles)
            shared.forward_id += 1
            shared.producers.clear()
            shared.tracking_flow = shared.forward_id <= 1 or shared.new_layers
            shared.new_layers = False
        on = observes and (not flow_only or shared.tracking_flow)
        frames.append(Frame(name, on))
        if mode.on_stack is not on:
            mode.switch(on)

    return _outside_compiled_graphs(pre_hook, shared.dynamo_skips_probes)


def make_post_hook(shared: SessionState, name: str, state: LayerState | None, conv1d: bool, root: bool = False):
    """The forward hook of a module: measures its output, pops its frame, restores the mode."""
    stack = shared.stack
    frames = stack.frames
    mode = shared.mode
    pending = shared.pending

    weighted = state is not None and state.kind in WEIGHTED_KINDS

    def post_hook(module, args, output):
        if not shared.open or (root and not frames and not shared.measuring):
            return
        try:
            if mode.on_stack:
                mode.switch(False)  # our own reductions must not pass through the mode
            if state is not None:
                if weighted:
                    shared.after_conv1d = conv1d
                check = state.param_check
                if check is not None and module._parameters.get(check[0]) is not check[1]:
                    _parameters_replaced(shared, state)
                observe_output(shared, state, output, args)
            if frames and frames[-1].name == name:
                frames.pop()
            else:
                stack.pop(name)
            if frames:
                if frames[-1].observes_functions:
                    mode.switch(True)
            elif pending:
                flush_outputs(shared)  # the outermost forward is done: reduce what it held
        except Exception as exc:
            shared.internal_error(f"the forward hook of {name or 'the model'!r}", exc)

    return _outside_compiled_graphs(post_hook, shared.dynamo_skips_probes)


def make_flush_before_inplace(shared: SessionState):
    """The pre-hook of an in-place module that is not probed (Dropout(inplace=True)).

    It would change a held output in place: what is held is reduced first.
    """
    pending = shared.pending

    def flush_before_inplace(module, args) -> None:
        if shared.open and pending:
            try:
                flush_outputs(shared)
            except Exception as exc:
                shared.internal_error("the flush before an in-place module", exc)

    return flush_before_inplace


def tick(shared: SessionState) -> bool:
    """A forward of the model starts: count it; True when it is measured (see `every`)."""
    if current_backward_id() != -1:
        return shared.measuring  # a checkpoint recomputing a forward: not a forward of its own
    shared.forwards += 1
    if shared.every == 1:
        return True
    measured = (shared.forwards - 1) % shared.every == 0
    shared.measuring = measured
    hook_modules(shared, measured)
    if measured:
        shared.generation += 1
        if shared.updates is not None:
            shared.updates.armed = True  # the optimizer step after this forward is measured
    return measured


def hook_modules(shared: SessionState, on: bool) -> None:
    """Put the forward hooks of every hooked module but the model itself on, or take them off.

    Registered once; with `every` > 1 they are then taken out of (and put back into) the
    modules' hook dicts under their first ids, at each change between measured and other
    forwards: ~0.1 us a hook, where registering anew (a RemovableHandle each) cost ~3 us,
    0.7 ms per measured step of the 60-layer MLP W4 (benchmarks/overhead.py). Put back, they
    run after any hook the user added to those modules in the meantime. The handles remove
    them on exit, wherever they are.
    """
    if on == shared.modules_hooked:
        return
    shared.modules_hooked = on
    entries = shared.module_hooks
    if not entries:
        if on:
            for module, pre_hook, post_hook in shared.hook_plan:
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


def remove_module_hooks(shared: SessionState) -> None:
    for _, pre, _, post, _ in shared.module_hooks:
        pre.remove()
        if post is not None:
            post.remove()
    shared.module_hooks.clear()
    shared.modules_hooked = False


def _parameters_replaced(shared: SessionState, state: LayerState) -> None:
    """The module ran with tensors other than its own parameters (torch.func.functional_call)."""
    state.param_check = None  # said once per layer
    shared.replaced.append(state.name)
    note = (
        "parameters replaced during a forward (torch.func.functional_call or "
        "torch.nn.utils.stateless) on {}: gradients of those forwards went to the replacement "
        "tensors, which the probes do not track, so these layers' parameter gradients, "
        "params_without_gradient and update ratios describe their own parameters only."
    )
    shared.limitations = tuple(n for n in shared.limitations if not n.startswith("parameters replaced"))
    shared.limitations += (note.format(", ".join(shared.replaced)),)


# ---- activations called as functions ---------------------------------------------------------


class FunctionCalls:
    """The session as the functional mode sees it (probes/functional.py `FunctionObserver`)."""

    __slots__ = ("_shared", "pending", "internal_error")

    def __init__(self, shared: SessionState) -> None:
        self._shared = shared
        self.pending = shared.pending
        self.internal_error = shared.internal_error

    def flush_outputs(self) -> None:
        flush_outputs(self._shared)

    def observe_function(self, func, family: str, args, kwargs, out: torch.Tensor) -> None:
        shared = self._shared
        frame = shared.stack.top
        if frame is None or not frame.observes_functions or not shared.open:
            return  # outside the model, or inside a module that has its own record
        display = function_display_name(func)
        if frame.function_calls is None:
            frame.function_calls = {}
        nth = frame.function_calls.get(display, 0)
        frame.function_calls[display] = nth + 1
        base = f"{frame.name}.{display}()" if frame.name else f"{display}()"
        name = base if nth == 0 else f"{base}#{nth + 1}"
        state = shared.states.get(name)
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
            shared.states[name] = state
        observe_output(shared, state, out, args)

    def pass_through(self, inputs, output) -> None:
        """Dropout, reshapes, pooling: their output keeps the producer of their input."""
        shared = self._shared
        if not shared.tracking_flow:
            return
        out = output[0] if isinstance(output, tuple) and output else output
        if not isinstance(out, torch.Tensor) or not shared.open:
            return
        producer = _producer_of(shared, inputs)
        if producer:
            shared.producers[id(out)] = (weakref.ref(out), producer)


# ---- a layer's output ------------------------------------------------------------------------


def _producer_of(shared: SessionState, inputs) -> str:
    """The probed layer that produced the first tensor in `inputs` in this forward, or ""."""
    first = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
    if not isinstance(first, torch.Tensor):
        return ""
    entry = shared.producers.get(id(first))
    # ids are reused once a tensor dies: the weak reference proves it is the same tensor
    return entry[1] if entry is not None and entry[0]() is first else ""


def observe_output(shared: SessionState, state: LayerState, output, inputs=None) -> None:
    y = output if type(output) is torch.Tensor else _first_float_tensor(output)
    if y is not None and _is_transformed(y):
        return  # inside torch.func.vmap/grad/jacrev (see _is_transformed)
    if shared.replaying:  # a checkpoint recomputing this forward inside the backward
        if y is not None and y.is_floating_point() and state.index >= 0:
            watch_gradient(shared, state, y)  # reentrant checkpoints backpropagate through it
        return
    state.calls += 1
    if y is None or not y.is_floating_point():
        return
    if state.index < 0:
        _discover(shared, state, y, inputs)
    elif state.input_from is None and shared.tracking_flow:
        state.input_from = _producer_of(shared, inputs)  # first seen in a forward not tracked
    if shared.tracking_flow:
        shared.producers[id(y)] = (weakref.ref(y), state.name)
    numel = y.numel()
    first = state.count == 0
    state.count += numel
    dim = -1
    if state.tracks_dead and numel > 0:
        ndim = y.dim()
        if ndim != state.unit_ndim:
            state.unit_ndim = ndim
            state.unit_axis = unit_dim(y, shared.after_conv1d) if ndim > 0 else -1
        dim = state.unit_axis
    if numel <= HOLD_MAX and state.holds and not first and numel > 0 and not y.is_inference():
        # Held as is (no detach: the batched reduction runs under no_grad), until the forward ends.
        pending = shared.pending
        pending.append((state, y, y._version, dim, shared.forward_id, False))
        if len(pending) >= pending.cap:
            flush_outputs(shared)
    else:
        data = y.detach()  # reductions of a detached tensor record no graph
        if dim >= 0:  # relu/relu6: per-unit sums give the dead units and the total in one pass
            sums = unit_sums(data, dim)
            observe_activation(state.row, data, state.bounds, total=sums.sum())
            state.alive.add_maxima(sums, shared.forward_id)
        else:
            observe_activation(state.row, data, state.bounds)
        if 0 < numel <= HOLD_MAX and first and not data.is_inference():
            # learn whether this output is changed in place later (inference tensors have
            # no version counter: they are reduced at once, always)
            shared.pending.append((state, data, data._version, -1, 0, True))
    watch_gradient(shared, state, y)


def _discover(shared: SessionState, state: LayerState, y: torch.Tensor, inputs) -> None:
    """A layer's first output: its place in the execution order, shape and data source."""
    state.index = shared.next_index
    shared.next_index += 1
    state.output_shape = tuple(y.shape)
    # In a forward that does not track the data flow the source is unknown (None) for now
    # and filled in on the next call, in the next forward, which tracks it.
    state.input_from = _producer_of(shared, inputs) if shared.tracking_flow else None
    shared.new_layers = True
    state.row = _new_row(shared, y)


def _new_row(shared: SessionState, data: torch.Tensor) -> TableRow:
    table = shared.tables.get(data.device)
    if table is None:
        dtype = torch.float64 if data.dtype == torch.float64 else torch.float32
        table = shared.tables[data.device] = CallTable(
            device=data.device, dtype=dtype, on_host=data.device.type in HOST_TOTALS_DEVICES
        )
    return table.add_row()


def flush_outputs(shared: SessionState) -> None:
    """Reduce the held outputs now (end of a forward, before an in-place op, collect, exit)."""
    if shared.pending:
        reduce_outputs(shared.pending.take())
