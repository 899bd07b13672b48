"""SDXL (Podell et al. 2023, arXiv:2307.01952) through diffusers' and transformers' own classes:
θ = the latent z (1, 4, H/f, W/f), decoded by the VAE; the UNet, text encoders and scheduler a
sampler steps through (genart.samplers); the text conditioning from the prompt schedule
(genart.conditioning). diffusers and transformers are imported only when a model is built."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genart.conditioning import PromptConditioning, TextEmbeds
from genart.errors import UserError
from genart.generators.base import Generator, check_start_latent, round_size
from genart.generators.model_folders import local_folder, quiet, variant_in
from genart.generators.sdxl_checks import (
    check_lora_fits,
    check_sampler_node,
    check_scheduler,
    warn_small_canvas,
)
from genart.generators.sdxl_memory import (
    TEXT_ENCODERS,
    apply_memory,
    cast_models,
    check_memory,
    check_vae_dtype,
    memory_options,
    offloaded_left_alone,
)
from genart.generators.vqgan import clamp_with_grad, plain
from genart.windows import check_windows, positional_windows

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INITS = ("noise", "sample")
SIZE_MULTIPLE = 8  # StableDiffusionXLPipeline.check_inputs: height and width divisible by 8


@dataclass(frozen=True)
class SamplerSettings:
    """How the model is sampled (the `sampler:` node of an SDXL generator config)."""

    scheduler: str  # a diffusers scheduler class name
    steps: int  # denoising steps: one updater step each
    cfg_scale: float  # classifier-free guidance (off at ≤ 1, as in the pipeline); not CLIP guidance
    seed: int  # the sampler's own torch.Generator: initial and ancestral noise
    scheduler_config: Mapping | None = None  # overrides on the model's scheduler_config.json


def scheduler_class(name: str) -> type:
    """diffusers' scheduler class of that name; anything else is refused in one paragraph."""
    return check_scheduler(name)


def build_scheduler(settings: SamplerSettings, model_config: Mapping):
    """The scheduler class named in the settings, from the model's own config plus overrides,
    as diffusers' docs swap schedulers (`LCMScheduler.from_config(pipe.scheduler.config)`)."""
    cls = scheduler_class(settings.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    base = {k: v for k, v in model_config.items() if k in accepted}  # another class's keys: quiet
    return cls.from_config({**base, **plain(settings.scheduler_config or {})})  # a typo warns


def load_pretrained(
    pretrained: Mapping, dtype: torch.dtype, vae_dtype: torch.dtype
) -> tuple[dict, dict, bool]:
    """Components, scheduler config and `force_zeros_for_empty_prompt` from a local diffusers SDXL
    folder (genart.pretrained.resolve_all_pretrained points `path` at it, subfolder included)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = local_folder(pretrained)
    variant = pretrained.get("variant")

    def load(cls, name: str, **kwargs):
        return cls.from_pretrained(
            root / name, variant=variant_in(root / name, variant), local_files_only=True, **kwargs
        )

    parts = {
        "unet": load(UNet2DConditionModel, "unet", torch_dtype=dtype),
        "vae": load(AutoencoderKL, "vae", torch_dtype=vae_dtype),
        "text_encoder": load(CLIPTextModel, "text_encoder", dtype=dtype),
        "text_encoder_2": load(CLIPTextModelWithProjection, "text_encoder_2", dtype=dtype),
        "tokenizer": CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True),
        "tokenizer_2": CLIPTokenizer.from_pretrained(root / "tokenizer_2", local_files_only=True),
    }
    scheduler_config = dict(EulerDiscreteScheduler.load_config(root / "scheduler"))
    index = root / "model_index.json"
    pipeline_config = json.loads(index.read_text()) if index.exists() else {}
    return parts, scheduler_config, bool(pipeline_config.get("force_zeros_for_empty_prompt", True))


def load_vae(pretrained: Mapping, dtype: torch.dtype):
    """A replacement VAE (e.g. madebyollin/sdxl-vae-fp16-fix, which stays finite in fp16)."""
    from diffusers import AutoencoderKL

    root = local_folder(pretrained)
    variant = variant_in(root, pretrained.get("variant"))
    return AutoencoderKL.from_pretrained(
        root, variant=variant, torch_dtype=dtype, local_files_only=True
    )


def load_lora(pipe, lora: Mapping) -> None:
    """Load and fuse a LoRA file (or a folder holding one) through diffusers' own
    `load_lora_weights`, which uses peft; one that does not fit the model is a UserError."""
    path = local_folder(lora["pretrained"])
    check_lora_fits(pipe, path)
    where = (path, {}) if path.is_dir() else (path.parent, {"weight_name": path.name})
    try:
        with quiet("diffusers", "peft"):  # their log restates the error below, line by line
            pipe.load_lora_weights(str(where[0]), local_files_only=True, **where[1])
            pipe.fuse_lora(lora_scale=float(lora.get("scale", 1.0)))
    except (ValueError, RuntimeError, KeyError, OSError) as err:
        first = " ".join(" ".join(str(err).splitlines()[:2]).split())[:300]
        raise UserError(
            f"The LoRA file {path} does not fit this generator's model ({first}). Give a LoRA "
            "trained for this base model (e.g. latent-consistency/lcm-lora-sdxl for SDXL) in "
            "generator.lora.pretrained.path, or set generator.lora=null."
        ) from None


def dtype_named(name: str, key: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(
            f"{key}={name} is not a dtype genart knows; use one of {', '.join(DTYPES)}."
        )
    return DTYPES[name]


class SDXLGenerator(Generator):
    """θ = z (1, 4, H/f, W/f); image = clamp((vae.decode(z / scaling_factor) + 1) / 2).

    `size` is rounded to multiples of 8; `prompts` is the run's prompt schedule (the conditioning
    follows it); `sampler` says how the model is sampled (SamplerSettings' fields). Weights come
    from `pretrained` (a local repo snapshot) or, when it is None, random from `architecture`
    (genart.generators.sdxl_tiny) and `init_seed`. `init`: noise (z ~ N(0, 1)) or sample (z = the
    latent the plain sampler makes, so latent optimisation starts from an SDXL image).
    `windows` ({width, stride} in pixels, or None): with anchored prompts, the sampler denoises
    overlapping windows, each conditioned on the prompt mix at its centre (genart.windows).
    """

    def __init__(
        self,
        size: list[int],
        prompts,
        sampler: Mapping,
        pretrained: Mapping | None = None,
        architecture: Mapping | None = None,
        init_seed: int = 0,
        init: str = "noise",
        vae: Mapping | None = None,
        lora: Mapping | None = None,
        dtype: str = "fp32",
        vae_dtype: str = "fp32",
        device: str = "cpu",
        memory: Mapping | None = None,
        windows: Mapping | None = None,
        taesd: Mapping | None = None,
    ):
        super().__init__()
        from diffusers import StableDiffusionXLPipeline

        from genart.runtime import pick_device

        if init not in INITS:
            raise UserError(f"generator.init={init} is not known; use one of {', '.join(INITS)}.")
        self.sampler = sampler_settings(sampler)
        self.size = round_size(size, SIZE_MULTIPLE, "SDXL")
        weights, vae_weights = (
            dtype_named(dtype, "generator.dtype"),
            dtype_named(vae_dtype, "generator.vae_dtype"),
        )
        memory = memory_options(memory)
        check_memory(memory, weights, vae_weights, pick_device(str(device)))
        if pretrained is not None:
            parts, scheduler_config, zeros = load_pretrained(pretrained, weights, vae_weights)
        elif architecture is not None:
            parts, scheduler_config, zeros = tiny_parts(plain(architecture), int(init_seed))
        else:
            raise ValueError("SDXLGenerator needs pretrained (a repo snapshot) or an architecture")
        if vae is not None:
            parts["vae"] = load_vae(vae["pretrained"], vae_weights)
        cast_models(parts, weights, vae_weights)  # sdxl_tiny's; loaded weights already are
        check_vae_dtype(parts["vae"], vae_weights)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            setattr(self, name, parts[name].eval())  # registered submodules: .to() moves them
        self.pipe = StableDiffusionXLPipeline(
            **parts,
            scheduler=build_scheduler(self.sampler, scheduler_config),
            force_zeros_for_empty_prompt=zeros,
            add_watermarker=False,  # genart decodes itself; the pipeline's postprocess never runs
        )
        if lora is not None:
            load_lora(self.pipe, lora)
        apply_memory(self.pipe, memory, self.size, pick_device(str(device)))
        warn_small_canvas(self.size, self.unet.config.sample_size, self.pipe.vae_scale_factor)
        self.requires_grad_(False)  # frozen models; z, made next, is the only parameter
        self.conditioning = PromptConditioning(prompts, self.encode_text, zeros)
        width, height = self.size
        f = self.pipe.vae_scale_factor
        self.windows = positional_windows(
            check_windows(plain(windows), f), self.conditioning, width // f
        )
        self.time_ids_cache: dict[tuple, torch.Tensor] = {}
        self.taesd = None  # clip_guidance.decoder=taesd's decoder (genart.generators.taesd)
        self.guidance_vae = None  # a bf16 copy of the VAE for guidance (set_precision)
        if taesd is not None:
            from genart.generators.taesd import load_taesd

            channels = self.vae.config.latent_channels
            self.taesd = load_taesd(taesd, vae_weights, "cpu", latent_channels=channels)
        self.z = torch.nn.Parameter(
            torch.randn(1, self.unet.config.in_channels, height // f, width // f)
        )
        # the run's gene: z's initial noise (1, 4, H/8, W/8); init=sample starts elsewhere
        self.start = self.z.detach().clone() if init == "noise" else None
        self.to(pick_device(str(device)))
        if init == "sample":
            from genart.samplers import sample_latents

            self.set_latent(sample_latents(self))

    @property
    def scheduler(self):
        return self.pipe.scheduler

    def _apply(self, fn, recurse=True):
        with offloaded_left_alone(self):  # accelerate's hooks place offloaded models
            return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> SDXLGenerator:
        """Only z trains; the frozen models stay in eval mode."""
        super().train(mode)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "taesd"):
            if getattr(self, name) is not None:
                getattr(self, name).eval()
        return self

    def set_precision(self, dtype: torch.dtype, plan=None) -> None:
        """Below fp32, cast the UNet and both text encoders to `dtype` once; the VAE keeps
        generator.vae_dtype (SDXL's VAE overflows in fp16: the fp16-fix VAE is for that) and the
        sampler keeps x_t fp32. At fp32 nothing changes, so the sampler equals the pipeline."""
        if dtype == torch.float32:
            return
        parts = {name: getattr(self, name) for name in ("unet", "vae", *TEXT_ENCODERS)}
        cast_models(parts, dtype, self.vae.dtype)  # quietly: diffusers warns on every .to(dtype)
        if dtype == torch.bfloat16 and self.vae.dtype == torch.float32:
            # CLIP guidance decodes x̂0 (forward and backward) at every guided step: a bf16 copy
            # of the VAE halves that, and bf16 has fp32's range (SDXL's VAE overflows in fp16
            # only). Frames and final.png still decode with the VAE at generator.vae_dtype.
            with quiet("diffusers"):
                self.guidance_vae = copy.deepcopy(self.vae).to(dtype).requires_grad_(False)
        if self.taesd is not None:  # TAESD has no fp16 overflow to fear: the UNet's dtype
            with quiet("diffusers"):
                self.taesd.to(dtype)
        self.conditioning.cache.clear()  # texts encoded before the cast: re-encode at `dtype`

    def window_time_ids(self, crop_height_px: int, crop_width_px: int) -> torch.Tensor:
        """SDXL's six micro-conditioning ids (1, 6) for a window: its own size as original and
        target size, crop (0, 0), built as genart.samplers builds the whole canvas's. A window
        is then a picture of its own size, as SDXL was trained on, not a crop of a bigger one
        (which would ask for a picture cut off at its edges)."""
        key = (crop_height_px, crop_width_px, self.z.device)
        if key not in self.time_ids_cache:
            size = (crop_height_px, crop_width_px)
            self.time_ids_cache[key] = self.pipe._get_add_time_ids(
                size,  # original_size
                (0, 0),  # crops_coords_top_left
                size,  # target_size
                dtype=torch.float32,
                text_encoder_projection_dim=self.text_encoder_2.config.projection_dim,
            ).to(self.z.device)
        return self.time_ids_cache[key]

    def theta(self) -> list[torch.nn.Parameter]:
        return [self.z]

    def latent(self) -> torch.Tensor:
        return self.z

    @torch.no_grad()
    def set_latent(self, latents: torch.Tensor) -> None:
        self.z.copy_(latents)

    def start_latent(self) -> torch.Tensor | None:
        """The noise latent (1, C, H/8, W/8) z started from (None: generator.init=sample)."""
        return self.start

    @torch.no_grad()
    def set_start_latent(self, noise: torch.Tensor, source: str = "init.start_latent") -> None:
        """Start z from this noise latent (1, C, H/8, W/8) float32 instead of the drawn one."""
        width, height = self.size
        f, channels = self.pipe.vae_scale_factor, self.unet.config.in_channels
        expected = (1, channels, height // f, width // f)
        if self.start is None:
            raise UserError(
                f"{source} sets SDXL's initial noise, but generator.init=sample starts z from a "
                "whole plain sampling instead. Use generator.init=noise, or leave "
                f"{source} unset."
            )
        check_start_latent(noise, expected, self.size, f"SDXL's noise (size / {f})", source)
        self.start = noise.clone()
        self.z.copy_(self.start)

    @torch.no_grad()
    def encode_text(self, text: str) -> TextEmbeds:
        """One prompt through both text encoders, as StableDiffusionXLPipeline.encode_prompt does."""
        hidden, _, pooled, _ = self.pipe.encode_prompt(
            text, device=self.z.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return TextEmbeds(hidden, pooled)

    def latent_scale(self) -> tuple[torch.Tensor | float, torch.Tensor | float, float]:
        """(mean, std, scaling_factor) of the VAE's latents; the pipeline's rule for denormalising."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return 0.0, 1.0, config.scaling_factor
        shape = (1, len(mean), 1, 1)
        as_tensor = lambda v: torch.tensor(v, device=self.z.device).view(shape)  # noqa: E731
        return as_tensor(mean), as_tensor(std), config.scaling_factor

    def decode_latent(self, z: torch.Tensor, vae=None) -> torch.Tensor:
        """Any latent (B, 4, h, w) → image (B, 3, H, W) in [0, 1], as the pipeline decodes it."""
        vae = self.vae if vae is None else vae
        mean, std, scale = self.latent_scale()
        image = vae.decode((z * std / scale + mean).to(vae.dtype), return_dict=False)[0]
        return clamp_with_grad(
            (image.float() + 1) / 2
        )  # the pipeline's postprocess, with a gradient

    def decode_for_guidance(self, z: torch.Tensor) -> torch.Tensor:
        """x̂0 → image for CLIP guidance: the VAE, in bf16 when the run computes in bf16."""
        return self.decode_latent(z, self.guidance_vae)

    def decode_fast(self, z: torch.Tensor) -> torch.Tensor:
        """Any latent → image in [0, 1] through TAESD (approximate, ~6x cheaper than the VAE)."""
        from genart.generators.taesd import decode_taesd

        if self.taesd is None:
            raise UserError(
                "clip_guidance.decoder=taesd needs the generator's TAESD, but generator.taesd is "
                "null. Set generator.taesd (conf/generator/sdxl.yaml shows it), or use "
                "clip_guidance.decoder=vae."
            )
        return decode_taesd(self.taesd, z)

    def forward(self) -> torch.Tensor:
        return self.decode_latent(self.z)  # (1, 3, H, W) in [0, 1]

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> None:
        """z = the VAE posterior's mode for the image (resized to self.size), scaled."""
        width, height = self.size
        image = image.to(self.z.device, torch.float32)
        if image.shape[-2:] != (height, width):
            image = F.interpolate(
                image, size=(height, width), mode="bicubic", align_corners=False, antialias=True
            ).clamp(0, 1)
        posterior = self.vae.encode((2 * image - 1).to(self.vae.dtype)).latent_dist
        mean, std, scale = self.latent_scale()
        self.set_latent((posterior.mode().float() - mean) * scale / std)


def sampler_settings(node: Mapping) -> SamplerSettings:
    """The `sampler:` node, checked: its keys, cfg_scale and scheduler (sdxl_checks), steps ≥ 1."""
    check_sampler_node(plain(node))
    settings = SamplerSettings(**plain(node))
    if not isinstance(settings.steps, int) or settings.steps < 1:
        raise UserError(
            f"generator.sampler.steps={settings.steps} is not allowed: the sampler's denoising "
            "steps must be a whole number ≥ 1, e.g. generator.sampler.steps=4."
        )
    return settings


def tiny_parts(architecture: dict, seed: int) -> tuple[dict, dict, bool]:
    """Random tiny components (genart.generators.sdxl_tiny), their scheduler config, zeros flag."""
    from genart.generators.sdxl_tiny import tiny_components

    return tiny_components(architecture, seed), dict(architecture["scheduler"]), True
