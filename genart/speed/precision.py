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

import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from genart.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` → bf16 where the device computes bf16 natively, else fp32.

    Native: a CUDA device with bf16 support, or a CPU with AVX512-BF16 or AMX that ATen and
    oneDNN may use (`cpu_bf16`). `auto_cpu_fp32`: bf16 on CUDA only, fp32 on every CPU (what
    `auto` stands for in a saved preset or run that recorded no resolved precision).
    """
    if precision in ("auto", "auto_cpu_fp32"):
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        native = device.type == "cpu" and precision == "auto" and cpu_bf16()["native"]
        return "bf16" if native else "fp32"
    if precision not in DTYPES:
        raise UserError(
            f"precision={precision} is not known; use auto, fp32, bf16 or fp16 "
            "(or auto_cpu_fp32: auto, but fp32 on every CPU)."
        )
    if device.type == "cpu" and precision != "fp32" and not cpu_native(precision):
        warn_emulated(precision)
    return precision


class EmulatedPrecisionWarning(UserWarning):
    """A reduced precision this CPU only emulates: far slower than fp32."""


def warn_emulated(precision: str) -> None:
    """Say once that `precision` runs emulated here (a preset frozen on a bf16 CPU, say)."""
    import warnings

    if precision == "fp16":
        limits = "no AVX512-FP16 or AMX-FP16 units"
    else:
        limits = "; ".join(cpu_bf16()["limited_by"]) or "no AVX512-BF16 or AMX units"
    warnings.warn(
        f"precision={precision} is emulated on this CPU ({limits}): where measured, the step's "
        "parts ran 2x (AVX-512) to 30-60x (AVX2) slower than in fp32 (genart.tools.kernel_bench). "
        "Set precision=auto (fp32 here) unless you need this precision's rounding, e.g. to "
        "match a run from a CPU with native bf16 (pixels differ across CPU kinds anyway).",
        EmulatedPrecisionWarning,
        stacklevel=2,
    )


# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) that still include bf16 dot products
_BF16_ISA = re.compile(r"^(ALL|DEFAULT|.*(BF16|AMX|FP16|AVX10).*)$")


def cpu_bf16() -> dict:
    """Whether this CPU computes bf16 natively: its bf16 units, and what limits their use.

    AVX512-BF16 or AMX-BF16 in the hardware, and neither ATen's kernels (ATEN_CPU_CAPABILITY
    below AVX512) nor oneDNN's (ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16) held back from them:
    a user who forces AVX2 gets fp32, as bf16 there would be emulated and slower than fp32.
    """
    units = [name for name, has in _bf16_units().items() if has]
    capability = torch.backends.cpu.get_cpu_capability()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    limits = [f"ATen CPU capability {capability}"] if capability != "AVX512" else []
    if onednn and not _BF16_ISA.match(onednn):
        limits.append(f"ONEDNN_MAX_CPU_ISA={onednn}")
    return {"units": units, "limited_by": limits, "native": bool(units) and not limits}


def cpu_native(precision: str) -> bool:
    """Does this CPU compute `precision` (bf16 or fp16) natively? fp16 needs AVX512-FP16 or
    AMX-FP16 (Sapphire Rapids, Granite Rapids): elsewhere a 1024² fp16 matrix product took 3.2 s
    against fp32's 50 ms (2-core AMD EPYC)."""
    if precision == "fp16":
        return bool({"avx512_fp16", "amx_fp16"} & _proc_cpu_flags())
    return cpu_bf16()["native"]


def _bf16_units() -> dict[str, bool]:
    """The CPU's bf16 instruction sets, from torch's cpuinfo, else /proc/cpuinfo's flags."""
    try:
        return {
            "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
            "amx_bf16": bool(torch.cpu._is_amx_tile_supported()),
        }
    except AttributeError:
        flags = _proc_cpu_flags()
        return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def _proc_cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}


def dtype_of(precision: str) -> torch.dtype:
    """The compute dtype of a resolved precision name."""
    return DTYPES[precision]


def has_precision_hook(module: object) -> bool:
    return callable(getattr(module, "set_precision", None))


def apply_precision(modules: Iterable[object], precision: str, plan=None) -> None:
    """Call each model's `set_precision(dtype, plan)` (also at fp32: it picks the fastest exact
    layout). Without a `plan`, each model takes genart.speed.kernels' rule for its device."""
    dtype = dtype_of(precision)
    for module in modules:
        if has_precision_hook(module):
            module.set_precision(dtype, plan)


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
