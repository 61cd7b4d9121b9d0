"""Gradient measurements: w.r.t. each probed output, and of each parameter after backward.

Output gradients: the forward hook registers a pre-hook on the autograd node that produced the
output (`grad_fn.register_prehook`), which receives the gradient w.r.t. that output as it was
produced. Not `register_full_backward_hook` (it breaks with `nn.ReLU(inplace=True)`), and not a
tensor hook either: a tensor hook registered before an in-place op (a following in-place ReLU)
receives the gradient w.r.t. the tensor *after* the in-place op, i.e. the ReLU's output gradient,
not the Linear's.

Parameter gradients: rather than one hook per parameter, the first output-gradient hook of each
backward pass queues an engine callback that runs once the pass is done and reads every tracked
parameter's `.grad` in a few fused ops (probes/grouped.py: same-shape small gradients as rows of
one stack, the rest with one `_foreach_norm`; a sparse gradient, from Embedding(sparse=True), on
its own, as the norm of its values). Taking large norms inside the backward instead, with
post-accumulate-grad hooks while each .grad is still in cache, was tried: faster with one thread,
but slower on W2/W3 of benchmarks/overhead.py with the two threads it runs (the hooks sit on
the backward's critical path), so it was taken out. The numbers describe `.grad` after each
backward (what the optimizer sees, accumulated if the caller does not zero it). Under DDP that
callback runs before DDP copies the averaged buckets back, so each rank measures its own local
gradient; `collect()` then reports the root-mean-square over ranks of those local norms (a
rank-mean, not the norm of the averaged gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from probes import grouped

# Per-backward vectors of squared parameter-gradient norms are summed into one running vector
# once this many pile up, so a session attached for thousands of steps holds O(parameters).
FOLD_EVERY = 64

# Registered hook handles are pruned of dead graphs (their hook dicts freed with the graph)
# every this many registrations, so a long session holds O(live graphs) handles.
PRUNE_EVERY = 4096


@dataclass(slots=True)
class ParamGradients:
    """Squared gradient norms of the tracked parameters, one vector per backward pass."""

    params: list[torch.Tensor]
    # parameter positions (those whose .grad existed, in measuring order) -> per-pass vectors
    pending: dict[tuple[int, ...], list[torch.Tensor]] = field(default_factory=dict)
    folded: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)
    calls: dict[tuple[int, ...], int] = field(default_factory=dict)
    # (positions with a .grad, which of those are sparse) -> how their gradients are measured,
    # and the parameter of each result
    layouts: dict[tuple, grouped.Layout] = field(default_factory=dict)
    orders: dict[tuple, tuple[int, ...]] = field(default_factory=dict)
    totals: list[float] = field(default_factory=list)  # per parameter: sum of squared norms (host)

    def __post_init__(self) -> None:
        self.totals = [0.0] * len(self.params)

    def measure(self) -> None:
        grads, present, sparse = [], [], []
        for i, param in enumerate(self.params):
            grad = param.grad
            if grad is not None:
                if grad.layout != torch.strided:  # Embedding(sparse=True): laid out apart, so
                    sparse.append(len(grads))  # a change of layout means a new layout below
                grads.append(grad)
                present.append(i)
        if not grads:
            return
        pattern = (tuple(present), tuple(sparse))
        layout = self.layouts.get(pattern)
        if layout is None:  # the order results come in: stacked same-shape grads, then the rest
            layout = self.layouts[pattern] = grouped.plan(grads)
            self.orders[pattern] = tuple(present[i] for i in layout.order)
        squares = grouped.norms(grads, layout).square_()
        key = self.orders[pattern]  # the parameter of each entry of `squares`
        bucket = self.pending.setdefault(key, [])
        bucket.append(squares)
        self.calls[key] = self.calls.get(key, 0) + 1
        if len(bucket) >= FOLD_EVERY:
            total = torch.stack(bucket).sum(0)
            self.folded[key] = total + self.folded[key] if key in self.folded else total
            bucket.clear()

    def parts(self) -> list[tuple[tuple[int, ...], torch.Tensor]]:
        """(parameter positions, vector of squared norms) measured since the last `absorb`."""
        out = [(key, vec) for key, vec in self.folded.items()]
        out += [(key, vec) for key, bucket in self.pending.items() for vec in bucket]
        return out

    def absorb(self, host_parts: list[tuple[tuple[int, ...], list[float]]]) -> None:
        """Add the host copies of `parts()` into `totals` and drop the device vectors."""
        totals = self.totals
        for key, values in host_parts:
            for position, value in zip(key, values):
                totals[position] += value
        self.pending.clear()
        self.folded.clear()


class HookHandles:
    """Handles of per-call hooks on autograd nodes: removed on exit, pruned as graphs die.

    The session prunes at the start of every forward, so a handle lives about one step. Kept
    for thousands of registrations instead (the count-based pruning alone), they reached
    Python's oldest GC generation and set off full collections: ~1 ms a step on the 60-layer
    MLP of benchmarks/overhead.py (W4), an eighth of the probes' whole cost there.
    """

    def __init__(self) -> None:
        self._handles: list = []

    def add(self, handle) -> None:
        self._handles.append(handle)
        if len(self._handles) % PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        """Forget the handles whose graph is gone (its hook dict freed with it)."""
        if self._handles:
            self._handles = [h for h in self._handles if h.hooks_dict_ref() is not None]

    def remove_all(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def slot_prehook(slot: int, hook):
    """A node pre-hook that hands `hook` the gradient w.r.t. output `slot` of the node."""
    if slot == 0:
        def prehook(grad_outputs):
            grad = grad_outputs[0]
            if grad is not None:
                hook(grad)
    else:
        def prehook(grad_outputs):
            grad = grad_outputs[slot] if slot < len(grad_outputs) else None
            if grad is not None:
                hook(grad)

    return prehook


def current_backward_id() -> int:
    """Id of the backward pass running on this thread (-1 outside backward)."""
    return torch._C._current_graph_task_id()


def queue_after_backward(callback) -> None:
    torch.autograd.Variable._execution_engine.queue_callback(callback)
