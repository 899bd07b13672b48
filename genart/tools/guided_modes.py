"""How far each cheaper CLIP-guidance mode gets against the exact one, on sdxl_tiny, over seeds.

`python -m genart.tools.guided_modes [--seeds 4] [--steps 8] [--out F.json]`

The modes that change the algorithm on purpose (TAESD decoding, guiding every k-th step, LCM in 4
steps) trade objective for speed; genart.tools.guided_bench times them on the real architecture,
this measures what they reach. Each run renders the same prompt from the same seed; its final
image's objective is averaged over fixed seeded draws of the cutouts, so runs compare on the same
views. Lower is better; `plain` (no guidance) is the floor to beat.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

BASE = [
    "generator=sdxl_tiny",
    "guide=clip_tiny",
    "logger=none",
    "precision=fp32",
    "size=[48,32]",
    "cutouts.cutn=16",
    "prompts.text=a lighthouse in a storm",
]
SCALE = "clip_guidance.scale=10000"


def modes(steps: int) -> dict[str, list[str]]:
    euler = [f"generator.sampler.steps={steps}"]
    return {
        "plain": euler,
        "exact": [*euler, SCALE],
        "taesd": [*euler, SCALE, "clip_guidance.decoder=taesd"],
        "every=2": [*euler, SCALE, "clip_guidance.every=2"],
        "lcm, 4 steps": [
            "generator.sampler.scheduler=LCMScheduler",
            "generator.sampler.cfg_scale=1.5",
            "generator.sampler.steps=4",
            SCALE,
        ],
    }


def build_run(overrides: list[str]):
    """The run as genart.render builds it (models, updater, objective), without its loop."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from genart.render import Run, build, build_objective, embed_targets

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run = Run(run_dir=Path("."), config={}, meta={})
    build(cfg, run)
    run.objective = build_objective(run, embed_targets(run), {})
    return run


def sample(run):
    """Every denoising step, as render's loop takes them; the final latents."""
    for step in range(run.steps):
        run.updater.step(run.objective, run.generator, step)
    return run.updater.sampler.latents.detach().clone()


def final_objective(run, draws: int = 8) -> float:
    """The objective of the run's image, averaged over fixed seeded draws of the cutouts, so two
    runs are measured on the same views."""
    import torch

    with torch.no_grad():
        image, totals = run.generator(), []
        for k in range(draws):
            torch.manual_seed(100 + k)
            totals.append(float(run.objective(image, run.steps - 1)[0]))
    return sum(totals) / draws


def reached(overrides: list[str]) -> float:
    run = build_run([*BASE, *overrides])
    sample(run)
    return final_objective(run)


def compare(seeds: int, steps: int) -> dict:
    rows = {}
    for name, overrides in modes(steps).items():
        per_seed = [reached([*overrides, f"seed={s}"]) for s in range(seeds)]
        rows[name] = {"per_seed": per_seed, "mean": statistics.fmean(per_seed)}
    plain, exact = rows["plain"]["per_seed"], rows["exact"]["per_seed"]
    for row in rows.values():
        # the share of exact guidance's gain over plain sampling this mode keeps, per seed
        kept = [(p - m) / (p - e) for p, m, e in zip(plain, row["per_seed"], exact, strict=True)]
        row["gain_kept"] = statistics.fmean(kept)
    return {"seeds": seeds, "steps": steps, "scale": float(SCALE.split("=")[1]), "modes": rows}


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="Euler steps of the non-LCM modes")
    parser.add_argument("--out", default="outputs/guided_modes.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: a second thread only waits
    report = compare(args.seeds, args.steps)
    print(f"final objective on sdxl_tiny, {args.seeds} seeds (lower is better)")
    print(f"{'mode':<14}{'mean':>9}{'gain kept':>11}  per seed")
    for name, row in report["modes"].items():
        seeds = " ".join(f"{v:.4f}" for v in row["per_seed"])
        print(f"{name:<14}{row['mean']:>9.4f}{row['gain_kept']:>10.0%}   {seeds}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
