"""A TorchFunctionMode that sees activations called as functions (F.relu, torch.tanh, x.sigmoid()).

Module hooks only see `nn.ReLU`; most real models call `F.relu` inside `forward`, and a model
rebuilt from a torch.export archive calls `aten.relu.default`. Both pass through
`__torch_function__`, so this mode sees them and hands them to the session, which attributes each
call to the module whose forward is running.

Every torch call made while a mode is on the stack pays a Python dispatch, so the mode is not
entered for the whole `attach` block: the session switches it on only while a module that may
call activations itself is running (a container or custom module), and off inside modules whose
forward is known (Linear, Conv, norms, activation modules), in the loss, backward and optimizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode

from probes.targets import function_family

if TYPE_CHECKING:
    from probes.session import Session

_UNKNOWN = object()
_PASS = "pass-through"

# Ops that hand their input on unchanged in meaning (dropout, reshapes, pooling): the data flow
# between probed layers runs through them, so their output keeps its input's producer. Without
# this, Linear -> ReLU -> Dropout -> Linear would look like two unrelated layers.
PASS_THROUGH = frozenset({
    "dropout", "dropout_", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d",
    "dropout3d", "native_dropout", "view", "reshape", "flatten", "contiguous", "max_pool1d",
    "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d", "max_pool2d_with_indices",
    "_adaptive_avg_pool2d", "clone",
})


def _pass_through(func) -> bool:
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet if packet is not None else func, "__name__", None)
    return isinstance(name, str) and name in PASS_THROUGH


class FunctionalActivations(TorchFunctionMode):
    def __init__(self, session: "Session") -> None:
        super().__init__()
        self._session = session
        self._families: dict[object, str | None] = {}
        self.on_stack = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        try:
            family = self._families.get(func, _UNKNOWN)
        except TypeError:  # an unhashable callable: never an activation we know
            return out
        if family is _UNKNOWN:
            family = function_family(func) or (_PASS if _pass_through(func) else None)
            self._families[func] = family
        if family is None:
            return out
        if family is _PASS:
            self._session._pass_through(args, out)
        elif isinstance(out, torch.Tensor):
            self._session._observe_function(func, family, args, kwargs or {}, out)
        return out

    def switch(self, on: bool) -> None:
        """Put the mode on the torch-function stack, or take it off (only from the top).

        When something pushed its own mode above ours, ours stays where it is: still correct,
        only slower, and `remove()` takes it out at the end.
        """
        if on == self.on_stack:
            return
        if on:
            torch._C._push_on_torch_function_stack(self)
            self.on_stack = True
            return
        depth = torch._C._len_torch_function_stack()
        if depth and torch._C._get_function_stack_at(depth - 1) is self:
            torch._C._pop_torch_function_stack()
            self.on_stack = False

    def remove(self) -> None:
        """Take the mode off the stack wherever it is, keeping every other mode in order."""
        if not self.on_stack:
            return
        above = []
        while torch._C._len_torch_function_stack():
            mode = torch._C._pop_torch_function_stack()
            if mode is self:
                break
            above.append(mode)
        for mode in reversed(above):
            torch._C._push_on_torch_function_stack(mode)
        self.on_stack = False
