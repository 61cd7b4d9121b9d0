"""The backward reads of a session: output-gradient hooks, and the parameter gradients after a backward.

Every function takes the session's `SessionState` (probes/_state.py); the hooks made here bind it
once, when they are made, so a hook call does no more lookups than a method of the session would.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from probes.batched import HOLD_MAX, reduce_gradients
from probes.gradients import current_backward_id, queue_after_backward, slot_prehook
from probes.stats import observe_gradient

if TYPE_CHECKING:
    from probes._state import SessionState
    from probes.tracker import LayerState

# Bound once: read for every probed output in a forward.
_grad_enabled = torch.is_grad_enabled


def watch_gradient(shared: SessionState, state: LayerState, y: torch.Tensor) -> None:
    """Hook the autograd node that made `y`, to measure the gradient w.r.t. `y`."""
    if y.requires_grad and _grad_enabled():
        node = y.grad_fn
        try:
            if node is None:  # a leaf returned as is: a tensor hook is exact there
                hook = state.gradient_hook or _new_grad_hook(shared, state)
                shared.handles.add(y.register_hook(hook))
            else:
                slot = y.output_nr
                prehook = state.gradient_prehooks.get(slot) or _new_grad_prehook(shared, state, slot)
                shared.handles.add(node.register_prehook(prehook))
        except RuntimeError:
            pass  # a tensor that cannot take hooks: no output gradient for this call


def _new_grad_hook(shared: SessionState, state: LayerState):
    """The layer's output-gradient hook (made once, kept on its state): gets the gradient."""
    pending = shared.pending_grads
    task_id = current_backward_id

    def hook(grad: torch.Tensor) -> None:
        if not shared.open:
            return
        try:
            measure(grad)
        except Exception as exc:
            shared.internal_error(f"the output-gradient hook of {state.name!r}", exc)

    def measure(grad: torch.Tensor) -> None:
        shared.generation += 1
        numel = grad.numel()
        state.gradient_count += numel
        state.gradient_calls += 1
        if 0 < numel <= HOLD_MAX and state.holds_gradient:
            # The engine's own tensor is held (not a detached alias): while we reference it,
            # autograd does not accumulate another gradient into it in place.
            pending.append((state, grad, grad._version))
            if len(pending) >= pending.cap:
                flush_gradients(shared)
        else:
            observe_gradient(state.row, grad.detach())
        if task_id() != shared.backward_queued:
            queue_param_read(shared)

    state.gradient_hook = hook
    return hook


def _new_grad_prehook(shared: SessionState, state: LayerState, slot: int):
    """A pre-hook for the autograd node that made the output: it gets the output's gradient."""
    hook = state.gradient_hook or _new_grad_hook(shared, state)
    prehook = state.gradient_prehooks[slot] = slot_prehook(slot, hook)
    return prehook


def make_param_grad_ready(shared: SessionState):
    """The post-accumulate-grad hook of a scripted parameter: it queues the parameter read.

    Script code runs no output-gradient hook to queue it, so each scripted parameter does (once
    per backward) when its .grad has been accumulated.
    """

    def param_grad_ready(param: torch.Tensor) -> None:
        if shared.open and shared.measuring:
            try:
                queue_param_read(shared)
            except Exception as exc:
                shared.internal_error("a parameter-gradient hook", exc)

    return param_grad_ready


def queue_param_read(shared: SessionState) -> None:
    """Read every tracked `.grad` once, after the backward pass now running is done."""
    backward = current_backward_id()
    if backward != shared.backward_queued and (shared.params or shared.pending_grads):
        shared.backward_queued = backward
        if shared.read_queued:
            # A backward run inside one whose read is still to come (a reentrant checkpoint):
            # that read covers what this one accumulates; reading here would count it twice.
            return
        shared.read_queued = True
        queue_after_backward(functools.partial(_after_backward, shared))


def _after_backward(shared: SessionState) -> None:
    shared.read_queued = False
    shared.generation += 1
    if shared.open:
        try:
            flush_gradients(shared)
            if shared.params:
                shared.param_grads.measure()
        except Exception as exc:
            shared.internal_error("the end-of-backward read of parameter gradients", exc)


def flush_gradients(shared: SessionState) -> None:
    """Reduce the held output gradients now (end of a backward, a full hold, collect, exit)."""
    if shared.pending_grads:
        reduce_gradients(shared.pending_grads.take())
