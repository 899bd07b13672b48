"""Which kernel and layout each part of the step uses, per CPU kind and compute dtype, by a rule.

A rule, not a timing at start-up: the choices below change the arithmetic (a phase convolution
sums other products than taming's upsample-then-convolve; autocast rounds other tensors than cast
weights do), so picking them by timing would let the same config give other pixels on a busier
day. Each choice here was measured with `python -m genart.tools.kernel_bench`, which times every
candidate of every part on the machine at hand, once per CPU kind this CPU can pose as
(ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY hold it back); `result.json` records the plan a run
used under `kernels`. docs/speed.md keeps the measurements behind each row.

The parts:
* `decoder_upsample`: VQGAN's 2x upsampling, `phases` (four 2×2 convolutions of the small
  input, genart.speed.decoder) or `nearest_conv` (taming's nearest 2x, then a 3×3 convolution).
* `decoder_layout`: the decoder's activations, `channels_last` or `contiguous`.
* `decoder_reduced`: below fp32, the decoder runs under `autocast` or with `cast` weights.
* `guide_reduced`: below fp32, CLIP's image tower runs with `cast` weights or under `autocast`.
* `attention`: the ViT's attention products, `bmm` (genart.speed.vit.Attention: two batched
  products in the tower's dtype, softmax fp32) or `library` (torch's MultiheadAttention).
* `resample`: the cutouts' resampling products in the compute dtype (`reduced`) or `fp32`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

import torch

from genart.speed.precision import cpu_bf16

CHOICES = {  # part → its options
    "decoder_upsample": ("phases", "nearest_conv"),
    "decoder_layout": ("channels_last", "contiguous"),
    "decoder_reduced": ("autocast", "cast"),
    "guide_reduced": ("cast", "autocast"),
    "attention": ("bmm", "library"),
    "resample": ("reduced", "fp32"),
}
PARTS = tuple(CHOICES)
KINDS = ("amx_bf16", "avx512_bf16", "avx512", "avx2", "other", "cuda", "mps")


@dataclass(frozen=True)
class KernelPlan:
    """One choice per part (see the module docstring) for one CPU kind and compute dtype."""

    kind: str  # amx_bf16 | avx512_bf16 | avx512 | avx2 | other | cuda | mps
    dtype: str  # fp32 | bf16 | fp16
    decoder_upsample: str = "nearest_conv"
    decoder_layout: str = "contiguous"
    decoder_reduced: str = "autocast"
    guide_reduced: str = "cast"
    attention: str = "library"
    resample: str = "reduced"
    rule: str = ""  # why: the measurement or reasoning behind this row

    def __post_init__(self) -> None:
        for part, options in CHOICES.items():
            if getattr(self, part) not in options:
                raise ValueError(f"{part}={getattr(self, part)!r}: choose one of {options}")

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- the CPU kind

# ONEDNN_MAX_CPU_ISA values below AVX-512 (oneDNN's names; anything else leaves AVX-512 on)
_BELOW_AVX512 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


def cpu_kind() -> str:
    """The CPU as the kernels see it: its vector ISA, after what the environment holds back.

    amx_bf16 (AMX tiles: Sapphire Rapids and later), avx512_bf16 (e.g. AMD Zen 4/5, Cooper
    Lake), avx512 (AVX-512 without bf16: Skylake-SP to Ice Lake), avx2, or other (ARM, older).
    """
    info = cpu_bf16()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if info["native"]:
        amx_allowed = not onednn or onednn in ("ALL", "DEFAULT") or "AMX" in onednn
        return "amx_bf16" if "amx_bf16" in info["units"] and amx_allowed else "avx512_bf16"
    capability = torch.backends.cpu.get_cpu_capability()  # ATen's: AVX512, AVX2, DEFAULT, …
    if capability == "AVX512" and onednn not in _BELOW_AVX512:
        return "avx512"
    if capability in ("AVX512", "AVX2"):
        return "avx2"
    return "other"


def device_kind(device: torch.device | str) -> str:
    device = torch.device(device)
    return cpu_kind() if device.type == "cpu" else device.type


# ---------------------------------------------------------------- the rule

_MEASURED_AMD = "measured on a 2-core AMD EPYC (Zen 4, AVX512-BF16, no AMX), docs/speed.md"

# (kind, reduced?) → the choices. Kinds not listed fall back to the row of the nearest ISA.
_RULES: dict[tuple[str, bool], dict[str, str]] = {
    ("avx512_bf16", True): dict(
        decoder_upsample="phases",
        decoder_layout="contiguous",
        decoder_reduced="autocast",
        guide_reduced="cast",
        attention="bmm",
        resample="reduced",
        rule=_MEASURED_AMD,
    ),
    ("avx512_bf16", False): dict(
        decoder_upsample="nearest_conv",
        decoder_layout="channels_last",
        attention="library",
        resample="reduced",
        rule=_MEASURED_AMD,
    ),
}


def kernel_plan(device: torch.device | str, dtype: torch.dtype) -> KernelPlan:
    """The plan for `device` at compute `dtype`: the rule's row for its kind (see _RULES)."""
    kind = device_kind(device)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    reduced = dtype != torch.float32
    if kind in ("cuda", "mps"):
        return _gpu_plan(kind, name, reduced)
    row = _RULES.get((kind, reduced)) or _RULES[(_nearest_measured(kind), reduced)]
    return KernelPlan(kind=kind, dtype=name, **row)


def _nearest_measured(kind: str) -> str:
    """A kind without its own measured row uses the row of the ISA closest below it."""
    return {"amx_bf16": "avx512_bf16"}.get(kind, "avx512_bf16")


def _gpu_plan(kind: str, name: str, reduced: bool) -> KernelPlan:
    """GPUs: the libraries' own fused kernels (cuDNN convs, SDPA), channels_last for convs."""
    return KernelPlan(
        kind=kind,
        dtype=name,
        decoder_upsample="nearest_conv",
        decoder_layout="channels_last",
        decoder_reduced="autocast",
        guide_reduced="cast",
        attention="library",
        resample="reduced",
        rule="GPUs: the libraries' fused kernels (cuDNN, SDPA); not tuned by genart",
    )


def with_choices(plan: KernelPlan, **choices: str) -> KernelPlan:
    """`plan` with some parts chosen otherwise (genart.tools.kernel_bench times each candidate)."""
    return replace(plan, rule="chosen by hand", **choices)


def plan_or_rule(plan: KernelPlan | None, device: torch.device | str, dtype: torch.dtype):
    """The plan a `set_precision(dtype, plan=None)` hook was given, else the rule's."""
    return plan if plan is not None else kernel_plan(device, dtype)
