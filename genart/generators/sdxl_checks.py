"""Bad SDXL input refused in one paragraph (what was wrong, how to fix it, the key to set): the
`sampler:` node (its keys, cfg_scale, the scheduler's name), a canvas far below the model's
training size (a warning), and a LoRA file made for another base model, found before
diffusers loads it.

What size SDXL takes: StableDiffusionXLPipeline.check_inputs wants height and width divisible by
8 (genart.generators.sdxl rounds to it, with a warning). The UNet takes any latent size
(UNet2DConditionModel passes each skip's size to its upsamplers: checked at odd latents such as
5×7 on 2- and 3-level UNets), so there is no further multiple to enforce.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path

from genart.errors import UserError

SAMPLER_KEYS = ("scheduler", "steps", "cfg_scale", "seed", "scheduler_config")  # SamplerSettings
DISTILLED_SCHEDULERS = ("LCMScheduler", "TCDScheduler")  # for SDXL's LCM/TCD LoRAs and fine-tunes
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # the prefixes of an SDXL LoRA's keys
# the text width a UNet's cross-attention (attn2.to_k) reads, by the base model it belongs to
BASE_BY_TEXT_WIDTH = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "SDXL"}


class SmallCanvasWarning(UserWarning):
    """A canvas far below the size the model was trained at."""


# ---------------------------------------------------------------- the sampler node


def check_sampler_node(node: Mapping) -> None:
    """Known keys only, cfg_scale a finite number ≥ 0, a scheduler genart can step."""
    for key in node:
        if key not in SAMPLER_KEYS:
            close = difflib.get_close_matches(str(key), SAMPLER_KEYS, n=1, cutoff=0.5)
            hint = f"Did you mean generator.sampler.{close[0]}? " if close else ""
            raise UserError(
                f"generator.sampler.{key}={node[key]} is not a sampler setting. {hint}The "
                f"settings are {', '.join(SAMPLER_KEYS)}."
            )
    check_cfg_scale(node.get("cfg_scale"))
    check_scheduler(node.get("scheduler"))


def check_cfg_scale(value) -> float:
    """Classifier-free guidance's scale: a finite number ≥ 0 (≤ 1 switches it off)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value >= 0):
        raise UserError(
            f"generator.sampler.cfg_scale={value} is not allowed: classifier-free guidance (the "
            "sampler's, not CLIP guidance) takes a finite number ≥ 0, and ≤ 1 switches it off. "
            "Set it like generator.sampler.cfg_scale=5.0 (SDXL base; 0 for Turbo, 1 with LCM)."
        )
    return float(value)


def sdxl_schedulers() -> tuple[str, ...]:
    """The scheduler classes genart offers SDXL: those diffusers declares compatible with SDXL's
    own EulerDiscreteScheduler (its Karras list), and the distilled LCM and TCD samplers."""
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    return tuple(sorted({s.name for s in KarrasDiffusionSchedulers} | {*DISTILLED_SCHEDULERS}))


def check_scheduler(name) -> type:
    """diffusers' scheduler class of that name, if genart offers it and its packages are here."""
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    names = sdxl_schedulers()
    if name not in names:
        found = getattr(diffusers, str(name), None)
        exists = isinstance(found, type) and issubclass(found, SchedulerMixin)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"Did you mean {close[0]}? " if close and not exists else ""
        what = (
            "is a diffusers scheduler made for other models (its timesteps or state do not fit "
            "SDXL's UNet)"
            if exists
            else "is not a diffusers scheduler class"
        )
        raise UserError(
            f"generator.sampler.scheduler={name} {what}. {hint}SDXL samples with "
            f"{', '.join(names)}; set it like generator.sampler.scheduler=EulerDiscreteScheduler."
        )
    cls = getattr(diffusers, name)
    missing = [b for b in getattr(cls, "_backends", ()) if find_spec(b) is None]
    if missing:  # diffusers' stand-in for a class whose optional packages are absent
        raise UserError(
            f"generator.sampler.scheduler={name} needs the package {' and '.join(missing)}, which "
            f"is not installed: pip install {' '.join(missing)}, or pick another scheduler, e.g. "
            "generator.sampler.scheduler=EulerDiscreteScheduler."
        )
    return cls


# ---------------------------------------------------------------- size


def warn_small_canvas(size: Sequence[int], sample_size: int, scale_factor: int) -> None:
    """Warn below a quarter of the trained area: the UNet's sample_size × the VAE's factor
    (1024² for SDXL; Turbo's 512² is exactly a quarter and passes)."""
    width, height = size
    side = sample_size * scale_factor
    if width * height < side * side / 4:
        warnings.warn(
            f"size=[{width},{height}] is {width * height / side**2:.0%} of the {side}×{side} "
            f"canvas this model was trained at (its UNet's sample_size {sample_size} × the VAE's "
            f"{scale_factor}); far below it SDXL loses its composition and draws fragments. Set "
            f"size=[{side},{side}] or an aspect of the same area, e.g. "
            f"size=[{side * 9 // 8 // 64 * 64},{side * 7 // 8 // 64 * 64}].",
            SmallCanvasWarning,
            stacklevel=2,
        )


# ---------------------------------------------------------------- LoRA


def check_lora_fits(pipe, path: Path) -> None:
    """Every layer of the LoRA file names a layer of this pipeline's UNet or text encoders, with
    the same in and out features; else one paragraph, before load_lora_weights (which drops the
    layers this model lacks without a word, and stops at the first shape that differs)."""
    layers = lora_layers(read_lora(pipe, path), pipe)
    misfits = [m for m in (misfit(pipe, *key, *shape) for key, shape in layers.items()) if m]
    misfits.sort(key=lambda m: "has no layer" in m)  # a width that differs tells more
    if not layers or misfits:
        what = (
            f"{len(misfits)} of its {len(layers)} layers do not fit it, e.g. {misfits[0]}"
            if layers
            else "it holds no LoRA layers for SDXL's UNet or text encoders"
        )
        raise UserError(
            f"generator.lora.pretrained.path={path} is not a LoRA for this model: {what}. "
            f"{base_guess(pipe, layers)}Give a LoRA trained for this base model (e.g. "
            "latent-consistency/lcm-lora-sdxl for SDXL) in generator.lora.pretrained.path, or "
            "set generator.lora=null."
        )


def read_lora(pipe, path: Path) -> dict:
    """The LoRA's state dict as load_lora_weights reads it (kohya/A1111 keys converted)."""
    from diffusers.utils import logging as diffusers_logging
    from safetensors import SafetensorError

    folder, name = (path, {}) if path.is_dir() else (path.parent, {"weight_name": path.name})
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its log restates the error below
    try:
        state, _ = pipe.lora_state_dict(
            str(folder), unet_config=pipe.unet.config, local_files_only=True, **name
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        first = " ".join(str(err).split())[:200]
        raise UserError(
            f"generator.lora.pretrained.path={path} could not be read as a LoRA ({first}). Give "
            "a LoRA's .safetensors file (e.g. latent-consistency/lcm-lora-sdxl's "
            "pytorch_lora_weights.safetensors), or set generator.lora=null."
        ) from None
    finally:
        diffusers_logging.set_verbosity(level)
    return state


def lora_layers(state: Mapping, pipe) -> dict[tuple[str, str], tuple[int | None, int | None]]:
    """(component, layer) → (in, out) features of each LoRA layer, named as peft names them
    after diffusers' own key conversions (load_lora_into_unet/_text_encoder's); keys for no
    component map to ("?", key)."""
    layers = {}
    for component in COMPONENTS:
        prefix = f"{component}."
        part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        for key, down in peft_keys(part, component, getattr(pipe, component)).items():
            if key.endswith(".lora_A.weight"):
                layer = key.removesuffix(".lora_A.weight")
                up = part.get(f"{layer}.lora_B.weight")
                layers[component, layer] = (down.shape[1], None if up is None else up.shape[0])
    for key in state:  # diffusers ignores these without a word
        if not key.startswith(tuple(f"{c}." for c in COMPONENTS)):
            layers["?", key.split(".lora")[0]] = (None, None)
    return layers


def peft_keys(part: dict, component: str, model) -> dict:
    """One component's LoRA keys in peft's naming (`<layer>.lora_A.weight`), as diffusers
    converts them before peft loads them."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if not part:
        return {}
    if component == "unet":
        return part if "lora_A" in next(iter(part)) else convert_unet_state_dict_to_peft(part)
    part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    if not hasattr(model, "text_model"):  # transformers 5 flattened CLIPTextModel
        part = {k.removeprefix("text_model."): v for k, v in part.items()}
    return part


def misfit(pipe, component: str, layer: str, n_in: int | None, n_out: int | None) -> str:
    """What keeps this LoRA layer off the pipeline's model ("" if nothing does)."""
    if component not in COMPONENTS:
        return f"{layer} belongs to no part of SDXL ({', '.join(COMPONENTS)})"
    try:
        weight = getattr(pipe, component).get_submodule(layer).weight  # (out, in, …)
    except AttributeError:
        return f"{component} has no layer {layer}"
    if n_in != weight.shape[1]:
        return f"{component} {layer} reads {n_in} features in the LoRA, {weight.shape[1]} here"
    if n_out not in (None, weight.shape[0]):
        return f"{component} {layer} gives {n_out} features in the LoRA, {weight.shape[0]} here"
    return ""


def base_guess(pipe, layers: Mapping) -> str:
    """Which base model the LoRA's cross-attention width points to, when it is not this one's."""
    have = pipe.unet.config.cross_attention_dim
    keys = [(c, layer) for c, layer in layers if c == "unet" and layer.endswith("attn2.to_k")]
    theirs = next((layers[k][0] for k in keys if layers[k][0] != have), None)
    if theirs is None:
        return ""
    base = BASE_BY_TEXT_WIDTH.get(theirs, "another base model")
    return (
        f"Its cross-attention reads {theirs}-wide text features and this UNet's {have}-wide: it "
        f"was made for {base}. "
    )
