"""The studio's surrogate of the user's taste: a classifier on CLIP image embeddings of what the
user has seen, chosen against not chosen, that ranks a bred pool of candidate latents by their
cheap previews before any is rendered (issue 17, must have 3; the surrogate-model enhancement of
IELDM, Videau et al., GECCO 2023, and Nevergrad's "Guiding image generation" note).

Model: scikit-learn's LogisticRegression, L2-penalised (C), `class_weight="balanced"` (three
picks among forty weigh as much as the thirty-seven others; this moves the intercept more than
the ranking), on L2-normalised embeddings (a CLIP embedding's direction carries its meaning).
A linear model because the user has seen tens of images, not thousands. lbfgs has no randomness,
so the same data give the same scores. With no pick, or everything picked, there is nothing to
learn: the surrogate stays unfitted, `score` returns None and `rank` keeps the breeding order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genart.studio import operators, previews


class Surrogate:
    """chosen (1) vs not chosen (0) on unit CLIP embeddings; `rank` orders candidates by taste."""

    def __init__(self, C: float = 1.0):
        self.C = C  # inverse L2 strength: 1 is scikit-learn's default, fine at D = 512..1024
        self.model = None

    @property
    def fitted(self) -> bool:
        return self.model is not None

    def fit(self, embeddings: Tensor, chosen: Sequence[bool] | Tensor) -> Surrogate:
        """Fit on everything seen: embeddings (N, D), chosen (N,) bool. One class only: unfitted."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(torch.as_tensor(chosen).cpu(), dtype=bool)
        if len(y) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(y)} chosen flags")
        self.model = None
        if y.all() or not y.any():
            return self
        model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000)
        self.model = model.fit(unit_rows(embeddings), y.astype(int))
        return self

    def score(self, embeddings: Tensor) -> Tensor | None:
        """Predicted preference (N,) float64, the classifier's logit; None when unfitted."""
        if not self.fitted:
            return None
        return torch.from_numpy(self.model.decision_function(unit_rows(embeddings)))

    def rank(self, embeddings: Tensor) -> Tensor:
        """Candidate indices (N,) long, most preferred first; ties and unfitted: breeding order."""
        scores = self.score(embeddings)
        if scores is None:
            return torch.arange(len(embeddings))
        return torch.argsort(-scores, stable=True)


def unit_rows(embeddings: Tensor) -> np.ndarray:
    """(N, D) → L2-normalised rows, float64 numpy (scikit-learn's input)."""
    return F.normalize(torch.as_tensor(embeddings).double(), dim=-1).cpu().numpy()


def breed_child(
    parents: Sequence[Tensor],
    generator: torch.Generator,
    strength: float = 0.25,
    kind: str = "gaussian",
    n_codes: int | None = None,
) -> Tensor:
    """One child: Voronoi crossover of the parents, then a plain mutation of `strength` (with one
    parent the crossover is a copy, so the mutation alone makes the pool differ)."""
    child, _, _ = operators.voronoi_crossover(parents, generator)
    return operators.plain_mutation(child, strength, generator, kind=kind, n_codes=n_codes)


@dataclass
class Ranked:
    """breed_and_rank's answer: the k latents to render, their surrogate scores (None when not
    ranked) and their indices in the bred pool (its breeding order), best first."""

    latents: list[Tensor]
    scores: Tensor | None
    pool_index: Tensor


def breed_and_rank(
    breed: Callable[[torch.Generator], Tensor],
    pool_size: int,
    k: int,
    seed: int,
    surrogate: Surrogate | None = None,
    image_generator=None,
    guide=None,
    rank: bool = True,
) -> Ranked:
    """Breed `pool_size` candidates with `breed(rng)` (e.g. functools.partial(breed_child,
    parents)) from one torch.Generator seeded with `seed`, and keep the top k by the surrogate's
    score of their previews. rank=False, or a surrogate with nothing learned: the first k bred,
    no preview computed."""
    if not 1 <= k <= pool_size:
        raise ValueError(f"k={k} must be between 1 and pool_size={pool_size}")
    rng = torch.Generator().manual_seed(int(seed))
    pool = [breed(rng) for _ in range(pool_size)]
    if not rank or surrogate is None or not surrogate.fitted:
        return Ranked(pool[:k], None, torch.arange(k))
    embeddings = previews.embed(guide, previews.preview_images(image_generator, pool))
    scores = surrogate.score(embeddings)
    order = torch.argsort(-scores, stable=True)[:k]
    return Ranked([pool[i] for i in order], scores[order], order)
