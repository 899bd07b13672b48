"""What a config must satisfy before anything heavy is built: one check per concern, each failing
with one paragraph (a UserError) that names the key and a valid example.

`check_config` runs on every job's composed (or resumed) config; `check_output_dir` runs on the
command line, before Hydra creates the run directory. No torch at import: only `check_device` asks
torch, inside the function.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from genart.errors import UserError
from genart.overrides import key_of

# Every top-level key some part of genart reads; any other key (`+stepz=5`) is refused instead of
# silently ignored. A feature that adds a top-level key or config group registers it here (later
# groups such as `scorer`, `search`, `clip_guidance` too); tests/test_user_errors.py checks that
# the composed default config has no key missing from this list.
TOP_LEVEL_KEYS = (
    # groups (conf/<group>/); `preset` only if a preset is not `# @package _global_`
    *("generator", "guide", "cutouts", "prompts", "losses", "optimizer", "updater"),
    *("callbacks", "logger", "scorer", "search"),
    *("preset", "refine"),
    # conf/config.yaml
    *("seed", "steps", "size", "device", "precision", "compile", "threads", "cache_models"),
    *("log_every", "save_every", "resume", "init", "security", "score", "clip_guidance"),
)

# A step holds at least this many image-sized fp32 tensors: θ (pixels), its gradient, Adam's two
# moments, the image and its gradient, the padded copy the cutouts crop from. A floor: VQGAN's
# decoder holds far more, so a size that passes may still run out of memory; one that fails can't fit.
IMAGE_COPIES = 8


class Rule(NamedTuple):
    """A number the config must hold: `key` ≥ `low`; `example` is a valid override."""

    key: str
    low: float | None  # None: no lower bound
    whole: bool  # a whole number (int), else any finite number
    meaning: str
    example: str
    nullable: bool = False


RULES = (
    Rule("seed", None, True, "the random seed", "seed=0 (a sweep: 'seed=range(0,8)' -m)"),
    Rule("steps", 0, True, "the number of optimisation steps", "steps=300"),
    Rule("log_every", 1, True, "how often (in steps) the bar and W&B update", "log_every=10"),
    Rule("save_every", 1, True, "how often (in steps) frames/ and checkpoint.pt are written",
         "save_every=50 (the last step is always saved)"),
    Rule("threads", 1, True, "the number of torch CPU threads", "threads=4, or threads=null for "
         "torch's default", nullable=True),
    Rule("cutouts.cutn", 1, True, "the number of views CLIP sees per step", "cutouts.cutn=32"),
    Rule("optimizer.lr", 0, False, "the optimiser's step size",
         "optimizer.lr=0.1 (the doorway presets use 0.025)"),
    Rule("init.blur", 0, False, "the blur sigma in px for the init image (0 = none)",
         "init.blur=2.0", nullable=True),
)  # fmt: skip
_ABSENT = object()  # a key the config does not have (None is a value: `threads: null`)


def check_config(cfg: DictConfig) -> None:
    """Every check, cheap ones first; the first problem found is raised."""
    checks = (check_known_keys, check_numbers, check_size, check_cutouts, check_losses)
    for check in (*checks, check_clip_guidance, check_start_latent):
        check(cfg)
    check_device(cfg)  # last: the only one that imports torch


def check_known_keys(cfg: DictConfig) -> None:
    """A top-level key nobody reads (`+stepz=5`) would be silently ignored: refuse it."""
    for key in cfg:
        if key in TOP_LEVEL_KEYS:
            continue
        value = OmegaConf.select(cfg, str(key), throw_on_resolution_failure=False)
        typed = f"+{key}={show(value)}" if not isinstance(value, DictConfig) else f"+{key}.…"
        close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
        hint = f"Did you mean {close[0]}, e.g. {close[0]}={show(value)}? " if close else ""
        raise UserError(
            f"{typed} sets a top-level key that no part of genart reads, so it would be silently "
            f"ignored. {hint}The top-level keys are: {', '.join(TOP_LEVEL_KEYS)}."
        )


def check_numbers(cfg: DictConfig) -> None:
    """Each RULES entry: the right kind of number, finite, at least its lower bound."""
    for rule in RULES:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT)
        if value is _ABSENT or (value is None and rule.nullable):
            continue  # a part without this key (e.g. an optimiser without lr) decides for itself
        if not _number_ok(value, rule):
            kind = "a whole number" if rule.whole else "a finite number"
            bound = f" ≥ {rule.low}" if rule.low is not None else ""
            null = ", or null" if rule.nullable else ""
            raise UserError(
                f"{rule.key}={show(value)} is not allowed: {rule.key} is {rule.meaning} and must "
                f"be {kind}{bound}{null}. Set it like {rule.example}."
            )


def check_size(cfg: DictConfig) -> None:
    """size = [width, height], both ≥ 1 px, and small enough for a step's image tensors to fit."""
    size = cfg.get("size")
    if not (
        isinstance(size, (list, ListConfig))
        and len(size) == 2
        and all(_is_int(s) and s >= 1 for s in size)
    ):
        raise UserError(
            f"size={show(size)} is not allowed: size is [width, height] in pixels, two whole "
            "numbers ≥ 1. Set it like 'size=[256,256]' (quoted, so the shell leaves the brackets)."
        )
    width, height = size
    need, have = IMAGE_COPIES * 3 * 4 * width * height, memory_bytes()
    if have is not None and need > have:
        side = int(math.sqrt(have / (IMAGE_COPIES * 3 * 4)))
        raise UserError(
            f"size={show(size)} asks for a {width}×{height} image: a step holds at least "
            f"{IMAGE_COPIES} float32 copies of it (θ, gradients, Adam's moments, …), "
            f"{_gb(need)}, more than this machine's {_gb(have)} of memory. Ask for a smaller image, "
            f"e.g. 'size=[512,512]'; here even a plain pixel image stops at about {side}×{side}."
        )


def check_cutouts(cfg: DictConfig) -> None:
    """Mirrored cutouts come in left/right pairs: an odd cutn has a crop without a partner."""
    cutouts = cfg.get("cutouts") or {}
    if cutouts.get("mirrored") and _is_int(cutouts.get("cutn")) and cutouts.cutn % 2:
        raise UserError(
            f"cutouts.cutn={cutouts.cutn} with mirrored cutouts (cutouts.mirrored=true): they come "
            f"in left/right pairs, so cutn must be even. Set it like cutouts.cutn="
            f"{cutouts.cutn + 1}, or cutouts.mirrored=false."
        )


def check_losses(cfg: DictConfig) -> None:
    """Each loss node names its class; `+losses.tv.weight=0.5` alone adds a node with no `_target_`."""
    for name, node in (cfg.get("losses") or {}).items():
        if node is None or (isinstance(node, DictConfig) and "_target_" in node):
            continue
        known = shipped_losses()
        target = known.get(name, {}).get("_target_", "genart.losses.<Class>")
        weight = node.get("weight", 0.5) if isinstance(node, DictConfig) else 0.5
        sets = [s for s, nodes in loss_sets().items() if name in nodes]
        elsewhere = f", or choose a loss set that has it (losses={sets[0]})" if sets else ""
        classes = sorted({n["_target_"].rsplit(".", 1)[-1] for n in known.values()})
        raise UserError(
            f"losses.{name} has no _target_, so genart cannot tell which loss to build (the loss "
            f"set in use has no {name} loss whose settings losses.{name}.… could change). Add it "
            f"with its class, e.g. +losses.{name}._target_={target} +losses.{name}.weight={weight}"
            f"{elsewhere}. genart's losses: {', '.join(classes)} (in genart.losses)."
        )


def check_clip_guidance(cfg: DictConfig) -> None:
    """clip_guidance's values; and guidance asked of an updater that does not sample, which would
    be silently ignored (the gradient updater already moves θ along the objective's gradient)."""
    from genart.guidance import clip_guidance

    node = cfg.get("clip_guidance")
    if node is None:
        return
    settings = clip_guidance(OmegaConf.to_container(node, resolve=True))
    target = str((cfg.get("updater") or {}).get("_target_", ""))
    if settings.scale and not target.endswith("SampleUpdater"):
        raise UserError(
            f"clip_guidance.scale={settings.scale:g} steers diffusion sampling (updater=sample, "
            f"the default of generator=sdxl…), but this run's updater is {target or 'unset'}, "
            "which moves θ along the objective's gradient itself and would ignore it. Use "
            "generator=sdxl_tiny (or sdxl) with updater=sample, or set clip_guidance.scale=0."
        )


def check_start_latent(cfg: DictConfig) -> None:
    """init.start_latent and an init image both say where θ starts: refuse the pair."""
    init = cfg.get("init") or {}
    image = init.get("image") or init.get("make")
    if init.get("start_latent") and image:
        key = "init.image" if init.get("image") else "init.make"
        raise UserError(
            f"init.start_latent={init.start_latent} and {key} both set where the run starts: a "
            "start latent is the drawn latent itself, an init image is encoded over it. Keep "
            f"one: unset {key} (e.g. {key}=null), or init.start_latent=null."
        )


def check_device(cfg: DictConfig) -> None:
    """device names a device torch knows and this machine has (`device=tpu` is neither)."""
    from genart.runtime import pick_device

    pick_device(str(cfg.get("device", "auto")))


def check_prompt_source(cfg: DictConfig, choices: dict, overrides: list[str]) -> None:
    """`+refine` keeps the prompts it is given; with neither a preset nor a `prompts` override it
    would pull an edited image towards the default lighthouse prompt."""
    typed = [key_of(o) for o in overrides]
    if (
        not choices.get("refine")
        or choices.get("preset")
        or any(k == "prompts" or k.startswith("prompts.") for k in typed)
    ):
        return
    recorded = _recorded_prompts(cfg.init.get("image"))
    hint = f' Its PNG records the prompts it was rendered with: "{recorded}".' if recorded else ""
    raise UserError(
        f"+refine={choices['refine']} re-optimises an edited image under the prompts it was "
        "rendered with, but no preset and no prompt is given, so it would pull the image towards "
        f'the default prompt ("{cfg.prompts.get("text")}").{hint} Add the preset you rendered '
        "with, e.g. +preset=doorways/forest_kelp_forest +refine=details init.image=edited.png, or "
        "type the prompts, e.g. prompts.text='a forest at dawn'."
    )


def _recorded_prompts(image: str | None) -> str | None:
    """The `prompts` text chunk genart writes into final.png (an edit may have dropped it)."""
    if not image:
        return None
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(Path(image).expanduser()) as png:
            warnings.simplefilter("ignore")  # the run's own image check reports a bomb
            return png.info.get("prompts")  # chunks before the pixels: nothing is decoded
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def check_output_dir(argv: list[str]) -> None:
    """Hydra makes the run (or sweep) dir before genart runs; a file in its way is a traceback there.

    The dir comes from the command line or conf/config.yaml only (no preset may touch `hydra.`),
    so this reads those two, before Hydra starts. Interpolated parts (`${now:…}`) are not
    resolved: only the literal directories before them are checked.
    """
    from genart.run_dirs import dir_setting

    key, value, _ = dir_setting(argv)
    if value:
        _check_dir_path(key, str(value))


def _check_dir_path(key: str, value: str) -> None:
    """The nearest existing path on the way to the dir must be a directory."""
    static = value.split("${")[0]  # the literal part before any interpolation
    path = Path(static if static == value or static.endswith("/") else Path(static).parent)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return
    if existing == Path(value):
        where = "is a file"
    else:
        where = f"needs {existing} to be a directory, not a file"
    raise UserError(
        f"{key}={value} {where}: Hydra puts each run's outputs (final.png, frames/, .hydra/) in a "
        f"directory there. Give a directory path, new or existing, e.g. {key}=outputs/my_run, or "
        f"leave {key} out for outputs/<date>/<time>."
    )


def shipped_losses() -> dict[str, dict]:
    """Loss name → its node, over genart's own loss sets (conf/losses/*.yaml)."""
    return {name: node for nodes in loss_sets().values() for name, node in nodes.items()}


def loss_sets() -> dict[str, dict]:
    """conf/losses/<set>.yaml → {loss name: node with a `_target_`}."""
    from genart.safety import conf_dir

    sets = {}
    for path in sorted((conf_dir() / "losses").glob("*.yaml")):
        nodes = OmegaConf.to_container(OmegaConf.load(path))
        sets[path.stem] = {
            k: v for k, v in nodes.items() if isinstance(v, dict) and "_target_" in v
        }
    return sets


def memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say (then no size limit)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def show(value: Any) -> str:
    """A value as the user would type it: [0, 0] for lists, the text itself for strings."""
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value))
    return str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_ok(value: Any, rule: Rule) -> bool:
    low = -math.inf if rule.low is None else rule.low
    if rule.whole:
        return _is_int(value) and low <= value < 2**64  # torch seeds take up to 64 bits
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value >= low


def _gb(n: float) -> str:
    return f"{n / 2**40:.1f} TB" if n >= 2**40 else f"{n / 2**30:.1f} GB"
