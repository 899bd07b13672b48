"""`python -m genart.curate <sweep dir> --min-score S`: keep the images scoring at least S, cluster
them by visual style (VGG16, UMAP, DBSCAN), deduplicate the largest style clusters by meaning
(CLIP, UMAP, DBSCAN; the best-scoring image of each cluster stays) and lay the kept ones out as a
book, after the "Gallery of Unseen" post (docs/curate.md)."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genart.errors import UserError


@dataclass(frozen=True)
class Candidate:
    path: Path  # the image
    score: float
    prompt: str
    scorer: dict  # result.json's {name, range}, when the job recorded it
    search: dict = field(default_factory=dict)  # a search's generation, individual, repeat


def read_sweep(sweep_dir: Path) -> list[Candidate]:
    """Every finished, scored image of a sweep dir: from its search.db when an evolutionary
    search wrote one (it alone holds the sampled prompts), else from its job folders."""
    from genart.search.store import FILENAME
    from genart.tools.sweep_dirs import job_dirs, read_job

    if (sweep_dir / FILENAME).is_file():
        return read_search(sweep_dir)
    found = []
    for job in map(read_job, job_dirs(sweep_dir)):
        image = job["dir"] / "final.png"
        if job["status"] == "ok" and job["score"] is not None and image.is_file():
            prompt = prompt_of(image, job["overrides"])
            found.append(Candidate(image, job["score"], prompt, job.get("scorer") or {}))
    return found


def read_search(sweep_dir: Path) -> list[Candidate]:
    """The search.db evaluations with status ok, a score and an image that exists, each with
    the exact prompt the search sampled (a job's result.json only has its override)."""
    from genart.search.store import FILENAME, read_evaluations
    from genart.tools.sweep_dirs import read_json

    try:
        evaluations = read_evaluations(sweep_dir / FILENAME)
    except sqlite3.Error as err:
        raise UserError(f"cannot read {sweep_dir / FILENAME} ({err}).") from None
    found = []
    for row in evaluations:
        image = locate(row["image"], sweep_dir)
        if row["status"] == "ok" and row["score"] is not None and image is not None:
            result = read_json(Path(row["run_dir"]) / "result.json") if row["run_dir"] else {}
            scorer = result.get("scorer") or {}  # the DB has no scorer; the job's record does
            search = {k: row[k] for k in ("generation", "individual", "repeat")}
            found.append(Candidate(image, float(row["score"]), row["prompt"], scorer, search))
    return found


def locate(image: str | None, sweep_dir: Path) -> Path | None:
    """A recorded image path, if that file exists (a relative one: under the sweep dir first)."""
    if not image:
        return None
    path = Path(image)
    tries = [path] if path.is_absolute() else [sweep_dir / path, path]
    return next((p for p in tries if p.is_file()), None)


def relative_image(image: Path, sweep_dir: Path) -> str:
    """The image's path relative to the sweep dir (a search may record absolute paths)."""
    try:
        return image.relative_to(sweep_dir).as_posix()
    except ValueError:
        return Path(os.path.relpath(image.resolve(), sweep_dir.resolve())).as_posix()


def prompt_of(image: Path, overrides: list[str]) -> str:
    """The prompt final.png records in its text chunk, else the run's overrides."""
    from PIL import Image

    with Image.open(image) as im:
        recorded = getattr(im, "text", {}).get("prompts")
    return recorded or " ".join(overrides)


def passing(candidates: list[Candidate], min_score: float, sweep_dir: Path) -> list[Candidate]:
    """Those scoring at least min_score; none is a UserError saying what the scores were."""
    kept = [c for c in candidates if c.score >= min_score]
    if kept:
        return kept
    if not candidates:
        from genart.search.store import FILENAME

        expected = (
            f"its {FILENAME} has no evaluation with status ok, a score and an existing image"
            if (sweep_dir / FILENAME).is_file()
            else "expected numbered job folders with final.png and result.json, as "
            "`python -m genart -m ...` writes"
        )
        raise UserError(f"{sweep_dir} holds no finished, scored image: {expected}.")
    low, high = min(c.score for c in candidates), max(c.score for c in candidates)
    scorers = {f"{c.scorer.get('name')} (range {c.scorer.get('range')})" for c in candidates}
    scored_by = f" (scored by {', '.join(sorted(scorers))})" if candidates[0].scorer else ""
    raise UserError(
        f"no image in {sweep_dir} scores at least --min-score {min_score:g}: its {len(candidates)} "
        f"scores run from {low:.4g} to {high:.4g}{scored_by}. The default 6 is the post's NIMA cut "
        "(scores 1-10); pick a cut in your scorer's range, e.g. --min-score "
        f"{(low + high) / 2:.3g}."
    )


def build_guide(name: str, overrides: list[str]):
    """A conf/guide option (clip_vitb32, clip_tiny, …) built as `python -m genart guide=NAME`."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from genart.pretrained import PretrainedNotFound, find_pretrained_nodes, resolve_pretrained

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"guide={name}", *overrides])
    guide = {"guide": OmegaConf.to_container(cfg.guide, resolve=True)}
    for key, node in find_pretrained_nodes(guide):  # the guide's files only, never the generator's
        try:
            node["path"] = str(resolve_pretrained(node, key))
        except PretrainedNotFound as err:
            raise UserError(
                f"{err}. With genart.curate: --guide-override {key}.path=/path/to/file (or try "
                "the pipeline with --guide clip_tiny, a random CLIP)."
            ) from None
    return instantiate(OmegaConf.create(guide).guide)


def style_labels(paths: list[Path], args) -> tuple[np.ndarray, np.ndarray]:
    """Style cluster labels (N,) and their 2-d UMAP points (N, 2)."""
    from genart.curation import clusters, features

    weights = None if args.vgg_random_seed is not None else features.vgg_weights(args.vgg_weights)
    vgg = features.build_vgg16(args.vgg_layer, weights, args.vgg_random_seed)
    embedded = features.embed_style(paths, vgg, args.vgg_size, args.style_input == "per-image")
    params = cluster_params(args, "style")
    points = clusters.project(embedded, params)
    return clusters.cluster(points, params), points


def semantic_labels(paths: list[Path], args) -> tuple[np.ndarray, np.ndarray]:
    """Semantic cluster labels (N,) from the guide's CLIP image embeddings, and their points."""
    from genart.curation import clusters, features

    if not paths:
        return np.zeros(0, dtype=int), np.zeros((0, 2))
    guide = build_guide(args.guide, args.guide_override)
    embedded = features.embed_meaning(paths, guide.encode_image, guide.input_size)
    params = cluster_params(args, "semantic")
    points = clusters.project(embedded, params)
    return clusters.cluster(points, params), points


def cluster_params(args, stage: str):
    from genart.curation.clusters import ClusterParams

    return ClusterParams(
        n_neighbors=getattr(args, f"{stage}_neighbors"),
        min_dist=args.umap_min_dist,
        eps=getattr(args, f"{stage}_eps"),
        min_samples=getattr(args, f"{stage}_min_samples"),
        seed=args.seed,
    )


def curate(args) -> dict[str, Path]:
    """Cluster, deduplicate and write every output into args.out; returns them by name."""
    from genart.curation import clusters

    candidates = passing(read_sweep(args.sweep_dir), args.min_score, args.sweep_dir)
    style, style_points = style_labels([c.path for c in candidates], args)
    chosen = np.flatnonzero(np.isin(style, list(clusters.top_clusters(style, args.style_clusters))))
    meaning, meaning_points = semantic_labels([candidates[i].path for i in chosen], args)
    kept = clusters.keep_best(meaning, [candidates[i].score for i in chosen])
    rows = [
        {"image": relative_image(c.path, args.sweep_dir), "path": c.path, "score": c.score,
         "prompt": c.prompt, "style_cluster": int(style[i]), "semantic_cluster": "", "kept": False,
         **c.search}
        for i, c in enumerate(candidates)
    ]  # fmt: skip
    for j, i in enumerate(chosen):
        rows[i].update(semantic_cluster=int(meaning[j]), kept=bool(kept[j]))
    return write_outputs(args, rows, (style_points, style), (meaning_points, meaning))


def write_outputs(args, rows: list[dict], style_plot, meaning_plot) -> dict[str, Path]:
    from genart.curation import book, sheets

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    written = {"clusters.csv": sheets.write_csv(out / "clusters.csv", rows)}
    for page in sheets.write_sheets(out, rows):
        written[page.name] = page
    written["umap_style.png"] = sheets.write_scatter(out / "umap_style.png", *style_plot, "style")
    if len(meaning_plot[0]):
        written["umap_semantic.png"] = sheets.write_scatter(
            out / "umap_semantic.png", *meaning_plot, "meaning (chosen style clusters)"
        )
    if args.book_size > 0:
        plates = sorted((r for r in rows if r["kept"]), key=lambda r: -r["score"])
        written["book.pdf"] = book.write_book(
            out / "book.pdf", args.title, plates[: args.book_size], caption_writer(args)
        )
    return written


def caption_writer(args):
    from genart.curation.book import OpenAICaptions, TemplateCaptions

    if args.captions == "openai":
        if not (args.captions_url and args.captions_model):
            raise UserError("--captions openai needs --captions-url and --captions-model.")
        return OpenAICaptions(args.captions_url, args.captions_model, args.captions_key_env)
    return TemplateCaptions(args.caption_template)


def parser() -> argparse.ArgumentParser:
    """Every parameter, with the post's values where it gives them (else the libraries')."""
    p = argparse.ArgumentParser(prog="python -m genart.curate", description=__doc__)
    p.add_argument("sweep_dir", type=Path, help="a sweep's folder (numbered job folders)")
    p.add_argument("--min-score", type=float, default=6.0, help="the post's NIMA cut (1-10)")
    p.add_argument("--out", type=Path, help="default: <sweep dir>/curation")
    p.add_argument("--seed", type=int, default=0, help="UMAP's random state")
    p.add_argument("--umap-min-dist", type=float, default=0.0, help="0: tight clusters")
    style = p.add_argument_group("style clusters (VGG16 -> UMAP -> DBSCAN)")
    style.add_argument("--vgg-layer", type=int, default=16,
                       help="keep vgg16().features[:N]; 16 ends at relu3_3 (index 15), the "
                            "post's '16th layer'")  # fmt: skip
    style.add_argument(
        "--vgg-weights", help="torchvision's vgg16-397923af.pth (else cache/download)"
    )
    style.add_argument("--vgg-random-seed", type=int, help="seeded random weights (tests)")
    style.add_argument("--vgg-size", type=int, default=224, help="VGG16's input side (ImageNet's)")
    style.add_argument("--style-input", choices=["imagenet", "per-image"], default="imagenet",
                       help="per-image: remove each image's colour and contrast (random weights)")  # fmt: skip
    style.add_argument("--style-clusters", type=int, default=3, help="largest ones kept (post: 3)")
    style.add_argument("--style-neighbors", type=int, default=15)
    style.add_argument("--style-eps", type=float, default=1.0, help="DBSCAN eps, UMAP units")
    style.add_argument("--style-min-samples", type=int, default=5)
    meaning = p.add_argument_group("semantic deduplication (CLIP -> UMAP -> DBSCAN)")
    meaning.add_argument("--guide", default="clip_vitb32", help="a conf/guide option")
    meaning.add_argument("--guide-override", action="append", default=[],
                         help="e.g. guide.models.vitb32.pretrained.path=/path/to/file")  # fmt: skip
    meaning.add_argument("--semantic-neighbors", type=int, default=15)
    meaning.add_argument("--semantic-eps", type=float, default=1.0)
    meaning.add_argument("--semantic-min-samples", type=int, default=5)
    bk = p.add_argument_group("book.pdf")
    bk.add_argument("--book-size", type=int, default=150, help="best kept images; 0: no book")
    bk.add_argument("--title", default="Gallery of Unseen")
    bk.add_argument("--captions", choices=["template", "openai"], default="template")
    bk.add_argument("--caption-template", default="{prompt} (score {score:.2f})")
    bk.add_argument(
        "--captions-url", help="an OpenAI-compatible API, e.g. https://api.openai.com/v1"
    )
    bk.add_argument("--captions-model")
    bk.add_argument("--captions-key-env", default="OPENAI_API_KEY", help="the key's env variable")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out = args.out or args.sweep_dir / "curation"
    try:
        written = curate(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
