"""What one sample costs the model, so a batch grown from a tiny example stays proportionate.

A dynamic-batch export often carries a 2-sample example; statistics over 2 samples mean little, so
the batch is grown. Growing a ViT-B/16 at 224x224 to 32 samples made a check run 651 s on 2 cores
in silence. The batch is therefore sized from the model's own cost: the forward FLOPs of the example,
counted by torch's FlopCounterMode (exact and deterministic, unlike a timing, so the same seed still
gives the same report).
"""

from __future__ import annotations

from typing import Any

# The work a check may spend on the probe run and its short training run: about half a minute on
# two CPU cores, where PyTorch sustains a few tens of GFLOP/s on convolutions and matmuls.
RUN_FLOP_BUDGET = 1e12
# One training step costs about three forward passes (forward, and a backward of twice the work).
STEP_COST_IN_FORWARDS = 3
# The forward passes of a check: the pass at initialisation plus the default 20 training steps.
PASSES = 21


def forward_flops(module: Any, args: tuple, kwargs: dict) -> float | None:
    """FLOPs of one forward of `module` on the example, or None when they cannot be counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*args, **kwargs)
    except Exception:  # noqa: BLE001 - a model the counter cannot follow keeps the default batch
        return None
    total = counter.get_total_flops()
    return float(total) if total > 0 else None


def proportionate_batch(flops_per_sample: float | None, *, smallest: int, largest: int) -> int:
    """The largest batch in [smallest, largest] whose check fits RUN_FLOP_BUDGET."""
    if flops_per_sample is None or flops_per_sample <= 0:
        return largest
    affordable = int(RUN_FLOP_BUDGET // (flops_per_sample * STEP_COST_IN_FORWARDS * PASSES))
    return max(smallest, min(largest, affordable))
