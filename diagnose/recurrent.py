"""Gradient flow over time inside recurrent layers, measured on the probed copy at initialisation.

The probes see an `nn.LSTM` as one layer: its gradient norms say nothing about how far back in
the sequence the gradient reaches, which is where recurrent nets fail (Bengio, Simard & Frasconi
1994; Hochreiter 1991). Here each recurrent module's input gets a tensor hook, so the backward pass
hands over dLoss/d(input at step t) for every step t: cheap, since autograd computes it anyway
for any upstream layer. A model input (which needs no gradient) is swapped for a detached copy
that requires one: the forward values and every parameter gradient are unchanged, since nothing
upstream of that input trains.

Also read: the LSTM forget-gate bias (b_ih + b_hh over the forget slice), the usual cause of a
short memory.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from diagnose.evidence import RecurrentFlow


@dataclass
class _Tracked:
    name: str
    module: nn.RNNBase
    time_dim: int
    norms: torch.Tensor | None = None  # per-step gradient norms, on the device until read
    handles: list = field(default_factory=list)


@contextmanager
def track_recurrent_gradients(model: nn.Module):
    """Hook every recurrent module's first call; yields a callable that returns the `RecurrentFlow`s."""
    tracked: list[_Tracked] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):
            entry = _Tracked(name=name or type(module).__name__, module=module, time_dim=1 if module.batch_first else 0)
            tracked.append(entry)
            handles.append(module.register_forward_pre_hook(_pre_hook(entry)))
    try:
        yield lambda: _read(tracked)
    finally:
        for handle in handles:
            handle.remove()
        for entry in tracked:
            for handle in entry.handles:
                handle.remove()


def _pre_hook(entry: _Tracked):
    def hook(module, args):
        if entry.norms is not None or entry.handles or not args:
            return None  # the first call only: later calls (a decoder loop) would mix horizons
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point() or x.shape[entry.time_dim] < 2:
            return None  # PackedSequence, unbatched input, a single step: nothing to read over time
        replaced = None
        if not x.requires_grad:
            if not torch.is_grad_enabled():
                return None
            x = x.detach().requires_grad_(True)
            replaced = (x, *args[1:])
        reduce = tuple(d for d in range(3) if d != entry.time_dim)

        def on_gradient(grad: torch.Tensor) -> None:
            entry.norms = grad.detach().float().pow(2).sum(dim=reduce).sqrt()

        entry.handles.append(x.register_hook(on_gradient))
        return replaced

    return hook


def _read(tracked: list[_Tracked]) -> tuple[RecurrentFlow, ...]:
    measured = [entry for entry in tracked if entry.norms is not None]
    if not measured:
        return ()
    # one host read for every module's norms
    host = torch.cat([entry.norms for entry in measured]).cpu().tolist()
    flows, start = [], 0
    for entry in measured:
        steps = entry.norms.numel()
        flows.append(RecurrentFlow(
            name=entry.name, type=type(entry.module).__name__, steps=steps,
            step_gradient_norms=tuple(host[start:start + steps]), forget_bias=_forget_bias(entry.module),
        ))
        start += steps
    return tuple(flows)


def _forget_bias(module: nn.RNNBase) -> float | None:
    """Mean of b_ih + b_hh over the forget-gate slice of the first layer (LSTM gate order i, f, g, o)."""
    if not isinstance(module, nn.LSTM) or not module.bias:
        return None
    hidden = module.hidden_size
    with torch.no_grad():
        total = module.bias_ih_l0[hidden:2 * hidden] + module.bias_hh_l0[hidden:2 * hidden]
        return float(total.mean())
