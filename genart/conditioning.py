"""SDXL's text conditioning from genart's prompt schedule (docs/sdxl.md, "Conditioning").

At a step, each text prompt's weight is a_p = time_p(step) · w_p (genart.prompts). The positive
conditioning is the a-weighted mean of the prompts with a_p > 0; the negative one, which
classifier-free guidance subtracts, the |a|-weighted mean of those with a_p < 0. The mean is taken
over the encoder hidden states and the pooled embeddings alike, so the weights are shares: "sea:2"
alone conditions as "sea" does, and "sea:2|sky:1" is two thirds sea. View size and best-match
selection act on views, which a text encoder never sees: they are left out here. Position is
kept for the windows SDXL denoises side by side (genart.windows): `at(step, x)` weights each
anchored prompt also by genart's positional weight at x (genart.prompt_weights), as CLIP's views
at x are weighted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genart.prompt_weights import interpolate_positions


@dataclass(frozen=True)
class TextEmbeds:
    """One side of SDXL's conditioning, as StableDiffusionXLPipeline.encode_prompt returns it."""

    hidden: torch.Tensor  # (1, 77, D1 + D2): both encoders' penultimate hidden states, concatenated
    pooled: torch.Tensor  # (1, D2): text_encoder_2's projected pooled output

    def zeros(self) -> TextEmbeds:
        return TextEmbeds(torch.zeros_like(self.hidden), torch.zeros_like(self.pooled))


@dataclass(frozen=True)
class Conditioning:
    positive: TextEmbeds
    negative: TextEmbeds  # what classifier-free guidance moves away from


def weighted_mean(parts: list[TextEmbeds], weights: list[float]) -> TextEmbeds:
    """Σ w·e / Σ w over the parts (w > 0); a single part is returned as it is, bit for bit."""
    if len(parts) == 1:
        return parts[0]
    total = sum(weights)  # Python floats: no tensor is read back on the step (no host sync)
    w = [wi / total for wi in weights]
    hidden = sum(wi * p.hidden for wi, p in zip(w, parts, strict=True))
    pooled = sum(wi * p.pooled for wi, p in zip(w, parts, strict=True))
    return TextEmbeds(hidden, pooled)


class PromptConditioning:
    """`conditioning(step) -> Conditioning` for a PromptSchedule; each text is encoded once.

    With no negative prompt active, the negative side is zeros when the model says
    `force_zeros_for_empty_prompt` (SDXL base and Turbo do), else the empty prompt's embedding,
    as StableDiffusionXLPipeline does; with no positive prompt active, the empty prompt's.
    """

    def __init__(self, schedule, encode: Callable[[str], TextEmbeds], zeros_for_no_negative: bool):
        self.schedule = schedule
        self.encode = encode
        self.zeros_for_no_negative = zeros_for_no_negative
        self.cache: dict[str, TextEmbeds] = {}
        self.places: dict[float, list[float]] = {}  # x → pos_p(x), see positions()
        # anchored text prompts: only then can the conditioning differ across the canvas
        self.positional = any(p.anchor is not None for p in self.text_prompts())

    def text_prompts(self) -> list:
        return [p for p in self.schedule.prompts if not p.is_image]

    def embeds(self, text: str) -> TextEmbeds:
        if text not in self.cache:
            self.cache[text] = self.encode(text)
        return self.cache[text]

    def weights(self, step: int) -> list[tuple[str, float]]:
        """(text, a_p = time_p(step) · w_p) for each text prompt; image prompts condition nothing."""
        # PromptSchedule.active's window, in Python: no tensor is read back on the step
        return [(p.text, p.weight * float(p.start <= step < p.end)) for p in self.text_prompts()]

    def positions(self, x: float) -> list[float]:
        """pos_p(x) for each text prompt: genart's positional weight at x in [-1, 1] (the view
        centres' convention) for anchored prompts, 1 for the others. Computed once per x and
        cached, so the read-back of those few CPU numbers happens once, never per step."""
        if x not in self.places:
            self.places[x] = positional_weights(self.schedule, self.text_prompts(), x)
        return self.places[x]

    def cache_positions(self, xs: list[float]) -> None:
        """Compute positions() for these x now (the windows' centres, when the model is built)."""
        for x in xs:
            self.positions(x)

    def mean_of(self, weighted: list[tuple[str, float]], sign: int) -> TextEmbeds | None:
        """The weighted mean over the texts whose weight has this sign; None if there are none."""
        chosen = [(text, sign * a) for text, a in weighted if sign * a > 0]
        if not chosen:
            return None
        return weighted_mean([self.embeds(text) for text, _ in chosen], [a for _, a in chosen])

    def side(self, step: int, sign: int) -> TextEmbeds | None:
        """The weighted mean over the prompts whose a_p has this sign; None if there are none."""
        return self.mean_of(self.weights(step), sign)

    def at(self, step: int, x: float) -> TextEmbeds:
        """The positive side at horizontal position x in [-1, 1] (left edge −1, right edge +1):
        each prompt weighted by pos_p(x) · a_p, then side()'s rule. At an anchor, with linear or
        cosine interpolation, only that anchor's prompt (and the unanchored ones) conditions."""
        a = self.weights(step)
        weighted = [(text, w * q) for (text, w), q in zip(a, self.positions(x), strict=True)]
        return self.mean_of(weighted, +1) or self.embeds("")

    def __call__(self, step: int) -> Conditioning:
        positive = self.side(step, +1) or self.embeds("")
        negative = self.side(step, -1)
        if negative is None:
            negative = positive.zeros() if self.zeros_for_no_negative else self.embeds("")
        return Conditioning(positive, negative)


def positional_weights(schedule, prompts: list, x: float) -> list[float]:
    """pos_p(x) for the prompts: interpolate_positions over the anchored ones with the schedule's
    interpolation and sharpness (as PromptSchedule.positional weights a view centred at x), 1 for
    the unanchored ones."""
    anchored = [k for k, p in enumerate(prompts) if p.anchor is not None]
    weights = [1.0] * len(prompts)
    if anchored:
        anchors = torch.tensor([prompts[k].anchor for k in anchored])  # (K,) on the CPU
        pos = interpolate_positions(
            torch.tensor([x]), anchors, schedule.interpolation, schedule.sharpness
        )  # (1, K)
        for k, w in zip(anchored, pos[0].tolist(), strict=True):
            weights[k] = w
    return weights
