"""The one optimisation loop: build the parts from the config, optimise θ, record, return a score.

This is the only module that calls `instantiate`; it never names a generator, guide, loss or
updater. A step is `updater.step(objective, generator, step)` (genart.updaters, genart.objective).
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from genart.errors import UserError


@dataclass
class Run:
    """What callbacks see of a run."""

    run_dir: Path
    config: dict
    meta: dict
    generator: object = None
    guide: object = None
    cutouts: object = None
    schedule: object = None
    losses: dict = field(default_factory=dict)
    updater: object = None
    objective: object = None  # genart.objective.Objective, built once the targets are embedded
    callbacks: list = field(default_factory=list)
    start_step: int = 0
    step: int = 0
    steps: int = 0  # how many steps the loop runs (total_steps)
    env: dict = field(default_factory=dict)
    autocast: object = None
    # reuse this process's kept models (genart.model_cache): render() sets it from cache_models;
    # a tool holding several runs at once leaves it off, as kept models are shared
    keep_models: bool = False


def build(cfg: DictConfig, run: Run) -> None:
    """Instantiate generator, guide, cutouts, prompts, losses, updater and callbacks."""
    import torch
    from hydra.utils import instantiate

    from genart.runtime import (
        environment,
        keep_freed_memory,
        pick_device,
        seed_everything,
        set_threads,
    )
    from genart.speed.kernels import kernel_plan
    from genart.speed.precision import (
        apply_precision,
        compile_models,
        dtype_of,
        resolve_precision,
    )

    threads = set_threads(cfg.get("threads"))
    device = pick_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()
    precision = resolve_precision(cfg.precision, device)
    run.env = environment(device, precision, threads)
    seed_everything(cfg.seed)
    plan = kernel_plan(device, dtype_of(precision))  # result.json records it (runtime.environment)

    def ready(model):  # moved, at its precision, compiled: what the model cache keeps
        apply_precision([model], precision, plan)
        if cfg.get("compile"):
            compile_models([model])
        return model

    context = {"device": str(device), "precision": precision, "plan": repr(plan)}
    context["compile"] = bool(cfg.get("compile"))
    run.generator = load_model(cfg, run, "generator", context, lambda m: ready(m.to(device)))
    run.guide = load_model(cfg, run, "guide", context, lambda m: ready(m.to(device)))
    run.autocast = autocast_for(device, precision, run.generator)
    run.cutouts = ready(
        instantiate(cfg.cutouts, cut_size=cfg.cutouts.get("cut_size") or run.guide.input_size)
    )
    run.schedule = instantiate(cfg.prompts, _convert_="all")
    run.losses = {
        name: instantiate(node).to(device) for name, node in cfg.losses.items() if node is not None
    }
    if not run.losses:
        raise UserError(
            "Every loss is switched off (losses.<name>: null). Keep at least losses.prompt."
        )
    run.updater = instantiate(cfg.updater)(generator=run.generator, autocast=run.autocast)
    run.steps = total_steps(run.updater, cfg.steps)
    from genart.callbacks import callback_nodes

    run.callbacks = [instantiate(node) for node in callback_nodes(cfg)]
    torch.set_grad_enabled(True)


def load_model(cfg: DictConfig, run: Run, role: str, context: dict, prepare):
    """`prepare(instantiate(cfg[role]))`, or this process's kept one (genart.model_cache)."""
    from hydra.utils import instantiate

    from genart import model_cache

    node = cfg[role]
    return model_cache.load(
        role,
        OmegaConf.to_container(node, resolve=True),
        context,
        lambda: prepare(instantiate(node)),
        enabled=run.keep_models,
    )


def total_steps(updater, steps: int) -> int:
    """The updater's own step count if it has one (a sampler's denoising steps), else `steps`."""
    own = getattr(updater, "total_steps", None)
    return int(own(steps)) if callable(own) else int(steps)


def autocast_for(device, precision: str, generator=None):
    """Autocast for a generator without its own `set_precision` hook; else nothing to do.

    Models with the hook cast their frozen weights once (genart.speed.precision): faster than
    autocast here, and cutouts, losses and distances stay fp32 either way.
    """
    import torch

    from genart.speed.precision import dtype_of, has_precision_hook, resolve_precision

    dtype = dtype_of(resolve_precision(precision, device))
    if dtype == torch.float32 or has_precision_hook(generator):
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def embed_targets(run: Run) -> list:
    """Per guide model, the (P, D) embeddings of every prompt (texts cached by the guide)."""
    import torch
    import torch.nn.functional as F

    from genart.images import load_image

    prompts, size = run.schedule.prompts, run.guide.input_size
    texts = [p.text for p in prompts if not p.is_image]
    text_embeds = run.guide.encode_text(texts) if texts else None
    per_model, t = [[] for _ in run.guide.model_weights], 0
    for prompt in prompts:
        if prompt.is_image:
            device = next(iter(run.generator.theta())).device
            image = load_image(prompt.text, "prompts.images").to(device)
            pixels = F.interpolate(image, (size, size), mode="bilinear", antialias=True)
            with torch.no_grad():
                rows = run.guide.encode_image(pixels)
            for m, row in enumerate(rows):
                per_model[m].append(row[0])
        else:
            for m, embeds in enumerate(text_embeds):
                per_model[m].append(embeds[t])
            t += 1
    return [torch.stack(rows).float().detach() for rows in per_model]


def apply_init(cfg: DictConfig, run: Run) -> dict:
    """Encode the init image (a file, or one made in code by `init.make`) into θ."""
    import torch

    start_from_latent(cfg, run)
    image = load_init_image(cfg.init, run.generator.size)
    if image is None:
        record_start_latent(cfg, run)
        return {}
    unused = getattr(run.updater, "init_unused", None)  # an updater that starts θ its own way
    if unused:
        import warnings

        warnings.warn(unused, stacklevel=2)
    with torch.no_grad():
        run.generator.encode(image.to(run.generator.theta()[0].device))
        init_image, latent = run.generator(), run.generator.latent()
    return {
        "init_latent": None if latent is None else latent.detach().clone(),
        "init_image": init_image.detach(),
    }


def start_from_latent(cfg: DictConfig, run: Run) -> None:
    """`init.start_latent=<file>` (safetensors, key `start_latent`) replaces the latent the
    generator drew (a kept generator's `new_run()` draw too); the seed still drives the rest."""
    value = cfg.init.get("start_latent")
    if not value:
        return
    from genart.safety import start_latent_file

    path, name = start_latent_file(str(value)), type(run.generator).__name__
    owner = start_latent_owner(run)
    if owner is None:
        why = (
            f"the generator {name} has no start latent (no set_start_latent)"
            if not hasattr(run.generator, "set_start_latent")
            else f"this run's updater ({type(run.updater).__name__}) starts from its own noise"
        )
        raise UserError(
            f"init.start_latent={value} cannot be used: {why}. Use a generator with a spatial "
            "starting latent (vqgan, pixels, or sdxl), or leave init.start_latent unset."
        )
    owner.set_start_latent(read_start_latent(path), f"init.start_latent={value}")


def start_latent_owner(run: Run):
    """Who draws the latent the run starts from: an updater with its own start (diffusion
    sampling: its noise), else the generator (θ's first value); None when neither has one."""
    if hasattr(run.updater, "set_start_latent"):
        return run.updater
    if getattr(run.updater, "init_unused", None) or not hasattr(run.generator, "set_start_latent"):
        return None
    return run.generator


def read_start_latent(path: Path):
    """The `start_latent` tensor of a safetensors file (never unpickled), or a UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))["start_latent"]
    except (OSError, SafetensorError, KeyError) as err:
        raise UserError(
            f"init.start_latent: cannot read a start latent from {path} ({err}). Give the "
            "start_latent.safetensors a run wrote into its run dir (or a preset's "
            "<name>.start_latent.safetensors)."
        ) from None


def record_start_latent(cfg: DictConfig, run: Run) -> None:
    """start_latent.safetensors in the run dir: the latent θ started from (kept on resume)."""
    from safetensors.torch import save_file

    owner = start_latent_owner(run)
    latent = None if owner is None else owner.start_latent()
    path = Path(run.run_dir) / "start_latent.safetensors"
    if latent is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"start_latent": latent.detach().cpu().contiguous()}, str(path))


def load_init_image(init: DictConfig, size: tuple[int, int]):
    """(1, 3, H, W) in [0, 1] or None; `init.blur` softens an edited image (the Doorways post's surgery; docs/references.md)."""
    from hydra.utils import instantiate

    from genart.images import load_image

    if init.get("required") and not (init.get("image") or init.get("make")):
        raise UserError(
            "This preset starts from an image you give it: set init.image=<path> (e.g. an earlier "
            "run's final.png after your edits)."
        )
    if init.get("make"):
        image = instantiate(init.make)(width=size[0], height=size[1])
    elif init.get("image"):
        image = load_image(init.image, "init.image")
    else:
        return None
    if init.get("blur"):
        from genart.losses import gaussian_blur  # the symmetry losses' blur: one kernel radius

        image = gaussian_blur(image, float(init.blur))
    return image


def build_objective(run: Run, targets: list, init: dict):
    """The run's one objective, given what only the run knows: θ's latent and the init (if any).

    Building it refuses, in one paragraph, a weighted loss that needs what this run lacks.
    """
    from genart.objective import Objective

    providers = {name: constant(value) for name, value in init.items() if value is not None}
    if run.generator.latent() is not None:
        providers["latent"] = lambda ctx: run.generator.latent()
    return Objective(run.cutouts, run.guide, run.schedule, run.losses, targets, providers)


def constant(value):
    """A provider that makes the same value at every step."""
    return lambda ctx: value


def guided_step(run: Run, step: int) -> dict:
    """One update of θ by the run's updater; returns the loss terms and what the stats need."""
    return run.updater.step(run.objective, run.generator, step)


def check_finite(out: dict, step: int, run: Run) -> None:
    """Stop before saving anything if the loss went NaN/inf, naming the term and what is saved."""
    import torch

    if bool(torch.isfinite(out["total"])):
        return
    bad = [name for name, value in out["terms"].items() if not bool(torch.isfinite(value))]
    fix = nan_advice(run.updater)
    saved = saved_step(Path(run.run_dir) / "checkpoint.pt")
    if saved is None:
        after = (
            f"Nothing has been saved yet, so there is nothing to resume: {fix}, and start again."
        )
    else:
        after = (
            f"{run.run_dir} keeps the frames and checkpoint.pt of step {saved}; `python -m genart "
            f"resume={run.run_dir}` continues from there with this run's settings. To change "
            f"them, {fix}, in a new run."
        )
    raise UserError(
        f"The loss was NaN/inf at step {step} (term: {', '.join(bad) or 'total'}). Nothing from "
        f"this step was saved. {after}"
    )


def nan_advice(updater) -> str:
    """What to change after a NaN: the updater's own setting (if it names one), then any run's."""
    own = getattr(updater, "advice_on_nan", None)
    return f"{own + ', ' if own else ''}lower that term's weight, or use precision=fp32"


def saved_step(path: Path) -> int | None:
    """The step of a run's checkpoint.pt, or None when there is none (or it is unreadable)."""
    from genart.files import load_untrusted

    try:
        return int(load_untrusted(path, "checkpoint")["step"])
    except (UserError, KeyError, TypeError, ValueError):  # never torch's own advice
        return None


def current_image(run: Run):
    """A renderer of the present image, computed at most once per step and only if asked for."""
    import torch

    cache = []

    def draw():
        if not cache:
            with torch.no_grad(), run.autocast():
                cache.append(run.generator().float())
        return cache[0]

    return draw


def optimise(cfg: DictConfig, run: Run) -> None:
    """The loop: steps, progress bar (loss refreshed every log_every), callbacks."""
    from tqdm.auto import tqdm

    # a context, so an error mid-run closes the bar (ending its line) before the message prints
    with tqdm(total=run.steps, initial=run.start_step, desc="genart", dynamic_ncols=True) as bar:
        for step in range(run.start_step, run.steps):
            out = guided_step(run, step)
            run.step = done = step + 1
            log = done % cfg.log_every == 0 or done == run.steps
            save = done % cfg.save_every == 0 or done == run.steps
            if log or save:
                check_finite(out, done, run)
            report = {**out, "step": done, "log": log, "save": save, "image": current_image(run)}
            for callback in run.callbacks:
                callback.on_step(report)
            bar.update(1)
            if log:
                bar.set_postfix(loss=f"{float(out['total'].detach()):.4f}")


def score_image(run: Run, image, targets: list, step: int, n_views: int, seed: int) -> float:
    """Weighted prompt similarity over fixed, seeded evaluation views; negative prompts excluded."""
    import torch

    from genart.objective import mean_similarity

    num = den = 0.0
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        seen = 0
        while seen < n_views:
            views = run.cutouts(image, step)
            embeds = [e.float() for e in run.guide.encode_image(views.pixels)]
            sims = mean_similarity(run.guide, embeds, targets)
            W = run.schedule.weights(step, views, sims)[0].clamp(min=0)
            num, den, seen = num + float((W * sims).sum()), den + float(W.sum()), seen + len(sims)
    return num / den if den > 0 else math.nan


def resume_from_checkpoint(run: Run) -> None:
    """θ, updater, RNG and callbacks' state from checkpoint.pt; a file genart cannot use is a UserError."""
    from genart.callbacks.checkpoint import WHAT, load_checkpoint_into
    from genart.files import unreadable
    from genart.runtime import set_rng_state

    path = Path(run.run_dir) / "checkpoint.pt"
    if not path.exists():
        raise UserError(
            f"resume={run.run_dir} has no checkpoint.pt to continue from; start a new run."
        )
    payload = load_checkpoint_into(path, run.generator, run.updater, run.steps)
    try:
        set_rng_state(payload["rng"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise unreadable(path, WHAT, f"its random number states are malformed ({err})") from None
    saved = payload.get("callbacks", {})
    for callback in run.callbacks:
        if hasattr(callback, "load_checkpoint_state"):
            callback.load_checkpoint_state(saved.get(type(callback).__name__), path)
    run.start_step = run.step = payload["step"]


def render(cfg: DictConfig, run_dir: Path, meta: dict | None = None, resume: bool = False) -> float:
    """Render one image into `run_dir`; return its score (higher is better)."""
    from genart.pretrained import resolve_all_pretrained

    cfg = resolve_all_pretrained(cfg)
    run = Run(run_dir=Path(run_dir), config=OmegaConf.to_container(cfg), meta=meta or {})
    run.keep_models = bool(cfg.get("cache_models"))  # a run saved before the key: load per job
    build(cfg, run)
    init = apply_init(cfg, run)
    if resume:
        resume_from_checkpoint(run)
    targets = embed_targets(run)
    run.objective = build_objective(run, targets, init)
    for callback in run.callbacks:
        callback.on_start(run)
    try:
        optimise(cfg, run)
    except BaseException:
        for callback in run.callbacks:
            callback.on_abort()
        raise
    return finish(cfg, run, targets)


def finish(cfg: DictConfig, run: Run, targets: list) -> float:
    """final.png (config in its text chunks), score, callbacks' end, result.json."""
    from genart.images import save_png
    from genart.scorers import describe

    image = current_image(run)()
    rendered = OmegaConf.merge(cfg, {"resume": None})  # a resumed run's image is the same image
    text = {
        "prompts": " | ".join(run.schedule.texts),
        "seed": str(cfg.seed),
        "config": OmegaConf.to_yaml(rendered),
    }
    save_png(image, run.run_dir / "final.png", text)
    scorer = build_scorer(cfg, run, targets, image.device)
    score = scorer.score(image)
    report = {"step": run.step, "score": score, "image": lambda: image}
    for callback in run.callbacks:  # one dict: each may add what later ones read (video, totals)
        callback.on_end(report)
    write_result(
        run.run_dir, cfg, run.meta, "ok", score=score, env=run.env, steps=run.steps,
        scorer=describe(scorer),
    )  # fmt: skip
    return score


def build_scorer(cfg: DictConfig, run: Run, targets: list, device):
    """conf/scorer's scorer; one that judges by the prompts gets this run's (`score_image`).

    A run saved before scorers existed (resume=) has no `scorer` node: it keeps clip_prompt."""
    from genart.scorers import CLIPPromptScorer

    def prepare(scorer):
        return scorer.to(device) if hasattr(scorer, "to") else scorer

    if cfg.get("scorer"):
        scorer = load_model(cfg, run, "scorer", {"device": str(device)}, prepare)
    else:
        scorer = CLIPPromptScorer(cfg.score.views, cfg.score.seed)
    if hasattr(scorer, "bind"):
        scorer.bind(
            lambda image, n_views, seed: score_image(
                run, image, targets, run.steps - 1, n_views, seed
            )
        )
    return scorer


def write_result(
    run_dir: Path,
    cfg: DictConfig,
    meta: dict,
    status: str,
    score: float | None = None,
    error: str | None = None,
    env: dict | None = None,
    steps: int | None = None,
    scorer: dict | None = None,
) -> None:
    """result.json, the one record sweeps, galleries and presets read (ok and failed runs alike).

    `steps`: the steps the run ran (a sampler's own count), when known; else the config's.
    `scorer`: the name and range of what gave the score; else the config's scorer node says."""
    result = {
        "status": status,
        "score": None if score is None or math.isnan(score) else score,
        "scorer": scorer or scorer_of(cfg),
        "seed": cfg.get("seed"),
        "steps": cfg.get("steps") if steps is None else steps,
        "overrides": meta.get("overrides", []),
        "error": error,
        **(env or {}),
    }
    (Path(run_dir) / "result.json").write_text(json.dumps(result, indent=2))


def scorer_of(cfg: DictConfig) -> dict | None:
    """{name, range} of the config's scorer node (a failed run has no scorer built), or None."""
    node = cfg.get("scorer")
    if not node or node.get("range") is None:
        return None
    return {"name": node.get("name"), "range": list(OmegaConf.to_container(node.range))}
