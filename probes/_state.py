"""`SessionState`: what every hook of one attached session reads and writes.

The session's code is split along its seams (probes/_install.py finds the layers and plans the
hooks, probes/_forward.py and probes/_backward.py are the hooks, probes/_collect.py assembles the
records), and all of them share this one object. Its fields are plain attributes, read directly
by hook closures that bind the object once at install time: a hook call costs the attribute
loads it always did, no property or forwarding method in between.
"""

from __future__ import annotations

import os
import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from probes.batched import Pending
from probes.gradients import HookHandles, ParamGradients
from probes.tracker import LayerState, ModuleStack

if TYPE_CHECKING:
    import torch
    from torch import nn

    from probes.functional import FunctionalActivations
    from probes.stats import CallTable
    from probes.updates import UpdateTracker


@dataclass(slots=True)
class TrackedParam:
    """A trainable parameter whose gradient is read, and the layer it belongs to."""

    layer: str
    local_name: str
    param: torch.Tensor  # its size is read at collect: a lazy module's is unknown until a forward


@dataclass(slots=True, eq=False)
class SessionState:
    """The mutable state of one attached session (see `probes.session.Session`)."""

    # Measure one forward of the model in `every` (the first, then every `every`-th), with the
    # backward and optimizer step that follow it; between them no hook of ours but the model's
    # own runs. `forwards` counts the model's forwards, measured or not.
    every: int
    forwards: int = 0
    measuring: bool = True  # the model's current (or last) forward is measured
    # False once closed or stopped by an internal error: every hook returns at once.
    open: bool = True
    # Bumped whenever something is measured: with every > 1, a collect() that finds it unchanged
    # returns the records of the previous one (nothing new was measured).
    generation: int = 0
    # (module, forward pre-hook, forward hook) of every hooked module but the model itself,
    # whose hooks are removed while forwards are not measured (probes/_forward.py hook_modules)
    hook_plan: list[tuple[nn.Module, object, object]] = field(default_factory=list)
    # (module, pre-hook handle, pre-hook, post-hook handle or None, post-hook), once registered
    module_hooks: list[tuple] = field(default_factory=list)
    modules_hooked: bool = False
    dynamo_skips_probes: bool = True  # set at install (probes/_install.py keep_dynamo_out)

    # ---- the layers (found at install; activations called as functions, while running) -------
    states: dict[str, LayerState] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    direct_params: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # layer -> its own
    params: list[TrackedParam] = field(default_factory=list)
    # per weighted layer in scripted Sequentials: (followed_by, normalized), found at install
    static_context: dict[str, tuple[str | None, bool]] = field(default_factory=dict)
    device: torch.device | None = None  # of the model's first parameter
    next_index: int = 0  # execution-order index of the next layer found

    # ---- forward ------------------------------------------------------------------------------
    stack: ModuleStack = field(default_factory=ModuleStack)
    mode: FunctionalActivations | None = None  # set by the session, right after this is made
    pending: Pending = field(default_factory=Pending)  # small outputs of the running forward
    tables: dict[torch.device, CallTable] = field(default_factory=dict)
    forward_id: int = 0
    # id(output tensor) -> (weak reference, layer name), for the current forward only. The data
    # flow is tracked in the first forward and in any forward after one that found new layers (a
    # static model: the first two), not in every step of a training run.
    producers: dict[int, tuple[weakref.ref, str]] = field(default_factory=dict)
    tracking_flow: bool = True
    new_layers: bool = False  # new layers were found in the current forward
    replaying: bool = False  # the current forward runs inside a backward (a checkpoint's)
    after_conv1d: bool = False  # the last weighted layer to finish was a Conv1d
    replaced: list[str] = field(default_factory=list)  # layers seen running with swapped-in parameters

    # ---- backward and optimizer steps ---------------------------------------------------------
    handles: HookHandles = field(default_factory=HookHandles)
    pending_grads: Pending = field(default_factory=Pending)  # small output gradients of the backward
    param_grads: ParamGradients = field(default_factory=lambda: ParamGradients(params=[]))
    backward_queued: int = -2  # id of the backward pass whose parameter read is queued
    read_queued: bool = False  # that read has not run yet
    updates: UpdateTracker | None = None

    # Plain sentences on what could not be measured for this model (and why).
    limitations: tuple[str, ...] = ()

    def close_gates(self) -> None:
        """Stop measuring: every hook, and the functional mode, pass calls straight through."""
        self.open = False
        if self.mode is not None:
            self.mode.open = False

    def internal_error(self, where: str, exc: Exception) -> None:
        """A bug in the probes themselves (not in the user's code): stop measuring, keep the run.

        Probes are observers; a failure of theirs must not end a training run. The session stops
        measuring (every hook returns at once, the functional mode passes calls through), warns,
        and says so in `limitations`, which the report shows. With PROBES_STRICT=1 in the
        environment (the test suite sets it) the error is raised instead, where it happened.
        """
        if os.environ.get("PROBES_STRICT") == "1":
            raise exc
        self.close_gates()
        self.pending.take()
        self.pending_grads.take()
        self.stack.frames.clear()
        # The functional mode is left where it is (it may be dispatching right now, popped by
        # torch until it returns): closed, it passes every call straight through, and the exit
        # takes it off the stack.
        if self.updates is not None:
            self.updates.active = False
        message = (
            f"the probes stopped measuring after an internal error in {where} "
            f"({type(exc).__name__}: {exc}); the statistics cover the calls before it"
        )
        self.limitations += (message + ".",)
        warnings.warn(f"probes: {message}. Please report it.", RuntimeWarning, stacklevel=2)
