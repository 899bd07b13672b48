"""Loss terms: each a small module with a `weight` and an optional [start, end) step window.

The prompt loss is the spherical distance of the public VQGAN+CLIP method (Crowson); the
symmetry terms implement the Doorways post (docs/references.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEEDS = {  # what a loss may read from LossContext beyond the cheap parts, made on first read
    "stops": "(P,) per-prompt floor of the signed distance: below it a view stops pulling",
    "anchor_mix": "(N, P) positional mix over the anchored prompts",
    "pairs": "(left, right) view indices of each mirrored cutout pair, left < right",
    "latent": "θ of the generator as one tensor",
    "init_latent": "θ encoded from the init image",
    "init_image": "(1, 3, H, W) the init image as the generator renders it",
}


def mirrored_pairs(pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) indices of each mirrored pair from `views.pair` (−1: no partner)."""
    index = torch.arange(len(pair), device=pair.device)
    left = torch.nonzero((pair >= 0) & (index < pair))[:, 0]
    return left, pair[left]


FROM_VIEWS = {"pairs": lambda ctx: mirrored_pairs(ctx.views.pair)}  # needs the views alone make


class MissingNeed(AttributeError):
    """A loss read a need that no provider of this run makes."""


class LossContext:
    """What a loss may read for one step: the cheap parts given, every other need made by its
    provider (`providers[need](ctx)`) on the first read, then kept for the rest of the step."""

    def __init__(
        self,
        step: int,
        image: torch.Tensor,
        views,
        image_embeds: list[torch.Tensor],
        text_embeds: list[torch.Tensor],
        model_weights: list[float],
        W: torch.Tensor,
        *known,
        providers: dict | None = None,
        **named,
    ):
        """`known` / `named`: needs already made, by position in NEEDS' order or by name;
        `providers` (need → fn(ctx)) default to what the views alone make."""
        self.step = step
        self.image = image  # (1, 3, H, W) in [0, 1]
        self.views = views  # genart.cutouts.Views
        self.image_embeds = image_embeds  # per guide model: (N, D) unit vectors
        self.text_embeds = text_embeds  # per guide model: (P, D) unit vectors
        self.model_weights = model_weights
        self.W = W  # (N, P) per-view prompt weights (signed)
        self.providers = FROM_VIEWS if providers is None else providers
        self.__dict__.update(zip(list(NEEDS)[: len(known)], known, strict=True), **named)

    def __getattr__(self, need: str):
        """Make a need on its first read (Python asks here only for names not yet set)."""
        providers = self.__dict__.get("providers", {})
        if need.startswith("_") or need not in providers:
            raise MissingNeed(
                f"LossContext has no {need!r}: no provider makes it in this run (it makes: "
                f"{', '.join(providers) or 'nothing'}). A loss lists what it reads in `needs`, so "
                f"that the run refuses at start what it cannot supply."
            )
        value = providers[need](self)
        setattr(self, need, value)
        return value

    def over_models(self, fn) -> torch.Tensor:
        """Σ_m w_m · fn(image_embeds_m, text_embeds_m) / Σ_m w_m, for guide ensembles."""
        return ensemble_mean(self.model_weights, fn, self.image_embeds, self.text_embeds)


def ensemble_mean(weights: list[float], fn, image_embeds: list, text_embeds: list) -> torch.Tensor:
    """Σ_m w_m · fn(e_m, t_m) / Σ_m w_m over a guide ensemble's models (losses and selection)."""
    pairs = zip(weights, image_embeds, text_embeds, strict=True)
    return sum(w * fn(e, t) for w, e, t in pairs) / sum(weights)


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

    needs: tuple[str, ...] = ()  # what forward reads from LossContext beyond the cheap parts
    provides: dict = {}  # need → fn(ctx): a need this loss brings, made once per step for all
    fixes: dict = {}  # need → a setting of this loss that does without it (for the refusal)

    def __init__(self, weight: float = 1.0, start: int = 0, end: float | None = None):
        super().__init__()
        self.weight, self.start = float(weight), int(start)
        self.end = math.inf if end is None else end

    def active(self, step: int) -> bool:
        """Inside the step window (a weight-0 term is still measured for the logs)."""
        return self.start <= step < self.end


class PromptLoss(Loss):
    """Σ_p Σ_i |W_ip|·v_ip / N with v = sign(W)·d(e, t); gradient through max(v, stop)."""

    needs = ("stops",)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        def one_model(e, t):
            v = torch.sign(ctx.W) * spherical_dist(e, t)  # (N, P)
            v = replace_grad(v, torch.maximum(v, ctx.stops[None].to(v)))
            return (ctx.W.abs() * v).sum() / len(v)

        return ctx.over_models(one_model)


class SemanticSymmetryLoss(Loss):
    """Mean over mirrored pairs (i left, j right) of 1 − cos(e_i − t_i, e_j − t_j) (Doorways)."""

    needs = ("pairs", "anchor_mix")

    def forward(self, ctx: LossContext) -> torch.Tensor:
        left, right = ctx.pairs
        if len(left) == 0:  # a step of unpaired views only (e.g. composition windows)
            return ctx.image.new_zeros(())
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
    """‖blur(gray(x)) − flip_x(blur(gray(x)))‖₁ (mean): match tone left to right (Doorways)."""

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
    """Pull θ (space=latent) or the image (space=image) towards the init, fading as decay^step."""

    fixes = {"latent": "space=image (pull the image instead of θ)"}

    def __init__(self, weight: float = 1.0, decay: float = 1.0, space: str = "latent", **window):
        super().__init__(weight, **window)
        self.decay, self.space = float(decay), space
        self.needs = ("latent", "init_latent") if space == "latent" else ("init_image",)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if self.space == "latent":
            now, target = ctx.latent, ctx.init_latent
        else:
            now, target = ctx.image, ctx.init_image
        fade = self.decay**ctx.step
        return fade * F.mse_loss(now.float(), target.float().to(now.device))
