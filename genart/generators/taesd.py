"""TAESD (Ollin Boer Bohan's tiny autoencoder, github.com/madebyollin/taesd) as a cheap,
differentiable decoder for SDXL latents: diffusers' `AutoencoderTiny`, from a local copy of
madebyollin/taesdxl or random from a tiny architecture (sdxl_tiny and tests)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genart.errors import UserError
from genart.generators.model_folders import local_folder, quiet, variant_in
from genart.generators.vqgan import clamp_with_grad, plain

KEY = "generator.taesd"
HF_REPO = "madebyollin/taesdxl"

if TYPE_CHECKING:
    from diffusers import AutoencoderTiny

# madebyollin/taesdxl's published config.json: diffusers' AutoencoderTiny defaults (0.42,
# autoencoder_tiny.py AutoencoderTiny.__init__). The config file says so field by field; that
# scaling_factor is 1.0 is also what the TAESD README says ("TAESD's scale_factor for latents is 1").
TAESDXL = {
    "in_channels": 3,
    "out_channels": 3,
    "encoder_block_out_channels": [64, 64, 64, 64],
    "decoder_block_out_channels": [64, 64, 64, 64],  # 4 levels, 3 upsamplings: 8x, as SDXL's VAE
    "act_fn": "relu",
    "upsample_fn": "nearest",
    "latent_channels": 4,
    "upsampling_scaling_factor": 2,
    "num_encoder_blocks": [1, 3, 3, 3],
    "num_decoder_blocks": [3, 3, 3, 1],
    "latent_magnitude": 3,  # only for 8-bit latent storage (scale_latents); decoding ignores it
    "latent_shift": 0.5,
    "force_upcast": False,
    "scaling_factor": 1.0,  # TAESD decodes the diffusion latents as they are (decode_taesd)
    "shift_factor": 0.0,
}

# sdxl_tiny's: 2 levels and one 2x upsampling, so (1, 4, h, w) decodes to (1, 3, 2h, 2w) as
# conf/generator/sdxl_tiny.yaml's 2-level VAE does. Equal widths: DecoderTiny's convs between
# levels keep a level's width, so unequal ones do not fit together.
TINY_TAESD = {
    "encoder_block_out_channels": [16, 16],
    "decoder_block_out_channels": [16, 16],
    "num_encoder_blocks": [1, 1],
    "num_decoder_blocks": [1, 1],
    "latent_channels": 4,
}


def load_taesd(
    node: Mapping, dtype: torch.dtype, device, latent_channels: int = 4
) -> AutoencoderTiny:
    """A frozen AutoencoderTiny in eval mode: from `node.pretrained` (a local folder, already
    resolved by genart.pretrained) or random from `node.architecture` and `node.init_seed`.
    `latent_channels`: the generator's (its VAE's config.latent_channels); others are refused."""
    node = plain(node)
    if node.get("pretrained"):
        taesd = load_pretrained_taesd(node["pretrained"], dtype)
    elif node.get("architecture") is not None:
        taesd = random_taesd(node["architecture"], int(node.get("init_seed", 0)))
        with quiet("diffusers"):  # it warns on every .to(dtype) that nothing needs fp32
            taesd.to(dtype)
    else:
        raise UserError(
            f"{KEY} names neither pretrained weights nor an architecture. Set "
            f"{KEY}.pretrained.path to a local copy of {HF_REPO} (or its hf_repo), or give "
            f"{KEY}.architecture and {KEY}.init_seed for random weights."
        )
    check_latent_channels(taesd, latent_channels)
    return taesd.requires_grad_(False).eval().to(device)


def random_taesd(architecture: Mapping, seed: int) -> AutoencoderTiny:
    """Random weights from `seed`, the global RNG left alone: the same in every process."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(**plain(architecture))


def load_pretrained_taesd(pretrained: Mapping, dtype: torch.dtype) -> AutoencoderTiny:
    """AutoencoderTiny.from_pretrained on a checked local folder; a load failure is a UserError."""
    from diffusers import AutoencoderTiny

    folder = local_folder(pretrained)
    check_folder(folder)
    try:
        return AutoencoderTiny.from_pretrained(
            folder,
            variant=variant_in(folder, pretrained.get("variant")),
            torch_dtype=dtype,
            local_files_only=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = " ".join(str(err).split())[:300]
        raise unusable(folder, f"diffusers cannot load it ({first})") from None


def check_folder(folder: Path) -> None:
    """A TAESD folder holds an AutoencoderTiny config.json and its weights."""
    config = folder / "config.json"
    if not config.is_file():
        raise unusable(folder, "it holds no config.json")
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (ValueError, AttributeError):
        raise unusable(folder, "its config.json is not a JSON object") from None
    if name != "AutoencoderTiny":
        raise unusable(folder, f"its config.json is for {name}, not AutoencoderTiny (TAESD)")
    if not any(folder.glob("diffusion_pytorch_model*.safetensors")) and not any(
        folder.glob("diffusion_pytorch_model*.bin")
    ):
        raise unusable(folder, "it holds no weights (diffusion_pytorch_model.safetensors)")


def check_latent_channels(taesd: AutoencoderTiny, latent_channels: int) -> None:
    found = taesd.config.latent_channels
    if found != latent_channels:
        raise UserError(
            f"The TAESD decoder in {KEY} takes {found}-channel latents, but this generator makes "
            f"{latent_channels}-channel ones: it was made for another model family (taesd3 and "
            f"taef1 take 16). Set {KEY}.pretrained.path to a local copy of {HF_REPO}."
        )


def unusable(folder: Path, why: str) -> UserError:
    return UserError(
        f"{KEY}.pretrained.path={folder} is not a usable TAESD decoder: {why}. Set "
        f"{KEY}.pretrained.path to a folder holding {HF_REPO}'s config.json and "
        "diffusion_pytorch_model.safetensors (e.g. `hf download madebyollin/taesdxl`), or "
        f"set it to null to look in the Hugging Face cache."
    )


def decode_taesd(taesd: AutoencoderTiny, latents: torch.Tensor) -> torch.Tensor:
    """Diffusion latents z (B, 4, h, w) → image (B, 3, 8h, 8w) (2h, 2w for TINY_TAESD) in [0, 1],
    fp32, differentiable in z; StableDiffusionXLPipeline's decode with `pipe.vae = taesd`.

    Latent space: the pipeline decodes `vae.decode(latents / vae.config.scaling_factor)`
    (diffusers 0.42, pipeline_stable_diffusion_xl.py L1287 and L1290; no latents_mean on an
    AutoencoderTiny config, L1276), and taesdxl's scaling_factor is 1.0 (its config.json; TAESD's
    README: "TAESD's scale_factor for latents is 1"). So TAESD takes z as it is, where SDXL's VAE
    takes z / 0.13025: the same z, the same picture (genart's SDXLGenerator.decode_latent).

    Range: DecoderTiny.forward (vae.py) soft-clamps z with `tanh(z / 3) * 3`, runs conv blocks
    trained to output [0, 1] (TAESD's own convention) and returns `x.mul(2).sub(1)`, ≈ [-1, 1] but
    unbounded; the pipeline's postprocess (image_processor.py, VaeImageProcessor.denormalize) is
    `(x * 0.5 + 0.5).clamp(0, 1)`. Here the clamp keeps a gradient (clamp_with_grad).
    """
    z = latents / taesd.config.scaling_factor  # (B, 4, h, w)
    image = taesd.decode(z.to(taesd.dtype), return_dict=False)[0]  # (B, 3, H, W) ≈ [-1, 1]
    return clamp_with_grad((image.float() + 1) / 2)
