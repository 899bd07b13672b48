"""What the image should be: cutouts → CLIP guide → prompt schedule → losses, for any image.

The objective never sees how its image was made or how it will be updated: a VQGAN decode, raw
pixels or a diffusion model's predicted clean image all go in as a (1, 3, H, W) tensor.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function  # named ranges for genart.tools.bench; ~free unprofiled

from genart.losses import LossContext


class Objective:
    """`objective(image, step, latent=None) -> (total, terms, stats)`; differentiable in `image`."""

    def __init__(
        self,
        cutouts,
        guide,
        schedule,
        losses: dict,
        text_embeds: list[torch.Tensor],  # per guide model: (P, D) prompt targets
        init_latent: torch.Tensor | None = None,
        init_image: torch.Tensor | None = None,
    ):
        self.cutouts, self.guide, self.schedule, self.losses = cutouts, guide, schedule, losses
        self.text_embeds = text_embeds
        self.init = {"init_latent": init_latent, "init_image": init_image}

    def __call__(self, image: torch.Tensor, step: int, latent: torch.Tensor | None = None):
        """Σ weight·loss, the raw terms, and what callbacks read (views, W, winners, sims)."""
        with record_function("genart/cutouts"):
            views = self.cutouts(image, step)
        with record_function("genart/guide"):
            image_embeds = [e.float() for e in self.guide.encode_image(views.pixels)]
        with record_function("genart/losses"):
            sims = mean_similarity(self.guide, image_embeds, self.text_embeds)  # (N, P)
            W, winners = self.schedule.weights(step, views, sims)
            ctx = LossContext(
                step=step,
                image=image,
                views=views,
                image_embeds=image_embeds,
                text_embeds=self.text_embeds,
                model_weights=self.guide.weights,
                W=W,
                stops=self.schedule.stops(W.device),
                anchor_mix=self.schedule.anchor_mix(views),
                latent=latent,
                **self.init,
            )
            terms = {
                name: evaluate(loss, ctx) for name, loss in self.losses.items() if loss.active(step)
            }
            total = sum(self.losses[name].weight * value for name, value in terms.items())
            total = total if torch.is_tensor(total) else image.new_zeros(())
        return total, terms, {"views": views, "W": W, "winners": winners, "sims": sims}


def evaluate(loss, ctx: LossContext) -> torch.Tensor:
    """A term's raw value; a weight-0 term is still measured (for the logs) but builds no graph."""
    if loss.weight != 0:
        return loss(ctx)
    with torch.no_grad():
        return loss(ctx)


def mean_similarity(guide, image_embeds: list, text_embeds: list) -> torch.Tensor:
    """(N, P) cosine similarity, ensemble-weighted; selection only, so no gradient."""
    pairs = zip(guide.weights, image_embeds, text_embeds, strict=True)
    return sum(w * (e.detach() @ t.T) for w, e, t in pairs) / sum(guide.weights)
