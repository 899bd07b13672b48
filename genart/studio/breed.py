"""The next generation from the user's picks: children's start latents, their lineage, and the
genart sweep that renders them through the launcher the parents' sweep used.

Which operator makes child i (seeded by (seed, i)):
- with a click ("change here") and i even, or no favourites: local mutation of the clicked
  image's latent around the click;
- else with 2+ favourites: Voronoi crossover of the favourites, then a light plain mutation
  (surrogate.breed_child: with one parent the crossover alone would copy it);
- else (one favourite): plain mutation of it.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from genart.errors import UserError
from genart.studio import operators
from genart.studio.surrogate import breed_child

SKIP = ("seed", "init.start_latent", "resume")  # the children's own
SKIP_HYDRA = ("hydra.sweep.dir", "hydra.run.dir", "hydra.mode")


@dataclass
class Child:
    index: int
    operator: str  # local | crossover | plain
    parents: list[str]  # run dirs
    click: tuple[float, float] | None
    seed: int
    latent: torch.Tensor


def read_gene(run_dir: Path) -> torch.Tensor:
    """A run's start_latent.safetensors (safetensors only, never unpickled)."""
    from safetensors.torch import load_file

    path = Path(run_dir) / "start_latent.safetensors"
    if not path.is_file():
        raise UserError(
            f"{run_dir} has no start_latent.safetensors, so it cannot be bred: runs record one "
            "since genart's studio work (issue 17), except runs that start from an init image."
        )
    return load_file(str(path))["start_latent"]


def gene_kind(latent: torch.Tensor) -> str:
    return "tokens" if latent.dtype == torch.long else "gaussian"


def n_codes(run_dir: Path) -> int | None:
    """The codebook size of a VQGAN run (generator.n_embed), for token redraws."""
    config = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    value = OmegaConf.select(config, "generator.n_embed", default=None)
    return None if value is None else int(value)


def image_size(run_dir: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(Path(run_dir) / "final.png") as png:
        return png.size  # (width, height)


def plan_children(
    favourites: Sequence[Path],
    click: dict | None,
    n: int,
    seed: int,
    radius: float = 2.0,
    strength: float = 1.0,
    mutation: float = 0.25,
) -> list[Child]:
    """`n` children of the picks; `click` = {run, x, y} in image pixels, or None."""
    if not favourites and click is None:
        raise UserError("Pick at least one favourite, or click a point on an image, to breed from.")
    genes = {Path(p): read_gene(Path(p)) for p in favourites}
    if click is not None:
        genes.setdefault(Path(click["run"]), read_gene(Path(click["run"])))
    first = next(iter(genes))
    kind, codes = gene_kind(genes[first]), n_codes(first)
    children = []
    for i in range(n):
        rng = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        if click is not None and (i % 2 == 0 or not favourites):
            run = Path(click["run"])
            xy = (float(click["x"]), float(click["y"]))
            latent = operators.local_mutation(
                genes[run], xy, radius, strength, rng, kind, image_size(run), codes
            )
            children.append(Child(i, "local", [str(run)], xy, seed, latent))
        elif len(favourites) >= 2:
            parents = [genes[Path(p)] for p in favourites]
            latent = breed_child(parents, rng, mutation, kind, codes)
            children.append(Child(i, "crossover", [str(p) for p in favourites], None, seed, latent))
        else:
            latent = operators.plain_mutation(
                genes[Path(favourites[0])], mutation, rng, kind, codes
            )
            children.append(Child(i, "plain", [str(favourites[0])], None, seed, latent))
    return children


def write_genes(children: Sequence[Child], folder: Path) -> list[Path]:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for child in children:
        path = folder / f"child_{child.index:03d}.start_latent.safetensors"
        save_file({"start_latent": child.latent.contiguous()}, str(path))
        paths.append(path)
    return paths


def sweep_command(template_run: Path, genes: Sequence[Path], sweep_dir: Path) -> list[str]:
    """`python -m genart …` rendering each gene as one job of a new sweep: the template run's own
    overrides and launcher (its .hydra/), its seed, and `init.start_latent=<gene>,…`."""
    from genart.overrides import key_of, quote

    hydra = OmegaConf.load(Path(template_run) / ".hydra" / "hydra.yaml").hydra
    config = OmegaConf.load(Path(template_run) / ".hydra" / "config.yaml")
    task = [str(o) for o in hydra.overrides.task if key_of(str(o)) not in SKIP]
    launch = [str(o) for o in hydra.overrides.hydra if key_of(str(o)) not in SKIP_HYDRA]
    files = ",".join(quote(str(Path(g).resolve())) for g in genes)
    return [
        sys.executable, "-m", "genart", *task, *launch, f"seed={config.seed}",
        f"init.start_latent={files}", f"hydra.sweep.dir={quote(str(Path(sweep_dir).resolve()))}",
        "-m",
    ]  # fmt: skip


def shown(command: list[str]) -> str:
    return shlex.join(["python", *command[1:]])


# -- ranking by the user's taste (surrogate.py) ----------------------------------------------------
def fit_taste(seen: Sequence[Path], chosen: set[str], guide):
    """A Surrogate fitted on the CLIP embeddings of every image the user has seen (final.png of
    each run), chosen (ever ticked as a favourite) against not; unfitted with one class only."""
    from genart.images import load_image
    from genart.studio.previews import embed
    from genart.studio.surrogate import Surrogate

    runs = [Path(r) for r in seen if (Path(r) / "final.png").is_file()]
    with torch.no_grad():
        images = torch.cat([load_image(r / "final.png", "final.png") for r in runs])
        embeddings = embed(guide, images)
    return Surrogate().fit(embeddings, [str(r.resolve()) in chosen for r in runs])


def parent_models(run_dir: Path):
    """The run's own generator and guide, from its saved config, to preview and embed with."""
    from hydra.utils import instantiate

    config = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    return instantiate(config.generator).eval(), instantiate(config.guide).eval()


def rank_children(
    children: list[Child],
    favourites: Sequence[Path],
    surrogate,
    generator,
    guide,
    pool_factor: int = 4,
    mutation: float = 0.25,
) -> dict | None:
    """The crossover and plain children, replaced by the top of a pool `pool_factor` times as
    large, bred the same way and ranked by the surrogate on cheap previews of their starts
    (previews.py). Local children stay: they answer a click. Returns {scores, kept, pool}, or
    None when the surrogate learned nothing (nothing or everything chosen)."""
    from genart.studio.surrogate import breed_and_rank

    bred = [c for c in children if c.operator in ("crossover", "plain")]
    if not bred or not surrogate.fitted:
        return None
    genes = [read_gene(Path(p)) for p in favourites]
    kind, codes = gene_kind(genes[0]), n_codes(Path(favourites[0]))

    def breed(rng):
        if len(genes) >= 2:
            return breed_child(genes, rng, mutation, kind, codes)
        return operators.plain_mutation(genes[0], mutation, rng, kind, codes)

    k = len(bred)
    ranked = breed_and_rank(breed, pool_factor * k, k, bred[0].seed, surrogate, generator, guide)
    for child, latent in zip(bred, ranked.latents, strict=True):
        child.latent = latent
    return {"scores": [float(s) for s in ranked.scores], "kept": k, "pool": pool_factor * k}
