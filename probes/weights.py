"""Weight scale of weighted layers, read at collect time as device tensors."""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_WIDTH = 4  # weight std, weight mean, bias std, bias mean


def weight_part(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """[weight std, weight mean, bias std, bias mean] (NaN where there is no bias), float64."""
    with torch.no_grad():
        w = weight.detach()
        w_std, w_mean = torch.std_mean(w.float(), correction=0)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor) and bias.numel() > 0:
            b_std, b_mean = torch.std_mean(bias.detach().float(), correction=0)
        else:
            b_std = b_mean = torch.full((), float("nan"), device=w.device)
        return torch.stack((w_std, w_mean, b_std, b_mean)).double()
