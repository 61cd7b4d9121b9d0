"""The fix catalog: every fix id with its title, one-line summary, rationale, docs, snippet and the
applier `--try-fixes` runs (`apply_fix`).

Each fix lives in one catalog module (init_schemes, activations, normalization, optimization,
inputs, architecture) with its doc, snippet and applier. Importing this package does not import
torch: the appliers import it, and the private modules that change a model's tree, when they run.
"""

from __future__ import annotations

from diagnose.fixes._model import ActivationCall, Fix, FixTarget, Widening
from diagnose.fixes.catalog import FIX_IDS, FIXES
from diagnose.fixes.trial import FixNotApplicable, FixTrial, apply_fix

__all__ = [
    "FIXES", "FIX_IDS", "ActivationCall", "Fix", "FixNotApplicable", "FixTarget", "FixTrial", "Widening", "apply_fix",
]
