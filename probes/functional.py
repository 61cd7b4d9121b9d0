"""A TorchFunctionMode that sees activations called as functions (F.relu, torch.tanh, x.sigmoid()).

Module hooks only see `nn.ReLU`; most real models call `F.relu` inside `forward`, and a model
rebuilt from a torch.export archive calls `aten.relu.default`. Both pass through
`__torch_function__`, so this mode sees them and hands them to the session (through the narrow
`FunctionObserver` below), which attributes each call to the module whose forward is running.

Every torch call made while a mode is on the stack pays a Python dispatch, so the mode is not
entered for the whole `attach` block: the session switches it on only while a module that may
call activations itself is running (a container or custom module), and off inside modules whose
forward is known (Linear, Conv, norms, activation modules), in the loss, backward and optimizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Sized
from typing import Protocol

import torch
from torch.overrides import TorchFunctionMode

from probes.targets import function_family

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


# In-place dunder methods (`out += x`, `x[i] = v`): they change their first argument.
_INPLACE_DUNDERS = frozenset({
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
    "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__setitem__",
})
_NEVER, _ALWAYS, _IF_ASKED = 0, 1, 2  # does a call change a tensor argument in place?


def _inplace_kind(func) -> int:
    """_ALWAYS for `relu_`/`add_`/`__iadd__`..., _IF_ASKED for functions taking `inplace`/`out`."""
    name = getattr(func, "__name__", None)
    if not isinstance(name, str):
        return _NEVER
    if name in _INPLACE_DUNDERS or (name.endswith("_") and not name.startswith("__")):
        return _ALWAYS
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins without a signature: `out=` is still checked
        return _IF_ASKED
    return _IF_ASKED if "inplace" in parameters or "out" in parameters else _NEVER


def _pass_through(func) -> bool:
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet if packet is not None else func, "__name__", None)
    return isinstance(name, str) and name in PASS_THROUGH


class FunctionObserver(Protocol):
    """All the mode asks of the session it reports to (probes/_forward.py FunctionCalls)."""

    @property
    def pending(self) -> Sized:
        """Outputs held for a batched reduction: a call that changes a tensor in place may hit one."""

    def flush_outputs(self) -> None:
        """Reduce the held outputs now, before they can be changed in place."""

    def internal_error(self, where: str, exc: Exception) -> None:
        """A bug of the probes in `where`: the session stops measuring (and closes the mode)."""

    def pass_through(self, inputs, output) -> None:
        """`output` of a PASS_THROUGH op keeps the producer of its input."""

    def observe_function(self, func, family: str, args, kwargs, out: torch.Tensor) -> None:
        """An activation of `family` called as a function returned `out`."""


class FunctionalActivations(TorchFunctionMode):
    def __init__(self, observer: FunctionObserver) -> None:
        super().__init__()
        # Bound once: `__torch_function__` runs for every torch call while the mode is on.
        self._pending = observer.pending
        self._flush_outputs = observer.flush_outputs
        self._internal_error = observer.internal_error
        self._pass_through = observer.pass_through
        self._observe_function = observer.observe_function
        self._families: dict[object, str | None] = {}
        self._inplace: dict[object, int] = {}
        self.on_stack = False
        # False once the session stopped (closed, or an internal error): calls pass straight through.
        self.open = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.open:  # stopped after an internal error: the call passes straight through
            return func(*args, **(kwargs or {}))
        try:
            if self._pending and self._modifies_argument(func, args, kwargs):
                self._flush_outputs()  # a held output may be the tensor changed in place
        except Exception as exc:
            self._internal_error(f"the functional mode, before {getattr(func, '__name__', func)}", exc)
        out = func(*args, **(kwargs or {}))  # the user's call: its errors are the user's
        if self.open:
            try:
                self._observe(func, args, kwargs, out)
            except Exception as exc:
                self._internal_error(f"the functional mode, after {getattr(func, '__name__', func)}", exc)
        return out

    def _observe(self, func, args, kwargs, out) -> None:
        try:
            family = self._families.get(func, _UNKNOWN)
        except TypeError:  # an unhashable callable: never an activation we know
            return
        if family is _UNKNOWN:
            family = function_family(func) or (_PASS if _pass_through(func) else None)
            self._families[func] = family
        if family is None:
            return
        if family is _PASS:
            self._pass_through(args, out)
        elif isinstance(out, torch.Tensor):
            self._observe_function(func, family, args, kwargs or {}, out)

    def _modifies_argument(self, func, args, kwargs) -> bool:
        try:
            kind = self._inplace.get(func)
        except TypeError:  # unhashable: asked each time
            kind = _inplace_kind(func)
        if kind is None:
            kind = self._inplace[func] = _inplace_kind(func)
        if kind != _IF_ASKED:
            return kind == _ALWAYS
        if kwargs and (kwargs.get("inplace") is True or kwargs.get("out") is not None):
            return True
        return any(a is True for a in args[1:])  # F.relu(x, True): a positional `inplace`

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
