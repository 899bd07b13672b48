"""Precision and compilation of the frozen models, applied the way that measured fastest.

Each model sets its own precision through a `set_precision(dtype)` hook, because how bf16 is
applied matters more than whether (2-core AVX512-BF16 CPU, forward + backward, best of 4): the VQGAN
decoder runs under autocast (0.95 s; cast weights 1.15 s; fp32 3.35 s), while CLIP's image tower
gets its frozen weights cast (32 views: 1.08 s; autocast 1.16 s) and its attention products in
bf16 (genart.speed.vit), and the cutouts resample in bf16 products. Matrix products accumulate in fp32;
softmax, θ, the optimiser, q(z), the augmentations, the spherical distance, the normalisations
and the loss reductions stay fp32 (bf16 on the whole step gave NaN losses). A generator without
the hook runs under autocast instead (run.autocast_for).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from genart.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` → bf16 on a CUDA device with bf16 support, else fp32 (CPU stays exact by default)."""
    if precision == "auto":
        cuda = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda else "fp32"
    if precision not in DTYPES:
        raise UserError(f"precision={precision} is not known; use auto, fp32, bf16 or fp16.")
    return precision


def dtype_of(precision: str) -> torch.dtype:
    """The compute dtype of a resolved precision name."""
    return DTYPES[precision]


def has_precision_hook(module: object) -> bool:
    return callable(getattr(module, "set_precision", None))


def apply_precision(modules: Iterable[object], precision: str) -> None:
    """Call each model's `set_precision` (also at fp32: it picks the fastest exact layout)."""
    dtype = dtype_of(precision)
    for module in modules:
        if has_precision_hook(module):
            module.set_precision(dtype)


def compile_models(modules: Iterable[object]) -> None:
    """torch.compile each part's hot code (`compile_hot`); the first steps pay the compile.

    Measured per part (genart.tools.bench --compile, 256², 2 CPU threads, bf16): CLIP's image tower
    1.02 → 0.95 s forward + backward, while the compiled VQGAN decoder was slower (0.85 → 1.03 s),
    so it has no hook and stays eager, as do the augmentations: kornia's own kernel compile would
    recompile for every new number of chosen views (cutouts.transform_chosen), and ColorJitter
    eager on all 32 views (115 ms with genart.speed.color's hue) was already near compiled (111 ms).
    """
    for module in modules:
        hook = getattr(module, "compile_hot", None)
        if callable(hook):
            hook()
