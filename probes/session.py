"""`attach(model)`: a `Session` whose hooks and functional mode sit on one ExitStack; `collect()` = one host sync.

The session keeps the state (probes/_state.py) and the lifecycle: open, closed on exit, stopped
by an internal error. The rest lives along its seams: probes/_install.py finds the layers and
plans their hooks, probes/_forward.py and probes/_backward.py are the hooks, probes/_collect.py
assembles the records.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from torch import nn

from probes._backward import flush_gradients
from probes._collect import Collector
from probes._forward import FunctionCalls, flush_outputs, remove_module_hooks
from probes._install import install
from probes._state import SessionState
from probes.functional import FunctionalActivations
from probes.records import LayerRecord


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
