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

_AMD = "measured on a 2-core AMD EPYC (AVX512-BF16, no AMX); docs/speed.md"
_AMD_POSED = "measured on that AMD EPYC held to {isa} (ONEDNN_MAX_CPU_ISA…); docs/speed.md"
_FP32 = dict(  # the libraries' own arithmetic: fp32 pixels stay those of taming and open_clip
    decoder_upsample="nearest_conv", decoder_layout="channels_last", attention="library"
)
_NATIVE_BF16 = dict(
    decoder_upsample="phases",  # 4/9 of the multiply-adds, no 4x upsampled tensor
    decoder_layout="contiguous",  # GroupNorm's channels_last bf16 backward is slow (ATen)
    decoder_reduced="autocast",  # GroupNorm and the softmax stay fp32 under autocast
    guide_reduced="cast",  # CPU autocast re-casts every weight on every call
    attention="bmm",  # two bf16 products and an fp32 softmax beat SDPA's math path
    resample="reduced",
)
_EMULATED_BF16 = dict(  # AVX2: bf16 asked for but emulated (the decoder 59x, CLIP 30x fp32's)
    _NATIVE_BF16,
    resample="fp32",  # emulated bf16 resampling products: 1.4x the fp32 ones at 64² (AVX2 pose)
)

# (kind, reduced?) → the choices. Every kind has both rows; `rule` says what stands behind each.
_RULES: dict[tuple[str, bool], dict[str, str]] = {
    ("avx512_bf16", True): dict(_NATIVE_BF16, rule=_AMD),
    ("avx512_bf16", False): dict(_FP32, rule=_AMD),
    ("amx_bf16", True): dict(
        _NATIVE_BF16,
        rule="not measured (no AMX machine since the plans came in): the AVX512-BF16 row, whose "
        "choices only remove work or copies; measure with python -m genart.tools.kernel_bench",
    ),
    ("amx_bf16", False): dict(_FP32, rule="fp32: the libraries' own kernels, as on every CPU"),
    # AVX-512 without bf16 dot products: bf16 costs ~2x fp32 (decoder 1.9x, CLIP 1.7x at 64²),
    # and the resampling products in bf16 still beat fp32's (0.6x)
    ("avx512", True): dict(_NATIVE_BF16, rule=_AMD_POSED.format(isa="AVX512_CORE")),
    ("avx512", False): dict(_FP32, rule=_AMD_POSED.format(isa="AVX512_CORE")),
    ("avx2", True): dict(_EMULATED_BF16, rule=_AMD_POSED.format(isa="AVX2")),
    ("avx2", False): dict(_FP32, rule=_AMD_POSED.format(isa="AVX2")),
    ("other", True): dict(
        _FP32,
        decoder_reduced="autocast",
        guide_reduced="cast",
        resample="reduced",
        rule="not measured (ARM and older x86): the libraries' own kernels",
    ),
    ("other", False): dict(_FP32, rule="not measured (ARM and older x86): the libraries' own"),
}


def kernel_plan(device: torch.device | str, dtype: torch.dtype) -> KernelPlan:
    """The plan for `device` at compute `dtype`: the rule's row for its kind (see _RULES)."""
    kind = device_kind(device)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if kind in ("cuda", "mps"):
        return _gpu_plan(kind, name)
    return KernelPlan(kind=kind, dtype=name, **_RULES[(kind, dtype != torch.float32)])


def _gpu_plan(kind: str, name: str) -> KernelPlan:
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
