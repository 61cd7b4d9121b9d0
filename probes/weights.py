"""Weight and bias scale of weighted layers, read at collect time as device tensors.

Sums of squares come from one fused `_foreach_norm` over all weights (and one over all biases);
std is formed on the host as sqrt(E[w^2] - E[w]^2), exact to ~1e-7 relative for weights whose
mean is small against their spread (every init scheme; see probes/stats.py on precision).
"""

from __future__ import annotations

import math

import torch


def weight_parts(pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor | None:
    """[4, layers] float64: weight sums, weight L2 norms, bias sums, bias L2 norms (NaN: no bias).

    One stacked sum and one `_foreach_norm` per row, whatever the number of layers.
    """
    if not pairs:
        return None
    with torch.no_grad():
        weights = [_as_float(w.detach()) for w, _ in pairs]
        device = weights[0].device
        w_sums = torch.stack([w.sum().to(device) for w in weights]).double()
        w_norms = torch.stack([n.to(device) for n in torch._foreach_norm(weights)]).double()
        biases = [_as_float(b.detach()) for _, b in pairs if b is not None]
        norms = iter(torch._foreach_norm(biases)) if biases else iter(())
        missing = torch.full((), math.nan, device=device)  # placeholder for layers without bias
        b_sums, b_norms = [], []
        for _, bias in pairs:
            if bias is None:
                b_sums.append(missing)
                b_norms.append(missing)
            else:
                b_sums.append(_as_float(bias.detach()).sum().to(device))
                b_norms.append(next(norms).to(device))
        b_sums = torch.stack(b_sums).double()
        b_norms = torch.stack(b_norms).double()
        return torch.stack((w_sums, w_norms, b_sums, b_norms))


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
