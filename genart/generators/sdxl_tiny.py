"""Tiny random SDXL components from diffusers' and transformers' own classes, built offline as
diffusers' own SDXL pipeline tests build theirs (tests/pipelines/stable_diffusion_xl)."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import torch

# open_clip ships CLIP's BPE merges; its first line is a header, and CLIP keeps 48894 merges
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2


def bpe_path() -> Path:
    """open_clip's shipped BPE file, found without importing open_clip (~11 s)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "sdxl_tiny's tokenizers read open_clip's BPE vocabulary: install open_clip_torch"
        )
    return Path(next(iter(spec.submodule_search_locations))) / BPE_FILE


@functools.lru_cache(maxsize=1)
def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab and merges, in the order of CLIP's SimpleTokenizer (so ids match open_clip's)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    units = list(bytes_to_unicode().values())
    tokens = [*units, *(u + "</w>" for u in units), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer():
    """A CLIPTokenizer without files: transformers 5 ignores vocab_file=, and the pipeline needs
    model_max_length=77 (without it, an OverflowError)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def tiny_components(architecture: dict, seed: int) -> dict:
    """unet, vae, text encoders, tokenizers: random weights from `seed`, global RNG left alone."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = {
            "unet": UNet2DConditionModel(**architecture["unet"]),
            "vae": AutoencoderKL(**architecture["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**architecture["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig(**architecture["text_encoder_2"])
            ),
        }
    return {**parts, "tokenizer": clip_tokenizer(), "tokenizer_2": clip_tokenizer()}
