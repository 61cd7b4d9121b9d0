"""Fixed, evenly spread samples of large tensors: blocks of contiguous elements in one view.

A sample is one `as_strided` view of `blocks` runs of `block` contiguous elements, the first at
the start of the storage and the last ending near its end, so reductions over it are single ops
and copies of it are single copies. Scaling a sum over the sample by numel / k (k = blocks *
block) estimates the sum over the tensor. Error bound, for roughly exchangeable entries: the
relative standard error of a sum of squares estimated from k elements is about
sqrt(Var(x^2)) / (E[x^2] sqrt(k)), i.e. sqrt(2/k) for Gaussian-like entries (1.6 % for k = 8192),
and half that on a norm or a standard deviation. Runs of contiguous elements share a row, so
when rows differ in scale the sample behaves like `blocks` rows: more, shorter blocks spread
the sample over more rows.
"""

from __future__ import annotations

import torch


def sampled_view(tensor: torch.Tensor, above: int, blocks: int, block: int) -> tuple[torch.Tensor, float]:
    """(the elements measured, numel / their count): the whole tensor up to `above` elements."""
    numel = tensor.numel()
    if numel <= above or numel < blocks * block or not tensor.is_contiguous():
        return tensor, 1.0
    step = (numel - block) // (blocks - 1)  # first block at 0, the last ends within `blocks` of the end
    view = tensor.as_strided((blocks, block), (step, 1), tensor.storage_offset())
    return view, numel / (blocks * block)
