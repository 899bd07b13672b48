"""The per-view factors of a prompt's weight W_ip = time_p · pos_ip · size(s_i) · sel_ip · w_p.

`genart.prompts.PromptSchedule` multiplies them; this module owns the two that are functions of
a view's geometry: pos (interpolation of the view centre's x between anchored prompts) and
size (a power of the crop size), both from the Doorways post (Doorways; docs/references.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genart.errors import UserError


def interpolate_positions(x: Tensor, anchors: Tensor, mode: str, sharpness: float) -> Tensor:
    """pos (N, K) of K anchored prompts at view centres x (N,), each row summing to 1."""
    order = torch.argsort(anchors)
    xs = anchors[order]
    if mode in ("linear", "cosine"):
        t = tents(x.clamp(xs[0], xs[-1]), xs)  # (N, K), piecewise linear, rows sum to 1
        if mode == "cosine":
            t = (1 - torch.cos(math.pi * t)) / 2  # smooth ease between neighbours, still sums to 1
    elif mode == "sigmoid":
        spacing = (xs[-1] - xs[0]) / max(len(xs) - 1, 1) if len(xs) > 1 else torch.tensor(1.0)
        # a softmax of -sharpness·|x - x_k| is a sigmoid of x between neighbouring anchors
        t = torch.softmax(-sharpness * (x[:, None] - xs[None, :]).abs() / spacing, dim=1)
    else:
        raise UserError(f'prompts.interpolation is "{mode}"; use linear, cosine or sigmoid.')
    t = t / t.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return t[:, torch.argsort(order)]  # back to the anchors' own order


def tents(x: Tensor, xs: Tensor) -> Tensor:
    """(N, K) hat functions at sorted anchors xs (K,): anchor k's weight falls linearly to 0 at
    its neighbours."""
    if len(xs) == 1:
        return torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
    idx = torch.searchsorted(xs, x.contiguous(), right=True).clamp(1, len(xs) - 1)  # right
    x0, x1 = xs[idx - 1], xs[idx]
    frac = ((x - x0) / (x1 - x0)).clamp(0, 1)
    t = torch.zeros(len(x), len(xs), dtype=x.dtype, device=x.device)
    rows = torch.arange(len(x), device=x.device)
    t[rows, idx - 1] = 1 - frac
    t[rows, idx] += frac
    return t


def size_weights(sizes: Tensor, power: float, composition: Tensor | None = None) -> Tensor:
    """(N,) s**power normalised to mean 1 over the detail views; composition windows get 1."""
    detail = torch.ones_like(sizes, dtype=torch.bool) if composition is None else ~composition
    weights = sizes.float().pow(power)
    if detail.any():
        weights = weights / weights[detail].mean()
    return torch.where(detail, weights, torch.ones_like(weights))


class SizeWeighting(nn.Module):
    """size(s) of the per-view prompt weight W_ip (Doorways; docs/references.md): ∝ s**power.

    power > 0 favours large crops (global layout: "most of the weight on very large patches"),
    power < 0 small ones (filling in detail from an init image), 0 is uniform. Monotone in s and
    normalised to mean 1 over the detail views, so it moves weight between views without
    changing the loss scale. Pass `composition` (N,) bool to exclude windows from the mean.
    """

    def __init__(self, power: float = 0.0):
        super().__init__()
        self.power = power

    def forward(self, sizes: Tensor, composition: Tensor | None = None) -> Tensor:
        return size_weights(sizes, self.power, composition)
