"""A TorchFunctionMode that sees activations called as functions (F.relu, torch.tanh, x.sigmoid()).

Module hooks only see `nn.ReLU`; most real models call `F.relu` inside `forward`, and a model
rebuilt from a torch.export archive calls `aten.relu.default`. Both pass through
`__torch_function__`, so this mode sees them and hands them to the session, which attributes each
call to the module whose forward is running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode

from probes.targets import function_family

if TYPE_CHECKING:
    from probes.session import Session

_UNKNOWN = object()


class FunctionalActivations(TorchFunctionMode):
    def __init__(self, session: "Session") -> None:
        super().__init__()
        self._session = session
        self._families: dict[object, str | None] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        try:
            family = self._families.get(func, _UNKNOWN)
        except TypeError:  # an unhashable callable: never an activation we know
            return out
        if family is _UNKNOWN:
            family = function_family(func)
            self._families[func] = family
        if family is not None and isinstance(out, torch.Tensor):
            self._session._observe_function(func, family, args, kwargs or {}, out)
        return out
