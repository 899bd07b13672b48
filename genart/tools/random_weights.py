"""Random weights of genart's real architectures, written in the real on-disk formats (a
taming-style Lightning `last.ckpt`, an open_clip state-dict file), so that benchmarks load the
real models from disk, through `pretrained.path`, with nothing downloaded."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch
from omegaconf import OmegaConf

from genart.files import write_atomic


def option_config(group: str, option: str):
    """One option file of genart's conf/ as written (interpolations left unresolved)."""
    return OmegaConf.load(str(files("conf") / group / f"{option}.yaml"))


def write_vqgan_checkpoint(path: Path, option: str = "vqgan", seed: int = 0) -> Path:
    """A `last.ckpt` as taming-transformers saves it (pytorch-lightning ~1.0: the model under
    `state_dict`), random weights of conf/generator/<option>.yaml's architecture."""
    from genart.generators.vqgan import build_model, plain

    node = option_config("generator", option)
    model = build_model(plain(node.ddconfig), node.n_embed, node.embed_dim, None, seed)
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": model.state_dict(),
    }
    write_atomic(Path(path), lambda part: torch.save(checkpoint, part))
    return Path(path)


def write_open_clip_weights(path: Path, option: str = "clip_vitb32", seed: int = 0) -> Path:
    """An open_clip state-dict file (as open_clip_pytorch_model.bin holds), random weights of the
    first model of conf/guide/<option>.yaml, built as genart builds it (arch + tag's settings)."""
    from genart.guides import CLIPModel

    node = next(iter(option_config("guide", option).models.values()))
    config = node.get("model_config")
    clip = CLIPModel(node.arch, init_seed=seed, tag=node.get("tag"), model_config=config)
    state = clip.model.state_dict()
    write_atomic(Path(path), lambda part: torch.save(state, part))
    return Path(path)


def ensure_real_weights(folder: Path) -> dict[str, Path]:
    """The random VQGAN and CLIP ViT-B/32 files in `folder`, written once and then reused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"vqgan": folder / "random_vqgan_f16_16384.ckpt", "clip": folder / "random_vitb32.bin"}
    if not paths["vqgan"].is_file():
        write_vqgan_checkpoint(paths["vqgan"])
    if not paths["clip"].is_file():
        write_open_clip_weights(paths["clip"])
    return paths
