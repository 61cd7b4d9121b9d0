"""The fix catalog: every fix id, in contract order, with its `Fix` from its catalog module."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from diagnose.fixes import activations, architecture, init_schemes, inputs, normalization, optimization
from diagnose.fixes._model import Fix

_ALL: tuple[Fix, ...] = (
    init_schemes.FIXES
    + activations.FIXES
    + normalization.FIXES
    + optimization.FIXES
    + inputs.FIXES
    + architecture.FIXES
)

# Contract order (CONTRACT.md "Fix ids").
FIX_IDS: tuple[str, ...] = (
    "he-init", "glorot-init", "lecun-init", "relu", "leaky-relu", "elu", "selu", "batch-norm",
    "gradient-clipping", "lower-lr", "higher-lr", "lr-warmup", "lr-schedule", "normalize-inputs",
    "fix-bias-init", "residual-connections", "widen-layer", "change-optimizer",
)

FIXES: Mapping[str, Fix] = MappingProxyType({fix_id: next(f for f in _ALL if f.id == fix_id) for fix_id in FIX_IDS})

if set(FIXES) != {f.id for f in _ALL}:  # a catalog module added a fix the table does not list
    raise RuntimeError("diagnose.fixes: FIX_IDS and the catalog modules disagree")
