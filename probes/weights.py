"""Weight and bias scale of weighted layers, read at collect time as device tensors.

Sums and L2 norms of all weights (and all biases) come from probes/grouped.py: same-shape small
tensors as rows of one stack, the rest with one fused `_foreach_norm`, so the cost per collect
is a handful of ops whatever the depth. std is formed on the host as sqrt(E[w^2] - E[w]^2),
exact to ~1e-7 relative for weights whose mean is small against their spread (every init
scheme; see probes/stats.py on precision).
"""

from __future__ import annotations

import math

import torch

from probes import grouped


class WeightReader:
    """Reads (weight sum, weight norm, bias sum, bias norm) of fixed (weight, bias) pairs."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        self.weights = [w for w, _ in pairs]
        self.bias_of = [b for _, b in pairs]  # per pair: its bias or None
        self.biases = [b for _, b in pairs if b is not None]
        self._weight_layout = grouped.plan(self.weights)
        self._bias_layout = grouped.plan(self.biases) if self.biases else None
        # Where each pair's numbers land in the fetched vector (layout order, see `values`).
        count, bias_count = len(self.weights), len(self.biases)
        weight_at = {p: i for i, p in enumerate(self._weight_layout.order)}
        bias_at = {p: i for i, p in enumerate(self._bias_layout.order)} if self.biases else {}
        slots: list[tuple[int, int, int | None, int | None]] = []
        bias_position = 0
        for position, (_, bias) in enumerate(pairs):
            w = weight_at[position]
            if bias is None:
                slots.append((w, count + w, None, None))
            else:
                b = bias_at[bias_position]
                slots.append((w, count + w, 2 * count + b, 2 * count + bias_count + b))
                bias_position += 1
        self._slots = slots

    def parts(self) -> torch.Tensor:
        """float64 vector: weight sums, weight norms, bias sums, bias norms (layout order)."""
        w_sums, w_norms = grouped.sums_and_norms(self.weights, self._weight_layout)
        pieces = [w_sums, w_norms]
        if self._bias_layout is not None:
            b_sums, b_norms = grouped.sums_and_norms(self.biases, self._bias_layout)
            device = w_sums.device
            pieces += [b_sums.to(device), b_norms.to(device)]
        return torch.cat(pieces)

    def values(self, host: list[float]) -> list[tuple[float, float, float, float]]:
        """Per pair, in the order given: (weight sum, weight norm, bias sum, bias norm); NaN: no bias."""
        nan = math.nan
        return [
            (host[w], host[wn], nan if b is None else host[b], nan if bn is None else host[bn])
            for w, wn, b, bn in self._slots
        ]


def weight_moments(values, weight_numel: int, bias_numel: int):
    """(weight std, weight mean, bias std, bias mean) from one pair's `WeightReader.values`."""
    w_sum, w_norm, b_sum, b_norm = values
    w_mean = w_sum / weight_numel
    w_std = math.sqrt(max(w_norm * w_norm / weight_numel - w_mean * w_mean, 0.0))
    if bias_numel == 0 or math.isnan(b_sum):
        return w_std, w_mean, None, None
    b_mean = b_sum / bias_numel
    b_std = math.sqrt(max(b_norm * b_norm / bias_numel - b_mean * b_mean, 0.0))
    return w_std, w_mean, b_std, b_mean
