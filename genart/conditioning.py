"""SDXL's text conditioning from genart's prompt schedule (docs/sdxl.md, "Conditioning").

At a step, each text prompt's weight is a_p = time_p(step) · w_p (genart.prompts). The positive
conditioning is the a-weighted mean of the prompts with a_p > 0; the negative one, which
classifier-free guidance subtracts, the |a|-weighted mean of those with a_p < 0. The mean is taken
over the encoder hidden states and the pooled embeddings alike, so the weights are shares: "sea:2"
alone conditions as "sea" does, and "sea:2|sky:1" is two thirds sea. Position, view size and
best-match selection act on views, which a text encoder never sees: they are left out here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


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

    def embeds(self, text: str) -> TextEmbeds:
        if text not in self.cache:
            self.cache[text] = self.encode(text)
        return self.cache[text]

    def weights(self, step: int) -> list[tuple[str, float]]:
        """(text, a_p = time_p(step) · w_p) for each text prompt; image prompts condition nothing."""
        # PromptSchedule.active's window, in Python: no tensor is read back on the step
        return [
            (p.text, p.weight * float(p.start <= step < p.end))
            for p in self.schedule.prompts
            if not p.is_image
        ]

    def side(self, step: int, sign: int) -> TextEmbeds | None:
        """The weighted mean over the prompts whose a_p has this sign; None if there are none."""
        chosen = [(text, sign * a) for text, a in self.weights(step) if sign * a > 0]
        if not chosen:
            return None
        return weighted_mean([self.embeds(text) for text, _ in chosen], [a for _, a in chosen])

    def __call__(self, step: int) -> Conditioning:
        positive = self.side(step, +1) or self.embeds("")
        negative = self.side(step, -1)
        if negative is None:
            negative = positive.zeros() if self.zeros_for_no_negative else self.embeds("")
        return Conditioning(positive, negative)
