"""Weight and bias scale of weighted layers, read at collect time as device tensors.

Sums of squares come from one fused `_foreach_norm` over all weights (and one over all biases);
std is formed on the host as sqrt(E[w^2] - E[w]^2), exact to ~1e-7 relative for weights whose
mean is small against their spread (every init scheme; see probes/stats.py on precision).
"""

from __future__ import annotations

import math

import torch


def weight_parts(pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
    """Per (weight, bias): [weight sum, weight sum of squares, bias sum, bias sum of squares].

    Bias entries are NaN where a layer has no bias. Returns one float64 vector per pair.
    """
    if not pairs:
        return []
    with torch.no_grad():
        weights = [_as_float(w.detach()) for w, _ in pairs]
        w_norms = torch._foreach_norm(weights)
        biases = [_as_float(b.detach()) for _, b in pairs if b is not None]
        b_norms = iter(torch._foreach_norm(biases)) if biases else iter(())
        out = []
        for (_, bias), weight, w_norm in zip(pairs, weights, w_norms):
            if bias is not None:
                b_sum, b_norm = _as_float(bias.detach()).sum(), next(b_norms)
            else:
                b_sum = b_norm = torch.full((), math.nan, device=weight.device)
            out.append(torch.stack((weight.sum(), w_norm, b_sum, b_norm)).double())
        return out


WEIGHT_WIDTH = 4


def weight_moments(values: list[float], weight_numel: int, bias_numel: int):
    """(weight std, weight mean, bias std, bias mean) from the host copy of one `weight_parts` row."""
    w_sum, w_norm, b_sum, b_norm = values
    w_mean = w_sum / weight_numel
    w_std = math.sqrt(max(w_norm * w_norm / weight_numel - w_mean * w_mean, 0.0))
    if bias_numel == 0 or math.isnan(b_sum):
        return w_std, w_mean, None, None
    b_mean = b_sum / bias_numel
    b_std = math.sqrt(max(b_norm * b_norm / bias_numel - b_mean * b_mean, 0.0))
    return w_std, w_mean, b_std, b_mean


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
