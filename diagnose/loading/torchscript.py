"""Load a TorchScript archive (torch.jit.save output)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from diagnose.errors import DiagnoseError, one_line

if TYPE_CHECKING:
    import torch

# Module forward hooks are never called on a ScriptModule (its forward is compiled TorchScript),
# so every probe that observes activations is blind; parameters and their .grad still exist.
HOOKS_LIMITATION = ("TorchScript: module hooks cannot run on ScriptModules, so activation, dead-unit and "
                    "saturation probes did not run; weight and gradient checks still did")


def load_torchscript(path: Path, *, device: str) -> "torch.jit.ScriptModule":
    import torch

    try:
        # torch deprecates TorchScript in favour of torch.export: a notice for the model's author,
        # not something the person running the check can act on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise DiagnoseError(f"{path} could not be loaded as a TorchScript archive ({one_line(exc)}); "
                            "re-save it with torch.jit.save.") from exc
