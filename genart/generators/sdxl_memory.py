"""GPU memory options for SDXL's diffusers components (`generator.memory`, docs/sdxl.md "Memory"):
weight dtypes, the attention kernel, VAE slicing and tiling, and accelerate's CPU offload, one
small function each; combinations that cannot work are refused in one paragraph (a UserError).

diffusers is imported only inside the functions that need it (start-up commands stay fast).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch

from genart.errors import UserError

CHOICES = {  # option → its values, the first the default
    "attention": ("sdpa", "plain"),
    "vae_slicing": (False, True),
    "vae_tiling": ("auto", True, False),
    "cpu_offload": ("none", "model", "sequential"),
}
MEANING = {
    "attention": "the UNet's and VAE's attention kernel",
    "vae_slicing": "whether the VAE decodes a batch one latent at a time",
    "vae_tiling": "whether the VAE decodes in tiles (auto: canvases above tile_above pixels)",
    "cpu_offload": "how accelerate keeps weights in CPU memory until they run",
    "tile_above": "auto tiling's threshold in pixels, a whole number ≥ 1",
}
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class MemoryOptions:
    """The `memory:` node of an SDXL generator config (conf/generator/sdxl*.yaml)."""

    attention: str = "sdpa"  # sdpa: torch's fused kernel (AttnProcessor2_0); plain: AttnProcessor
    vae_slicing: bool = False  # decode a batch one latent at a time
    vae_tiling: str | bool = "auto"  # auto: tile canvases of more than tile_above pixels
    # Above every SDXL aspect bucket (all ~1 MP), so SDXL's own sizes get no seams. An untiled
    # decode holds ~4 KB/px in fp32 (SDXL's VAE at 768² on CPU: +2.4 GB; in 256-px tiles +0.6 GB,
    # 1.4x the time): ~4.7 GB in fp16 at 1536²
    tile_above: int = 1536 * 1536
    cpu_offload: str = "none"  # model or sequential: accelerate moves weights in as they run


def memory_options(node: Mapping | None) -> MemoryOptions:
    """The node checked: known keys, each value one of its choices; one paragraph otherwise."""
    node = dict(node or {})
    known = [f.name for f in fields(MemoryOptions)]
    for key, value in node.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"Did you mean generator.memory.{close[0]}? " if close else ""
            raise UserError(
                f"generator.memory.{key}={yaml(value)} is not a memory option, so it would be "
                f"silently ignored. {hint}The options are {', '.join(known)} (docs/sdxl.md)."
            )
        allowed = CHOICES.get(key)
        ok = one_of(value, allowed) if allowed else type(value) is int and value >= 1
        if not ok:
            takes = f"one of {', '.join(map(yaml, allowed))}" if allowed else "e.g. 2359296 (1536²)"
            raise UserError(
                f"generator.memory.{key}={yaml(value)} is not allowed: it is {MEANING[key]}. "
                f"Set it to {takes}, e.g. generator.memory.{key}={yaml((allowed or [2359296])[0])}."
            )
    return MemoryOptions(**node)


def one_of(value, allowed: Sequence) -> bool:
    """`value` is one of `allowed`, type included (1 is not true)."""
    return any(type(value) is type(a) and value == a for a in allowed)


def yaml(value) -> str:
    """A value as it is typed in YAML or an override: true, not True."""
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


# ---------------------------------------------------------------- dtypes


def cpu_fp16_native() -> bool:
    """Whether torch's CPU kernels compute fp16 natively here (AVX512-FP16 or AMX-FP16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_dtypes(dtype: torch.dtype, vae_dtype: torch.dtype, device: torch.device) -> None:
    """fp16 on a CPU without fp16 units is refused (torch emulates it, 60x slower than fp32);
    bf16 on a CPU without bf16 units runs, emulated, with a warning."""
    from genart.speed.precision import cpu_bf16

    for key, chosen in (("generator.dtype", dtype), ("generator.vae_dtype", vae_dtype)):
        if device.type != "cpu":
            continue
        if chosen == torch.float16 and not cpu_fp16_native():
            raise UserError(
                f"{key}=fp16 on the CPU: this CPU has no fp16 arithmetic, so torch emulates it (on "
                "a 2-core AMD EPYC a 1024² matrix product took 3.2 s in fp16, 50 ms in fp32 and "
                f"20 ms in bf16). fp16 is for GPUs: set {key}=bf16 (native on CPUs with "
                f"AVX512-BF16 or AMX) or {key}=fp32, or run on a GPU with device=cuda."
            )
        if chosen == torch.bfloat16 and not cpu_bf16()["native"]:
            warnings.warn(
                f"{key}=bf16 on a CPU without bf16 units: torch emulates it, 40-60x slower than "
                f"fp32 (python -m genart.tools.kernel_bench). Set {key}=fp32 on this CPU.",
                stacklevel=2,
            )


def check_vae_dtype(vae, vae_dtype: torch.dtype) -> None:
    """An fp16 VAE whose config says `force_upcast` (SDXL's own does) overflows to NaN."""
    if vae_dtype == torch.float16 and getattr(vae.config, "force_upcast", True):
        raise UserError(
            "generator.vae_dtype=fp16 with a VAE that overflows in fp16: its config says "
            "force_upcast (SDXL's own VAE does: its activations exceed fp16's range, and the image "
            "turns to NaN). Keep generator.vae_dtype=fp32 (or bf16), or load the fp16-fix VAE, "
            "whose config clears force_upcast: generator.vae={pretrained: {path: null, hf_repo: "
            "madebyollin/sdxl-vae-fp16-fix, revision: null, variant: null, subfolder: null}}."
        )


def cast_models(parts: Mapping, dtype: torch.dtype, vae_dtype: torch.dtype) -> None:
    """UNet and text encoders to `dtype`, the VAE to `vae_dtype`: what from_pretrained's
    torch_dtype does for loaded weights, for models built in fp32 (sdxl_tiny's)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its advice to cast through from_pretrained instead
    try:
        for name in ("unet", *TEXT_ENCODERS):
            parts[name].to(dtype)
        parts["vae"].to(vae_dtype)
    finally:
        diffusers_logging.set_verbosity(level)


# ---------------------------------------------------------------- attention, VAE


def set_attention(models: Sequence, kind: str) -> None:
    """sdpa: torch's scaled_dot_product_attention (fused; never holds the N×N attention matrix,
    diffusers' default on torch 2); plain: diffusers' AttnProcessor, which does."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for model in models:
        model.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def set_vae_slicing(vae, on: bool) -> None:
    """Decode (and encode) a batch one latent at a time: peak memory of one image, not of B."""
    vae.enable_slicing() if on else vae.disable_slicing()


def wants_tiling(setting: str | bool, size: Sequence[int], tile_above: int) -> bool:
    """auto: tile a canvas of more than `tile_above` pixels (a rule, so pixels never depend on
    the GPU's free memory); true or false as set."""
    width, height = size
    return width * height > tile_above if setting == "auto" else bool(setting)


def set_vae_tiling(vae, on: bool) -> None:
    """Decode in overlapping tiles of the VAE's sample_size (1024 px for SDXL's VAE, 512 for the
    fp16-fix), blended at the seams: memory of one tile whatever the canvas. diffusers tiles only
    canvases wider or taller than one tile."""
    vae.enable_tiling() if on else vae.disable_tiling()


# ---------------------------------------------------------------- CPU offload


def check_offload(mode: str, device: torch.device) -> None:
    """Offload moves weights between CPU memory and a GPU's: without CUDA it has nothing to do."""
    if mode != "none" and device.type != "cuda":
        raise UserError(
            f"generator.memory.cpu_offload={mode} with device={device.type}: CPU offload keeps "
            "the weights in CPU memory and moves each model (model) or layer (sequential) to the "
            "GPU as it runs, so it needs a CUDA device; on this device every weight already sits "
            "where it runs. Set generator.memory.cpu_offload=none, or device=cuda on a machine "
            "with an NVIDIA GPU."
        )


def enable_offload(pipe, mode: str, device: torch.device) -> None:
    """diffusers' own offload on the pipeline's models (accelerate's cpu_offload_with_hook per
    model, chained text encoders → UNet → VAE; or cpu_offload per layer), onto `device`."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)


def offloaded(module: torch.nn.Module) -> bool:
    """Whether accelerate hooks own this module's placement (it has an `_hf_hook`)."""
    return hasattr(module, "_hf_hook")


@contextmanager
def offloaded_left_alone(module: torch.nn.Module):
    """Hide `module`'s offloaded children from `_apply` (`.to(device)`, `.float()`) for a while:
    their hooks place them, and moving them all to the GPU at once is what offload avoids."""
    children = module._modules
    module.__dict__["_modules"] = {n: c for n, c in children.items() if not offloaded(c)}
    try:
        yield
    finally:
        module.__dict__["_modules"] = children


# ---------------------------------------------------------------- all of it


def check_memory(options: MemoryOptions, dtype, vae_dtype, device) -> None:
    """What can be refused from the config alone: before any weight is read."""
    device = torch.device(device)
    check_dtypes(dtype, vae_dtype, device)
    check_offload(options.cpu_offload, device)


def apply_memory(pipe, options: MemoryOptions, size: Sequence[int], device) -> None:
    """Every option on the pipeline's models; offload last, after the kernels are chosen."""
    set_attention([pipe.unet, pipe.vae], options.attention)
    set_vae_slicing(pipe.vae, options.vae_slicing)
    set_vae_tiling(pipe.vae, wants_tiling(options.vae_tiling, size, options.tile_above))
    enable_offload(pipe, options.cpu_offload, torch.device(device))
