"""Loss terms: each a small module with a `weight` and an optional [start, end) step window.

The prompt loss is the spherical distance of the public VQGAN+CLIP method (Crowson); the
symmetry terms implement the "Doorways" post (seed 001). Formulas: shared/DESIGN.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossContext:
    """Everything a loss may look at for one step."""

    step: int
    image: torch.Tensor  # (1, 3, H, W) in [0, 1]
    views: object  # genart.cutouts.Views
    image_embeds: list[torch.Tensor]  # per guide model: (N, D) unit vectors
    text_embeds: list[torch.Tensor]  # per guide model: (P, D) unit vectors
    model_weights: list[float]
    W: torch.Tensor  # (N, P) per-view prompt weights (signed)
    stops: torch.Tensor  # (P,)
    anchor_mix: torch.Tensor  # (N, P) positional mix over anchored prompts
    latent: torch.Tensor | None = None  # θ of the generator
    init_latent: torch.Tensor | None = None
    init_image: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    def over_models(self, fn) -> torch.Tensor:
        """Σ_m w_m · fn(image_embeds_m, text_embeds_m) / Σ_m w_m, for guide ensembles."""
        total = sum(self.model_weights)
        pairs = zip(self.model_weights, self.image_embeds, self.text_embeds, strict=True)
        return sum(w * fn(e, t) for w, e, t in pairs) / total


def spherical_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(a, b) = 2·arcsin(‖a − b‖/2)² for unit vectors (= θ²/2); (N, D), (P, D) → (N, P)."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    chord = (a[:, None, :] - b[None, :, :]).norm(dim=-1)  # (N, P)
    return 2 * torch.arcsin((chord / 2).clamp(max=1)) ** 2


class _ReplaceGrad(torch.autograd.Function):
    """Forward the first value, backpropagate through the second (straight-through)."""

    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad):
        return None, grad.sum_to_size(ctx.shape)


replace_grad = _ReplaceGrad.apply


class Loss(nn.Module):
    """A weighted term active while start <= step < end."""

    needs_pairs = False  # True: the term compares mirrored cutout pairs (0 without them)

    def __init__(self, weight: float = 1.0, start: int = 0, end: float | None = None):
        super().__init__()
        self.weight, self.start = float(weight), int(start)
        self.end = math.inf if end is None else end

    def active(self, step: int) -> bool:
        """Inside the step window (a weight-0 term is still measured for the logs)."""
        return self.start <= step < self.end


class PromptLoss(Loss):
    """Σ_p Σ_i |W_ip|·v_ip / N with v = sign(W)·d(e, t); gradient through max(v, stop)."""

    def forward(self, ctx: LossContext) -> torch.Tensor:
        def one_model(e, t):
            v = torch.sign(ctx.W) * spherical_dist(e, t)  # (N, P)
            v = replace_grad(v, torch.maximum(v, ctx.stops[None].to(v)))
            return (ctx.W.abs() * v).sum() / len(v)

        return ctx.over_models(one_model)


class SemanticSymmetryLoss(Loss):
    """Mean over mirrored pairs (i left, j right) of 1 − cos(e_i − t_i, e_j − t_j) (seed 001)."""

    needs_pairs = True

    def forward(self, ctx: LossContext) -> torch.Tensor:
        pair = ctx.views.pair
        left = torch.nonzero((pair >= 0) & (torch.arange(len(pair), device=pair.device) < pair))[
            :, 0
        ]
        if len(left) == 0:
            return ctx.image.new_zeros(())
        right = pair[left]
        mix = ctx.anchor_mix.float()  # (N, P)

        def one_model(e, t):
            offset = e.float() - mix @ t.float()  # (N, D): e_i − t_i
            return (1 - F.cosine_similarity(offset[left], offset[right], dim=-1)).mean()

        return ctx.over_models(one_model)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) with a kernel radius of ceil(3σ) px (the tails beyond are
    < 0.3 %), reflecting at the border; the one blur of genart (losses and `init.blur`)."""
    import kornia.filters

    k = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


class ToneSymmetryLoss(Loss):
    """‖blur(gray(x)) − flip_x(blur(gray(x)))‖₁ (mean): match tone left to right (seed 001)."""

    def __init__(self, weight: float = 1.0, sigma: float = 8.0, **window):
        super().__init__(weight, **window)
        self.sigma = sigma

    def forward(self, ctx: LossContext) -> torch.Tensor:
        import kornia.color

        tone = gaussian_blur(kornia.color.rgb_to_grayscale(ctx.image.float()), self.sigma)
        return (tone - tone.flip(-1)).abs().mean()


class EdgeSymmetryLoss(Loss):
    """‖blur(sobel(x)) − flip_x(blur(sobel(x)))‖₂² (mean); the post found it easy to hack."""

    def __init__(self, weight: float = 1.0, sigma: float = 4.0, **window):
        super().__init__(weight, **window)
        self.sigma = sigma

    def forward(self, ctx: LossContext) -> torch.Tensor:
        import kornia.color
        import kornia.filters

        edges = kornia.filters.sobel(kornia.color.rgb_to_grayscale(ctx.image.float()))
        edges = gaussian_blur(edges, self.sigma)
        return ((edges - edges.flip(-1)) ** 2).mean()


class TVLoss(Loss):
    """Total variation of the image (mean squared neighbour differences): discourages noise."""

    def forward(self, ctx: LossContext) -> torch.Tensor:
        x = ctx.image.float()
        return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + (
            (x[..., 1:] - x[..., :-1]) ** 2
        ).mean()


class InitImageLoss(Loss):
    """Pull θ (or the image) towards the init, fading as weight·decay^step."""

    def __init__(self, weight: float = 1.0, decay: float = 1.0, space: str = "latent", **window):
        super().__init__(weight, **window)
        self.decay, self.space = float(decay), space

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if self.space == "latent" and ctx.init_latent is not None and ctx.latent is not None:
            now, target = ctx.latent, ctx.init_latent
        elif ctx.init_image is not None:
            now, target = ctx.image, ctx.init_image
        else:
            return ctx.image.new_zeros(())
        fade = self.decay**ctx.step
        return fade * F.mse_loss(now.float(), target.float().to(now.device))
