"""Weight and bias scale of weighted layers, read at collect time as device tensors.

Sums and L2 norms of all weights (and all biases) come from probes/grouped.py: same-shape small
tensors as rows of one stack, the rest with one fused `_foreach_norm`, so the cost per collect
is a handful of ops whatever the depth. std is formed on the host as sqrt(E[w^2] - E[w]^2),
exact to ~1e-7 relative for weights whose mean is small against their spread (every init
scheme; see probes/stats.py on precision).

Large tensors (more than SAMPLE_ABOVE elements) are measured on a fixed sample of
SAMPLE_BLOCKS runs of SAMPLE_BLOCK elements (probes/sampling.py): reading every weight of an
MLP of 2.4 M parameters at each collect cost ~1.5 ms, 5 % of its training step
(benchmarks/overhead.py W1). With k = 8192 sampled elements the std of Gaussian-like weights
is estimated within ~0.8 % (one standard error, 1/sqrt(2k)); the runs are short (64 elements),
so the sample spans 128 places in the tensor (rows or output channels). The init checks that
read these numbers work with factors of 2 and more (diagnose/checks/poor_initialization.py).
"""

from __future__ import annotations

import math

import torch

from probes import grouped
from probes.sampling import sampled_view

# Tensors larger than this are measured on a sample (see the module docstring): 65536 elements
# (256 KB in float32) keeps every bias and every small or medium layer exact.
SAMPLE_ABOVE = 65536
SAMPLE_BLOCKS = 128
SAMPLE_BLOCK = 64


class WeightReader:
    """Reads (weight sum, weight norm, bias sum, bias norm) of fixed (weight, bias) pairs."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        self.weights = [w for w, _ in pairs]
        self.biases = [b for _, b in pairs if b is not None]
        self._has_bias = [b is not None for _, b in pairs]
        self._prepare([_sample(w) for w in self.weights], [_sample(b) for b in self.biases])

    def _prepare(self, weight_samples: list[tuple], bias_samples: list[tuple]) -> None:
        """Lay out the reads for what is read of each tensor now (its sample's shape and factor)."""
        self._read_as = _read_as(weight_samples + bias_samples)
        # Laid out by what is read: samples of large tensors all have one shape, so they stack.
        self._weight_layout = grouped.plan([view for view, _ in weight_samples])
        self._bias_layout = grouped.plan([view for view, _ in bias_samples]) if self.biases else None
        # Where each pair's numbers land in the fetched vector (layout order, see `values`).
        count, bias_count = len(self.weights), len(self.biases)
        weight_at = {p: i for i, p in enumerate(self._weight_layout.order)}
        bias_at = {p: i for i, p in enumerate(self._bias_layout.order)} if self.biases else {}
        slots: list[tuple[int, int, int | None, int | None]] = []
        bias_position = 0
        for position, has_bias in enumerate(self._has_bias):
            w = weight_at[position]
            if not has_bias:
                slots.append((w, count + w, None, None))
            else:
                b = bias_at[bias_position]
                slots.append((w, count + w, 2 * count + b, 2 * count + bias_count + b))
                bias_position += 1
        self._slots = slots
        # (position in the fetched vector, factor) for the sums and norms of sampled tensors:
        # a sum scales by numel / k, a norm by its square root.
        scales: list[tuple[int, float]] = []
        for samples, at, sum_start, norm_start in (
            (weight_samples, weight_at, 0, count),
            (bias_samples, bias_at, 2 * count, 2 * count + bias_count),
        ):
            for position, (_, factor) in enumerate(samples):
                if factor != 1.0:
                    i = at[position]
                    scales += [(sum_start + i, factor), (norm_start + i, math.sqrt(factor))]
        self._scales = scales

    def parts(self) -> torch.Tensor:
        """float64 vector: weight sums, weight norms, bias sums, bias norms (layout order).

        Sampled tensors' entries are the sample's: `values` scales them to the whole tensor.
        """
        weight_samples = [_sample(w) for w in self.weights]
        bias_samples = [_sample(b) for b in self.biases]
        if _read_as(weight_samples + bias_samples) != self._read_as:
            self._prepare(weight_samples, bias_samples)  # a parameter was reshaped or re-laid out
        w_sums, w_norms = grouped.sums_and_norms([v for v, _ in weight_samples], self._weight_layout)
        pieces = [w_sums, w_norms]
        if self._bias_layout is not None:
            b_sums, b_norms = grouped.sums_and_norms([v for v, _ in bias_samples], self._bias_layout)
            device = w_sums.device
            pieces += [b_sums.to(device), b_norms.to(device)]
        return torch.cat(pieces)

    def values(self, host: list[float]) -> list[tuple[float, float, float, float]]:
        """Per pair, in the order given: (weight sum, weight norm, bias sum, bias norm); NaN: no bias."""
        nan = math.nan
        scaled = list(host)
        for position, scale in self._scales:
            scaled[position] *= scale
        return [
            (scaled[w], scaled[wn], nan if b is None else scaled[b], nan if bn is None else scaled[bn])
            for w, wn, b, bn in self._slots
        ]


def _read_as(samples: list[tuple[torch.Tensor, float]]) -> list[tuple]:
    """What the layout of the reads depends on, per tensor."""
    return [(view.shape, view.dtype, view.device, factor) for view, factor in samples]


def _sample(tensor: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the tensor, or its sample when large; numel / elements read). Made afresh at every read:
    a parameter's storage may be replaced while attached."""
    return sampled_view(tensor.detach(), SAMPLE_ABOVE, SAMPLE_BLOCKS, SAMPLE_BLOCK)


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
