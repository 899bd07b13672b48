"""A genome → a prompt: each piece drawn independently with its probability, at most `k` kept.

The genome is a vector p ∈ [0, 1]^n, one probability per piece. A draw keeps piece i when
u_i < p_i (u ~ U(0, 1), independent). When more than `k` pieces are drawn, `keep` decides which
stay: `random` (default) keeps a uniformly random k of them, so no piece is favoured beyond its
own probability; `likeliest` keeps the k with the highest p_i (ties: list order). An empty draw
takes the single likeliest piece, so every prompt has a subject. Kept pieces stay in list order
and are joined with `joiner` into `template`'s `{pieces}`. Pieces may hold any text (commas,
colons, `|`, quotes reach the job as written) except `${`: a job's config would read it as an
interpolation, so it is refused.

Every draw has its own generator, seeded by (search seed, generation, individual, repeat), so the
prompt of any evaluation can be recomputed, and a resumed search draws what it drew before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genart.errors import UserError

KEEP = ("random", "likeliest")


@dataclass(frozen=True)
class Decoding:
    pieces: tuple[str, ...]
    k: int = 15
    template: str = "{pieces}"
    joiner: str = ", "
    keep: str = "random"

    def __post_init__(self) -> None:
        if not self.pieces:
            raise UserError("search.pieces is empty: list the prompt pieces the search may draw.")
        if self.k < 1:
            raise UserError(
                f"search.k is {self.k}: keep at least 1 piece per prompt (the post: 15)."
            )
        if self.keep not in KEEP:
            raise UserError(f'search.keep is "{self.keep}"; use random or likeliest.')
        marked = [t for t in (*self.pieces, self.template, self.joiner) if "${" in t]
        if marked:
            raise UserError(
                f'search.pieces or search.template holds "{marked[0]}": "${{" starts an OmegaConf '
                "interpolation, which every job's config would resolve again (an environment "
                'variable, another key) instead of rendering the text. Write it without "${".'
            )
        if "{pieces}" not in self.template:
            raise UserError(
                f'search.template "{self.template}" has no {{pieces}}: write where the drawn '
                'pieces go, e.g. "{pieces}, architectural photograph".'
            )

    def draw(self, genome: Sequence[float], rng: np.random.Generator) -> list[int]:
        """Indices of the kept pieces, in list order."""
        p = np.asarray(genome, dtype=float)
        drawn = np.flatnonzero(rng.random(p.size) < p)
        if drawn.size == 0:
            return [int(np.argmax(p))]
        if drawn.size > self.k:
            if self.keep == "random":
                drawn = np.sort(rng.choice(drawn, size=self.k, replace=False))
            else:
                order = np.argsort(-p[drawn], kind="stable")
                drawn = np.sort(drawn[order[: self.k]])
        return [int(i) for i in drawn]

    def prompt(self, indices: Sequence[int]) -> str:
        return self.template.replace("{pieces}", self.joiner.join(self.pieces[i] for i in indices))


def draw_rng(seed: int, generation: int, individual: int, repeat: int) -> np.random.Generator:
    """The generator of one evaluation's draw (its pieces)."""
    return np.random.default_rng([seed, generation, individual, repeat, 0])


def image_seed(seed: int, generation: int, individual: int, repeat: int) -> int:
    """The image seed of one evaluation (genart's `seed=`), independent of its pieces' draw."""
    state = np.random.SeedSequence([seed, generation, individual, repeat, 1]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)
