"""Helpers for models stored as diffusers/transformers folders (SDXL's parts, TAESD): where a
resolved `pretrained` node points, which weight variant a folder holds, and quieting the libraries'
loggers while they load."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path


def local_folder(pretrained: Mapping) -> Path:
    if not pretrained.get("path"):
        raise ValueError("pretrained['path'] is unset: resolve it with genart.pretrained first")
    return Path(pretrained["path"])


def variant_in(folder: Path, variant: str | None) -> str | None:
    """The variant if the folder holds its weights, else None: a component without them loads its
    plain weights, as DiffusionPipeline.from_pretrained falls back."""
    found = variant and any(folder.glob(f"*.{variant}.safetensors"))
    return variant if found or (variant and any(folder.glob(f"*.{variant}.bin"))) else None


@contextmanager
def quiet(*names: str):
    """Hold these libraries' loggers to errors no one else will report (CRITICAL) for a while."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
