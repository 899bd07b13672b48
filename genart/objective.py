"""What the image should be: cutouts → CLIP guide → prompt schedule → losses, for any image.

The objective never sees how its image was made or how it will be updated: a VQGAN decode, raw
pixels or a diffusion model's predicted clean image all go in as a (1, 3, H, W) tensor. What a
loss reads beyond the image and its embeddings (its `needs`) comes from providers, each called
only when a loss reads it; the run's needs are checked once, when the objective is built.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function  # named ranges for genart.tools.bench; ~free unprofiled

from genart.errors import UserError
from genart.losses import FROM_VIEWS, LossContext, ensemble_mean

UNMET = {  # need → why a run lacks it, and how to supply it
    "pairs": (
        "cutouts.mirrored is false, so no view has a mirrored partner",
        "use cutouts=mirrored (or cutouts.mirrored=true)",
    ),
    "latent": (
        "the generator has no latent θ (its latent() is None)",
        "use a generator that has one (e.g. generator=vqgan)",
    ),
    "init_latent": ("no init image was encoded into θ", "set init.image=<path>"),
    "init_image": ("there is no init image", "set init.image=<path>"),
}


class Objective:
    """`objective(image, step) -> (total, terms, stats)`; differentiable in `image`.

    Built once per run. A need is made by the objective (stops, anchor_mix, pairs), by a loss that
    `provides` it, or by `providers` (need → fn(ctx)) for what only the run knows: θ, the init.
    """

    def __init__(
        self,
        cutouts,
        guide,
        schedule,
        losses: dict,
        text_embeds: list[torch.Tensor],  # per guide model: (P, D) prompt targets
        providers: dict | None = None,
    ):
        self.cutouts, self.guide, self.schedule = cutouts, guide, schedule
        self.text_embeds = text_embeds
        brought = {need: fn for loss in losses.values() for need, fn in loss.provides.items()}
        self.providers = {**own_providers(schedule, cutouts), **brought, **(providers or {})}
        self.losses = usable_losses(losses, self.providers)

    def __call__(self, image: torch.Tensor, step: int):
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
                model_weights=self.guide.model_weights,
                W=W,
                providers=self.providers,
            )
            terms = {
                name: evaluate(loss, ctx) for name, loss in self.losses.items() if loss.active(step)
            }
            total = sum(self.losses[name].weight * value for name, value in terms.items())
            total = total if torch.is_tensor(total) else image.new_zeros(())
        return total, terms, {"views": views, "W": W, "winners": winners, "sims": sims}


def own_providers(schedule, cutouts) -> dict:
    """The needs the objective makes itself: the schedule's stops and mix, the cutouts' pairs."""
    providers = {
        "stops": lambda ctx: schedule.stops(ctx.W.device),
        "anchor_mix": lambda ctx: schedule.anchor_mix(ctx.views),
    }
    if getattr(cutouts, "mirrored", False):
        providers["pairs"] = FROM_VIEWS["pairs"]
    return providers


def usable_losses(losses: dict, supplied) -> dict:
    """The losses this run can evaluate; a weighted one needing what it lacks is refused.

    A weight-0 loss whose needs are missing is left out: it has nothing to measure.
    """
    unmet = {name: [n for n in loss.needs if n not in supplied] for name, loss in losses.items()}
    refusals = [
        refusal(name, losses[name], needs)
        for name, needs in unmet.items()
        if needs and losses[name].weight
    ]
    if refusals:
        raise UserError(" ".join(refusals))
    return {name: loss for name, loss in losses.items() if not unmet[name]}


def refusal(name: str, loss, needs: list[str]) -> str:
    """One loss's share of the start-time refusal: what it needs, why it is missing, the fixes."""
    unknown = ("no part of this run provides it", None)
    whys = dict.fromkeys(UNMET.get(need, unknown)[0] for need in needs)
    fixes = [UNMET.get(need, unknown)[1] for need in needs]
    fixes += [f"set losses.{name}.{loss.fixes[need]}" for need in needs if need in loss.fixes]
    fixes = [*dict.fromkeys(f for f in fixes if f), f"set losses.{name}.weight=0"]
    return (
        f"losses.{name} (weight {loss.weight:g}) needs {' and '.join(needs)}, which this run "
        f"does not supply: {'; '.join(whys)}. To fix it, {', or '.join(fixes)}."
    )


def evaluate(loss, ctx: LossContext) -> torch.Tensor:
    """A term's raw value; a weight-0 term is still measured (for the logs) but builds no graph."""
    if loss.weight != 0:
        return loss(ctx)
    with torch.no_grad():
        return loss(ctx)


def mean_similarity(guide, image_embeds: list, text_embeds: list) -> torch.Tensor:
    """(N, P) cosine similarity, ensemble-weighted; selection only, so no gradient."""
    return ensemble_mean(
        guide.model_weights, lambda e, t: e.detach() @ t.T, image_embeds, text_embeds
    )
