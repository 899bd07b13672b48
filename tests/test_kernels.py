"""genart.speed.kernels: each CPU kind gets its rule's plan, every path runs here, runs record it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from genart.cutouts import Cutouts
from genart.speed import kernels, precision
from genart.speed.kernels import CHOICES, KINDS, cpu_kind, kernel_plan, with_choices
from tests.conftest import TINY, cli, compose, run_tiny

BF16 = torch.bfloat16


def pose(monkeypatch, units=(), capability="AVX512", onednn=None):
    """This process, seen as a CPU with `units` and ATen's `capability` (dispatch only)."""
    flags = {"avx512_bf16": "avx512_bf16" in units, "amx_bf16": "amx_bf16" in units}
    monkeypatch.setattr(precision, "_bf16_units", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if onednn:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


@pytest.mark.parametrize(
    ("units", "capability", "onednn", "kind"),
    [
        (("amx_bf16", "avx512_bf16"), "AVX512", None, "amx_bf16"),
        (("amx_bf16", "avx512_bf16"), "AVX512", "AVX512_CORE_AMX", "amx_bf16"),
        (("amx_bf16", "avx512_bf16"), "AVX512", "AVX512_CORE_BF16", "avx512_bf16"),
        (("avx512_bf16",), "AVX512", None, "avx512_bf16"),
        ((), "AVX512", None, "avx512"),
        (("avx512_bf16",), "AVX512", "AVX512_CORE", "avx512"),
        (("avx512_bf16",), "AVX512", "AVX2", "avx2"),
        (("amx_bf16",), "AVX2", None, "avx2"),
        ((), "DEFAULT", None, "other"),
    ],
)
def test_the_cpu_kind_is_its_isa_after_what_the_environment_holds_back(
    units, capability, onednn, kind, monkeypatch
):
    pose(monkeypatch, units, capability, onednn)
    assert cpu_kind() == kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, BF16, torch.float16])
def test_every_kind_has_a_plan_with_a_stated_rule(kind, dtype, monkeypatch):
    monkeypatch.setattr(kernels, "cpu_kind", lambda: kind)
    device = kind if kind in ("cuda", "mps") else "cpu"
    plan = kernel_plan(device, dtype)
    assert plan.kind == kind and plan.rule
    assert all(getattr(plan, part) in options for part, options in CHOICES.items())
    assert plan == kernel_plan(device, dtype)  # a rule, not a timing: the same plan every time


def test_fp32_plans_keep_the_exact_arithmetic_of_the_libraries(monkeypatch):
    """fp32 pixels may not depend on the CPU kind's rule beyond the libraries' own kernels."""
    for kind in KINDS[:5]:
        monkeypatch.setattr(kernels, "cpu_kind", lambda kind=kind: kind)
        plan = kernel_plan("cpu", torch.float32)
        assert (plan.decoder_upsample, plan.attention) == ("nearest_conv", "library"), kind


def test_a_plan_refuses_an_unknown_choice():
    with pytest.raises(ValueError, match="decoder_layout='sideways'"):
        with_choices(kernel_plan("cpu", BF16), decoder_layout="sideways")


# ---------------------------------------------------------------- every path, on this machine


def tiny_generator():
    from hydra.utils import instantiate

    return instantiate(compose(TINY).generator)


def tiny_clip():
    from hydra.utils import instantiate

    return next(iter(instantiate(compose(TINY).guide).models.values()))


PLANS = [
    dict(decoder_upsample=u, decoder_layout=layout, decoder_reduced=r)
    for u in CHOICES["decoder_upsample"]
    for layout in CHOICES["decoder_layout"]
    for r in CHOICES["decoder_reduced"]
]


@pytest.mark.parametrize("choices", PLANS, ids=lambda c: "-".join(c.values()))
def test_every_decoder_path_decodes_like_fp32_and_reaches_z(choices):
    generator = tiny_generator()
    with torch.no_grad():
        exact = generator()
    generator.set_precision(BF16, with_choices(kernel_plan("cpu", BF16), **choices))
    calls = []  # taming's upsampling modules, in the decoder the plan runs
    for up in generator.decoder.decoder.up[1:]:
        up.upsample.register_forward_hook(lambda *_: calls.append(1))
    layouts = []  # the memory format the decoder's first convolution receives
    generator.decoder.decoder.conv_in.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    image = generator()
    assert bool(calls) == (choices["decoder_upsample"] == "nearest_conv")
    assert layouts == [choices["decoder_layout"] == "channels_last"]
    assert (image - exact).abs().mean() < 0.02  # bf16 rounding, not another function
    image.square().sum().backward()
    assert generator.z.grad is not None and generator.z.grad.abs().sum() > 0
    weights = {p.dtype for p in generator.decoder.decoder.parameters()}
    assert weights == ({BF16} if choices["decoder_reduced"] == "cast" else {torch.float32})


@pytest.mark.parametrize("attention", CHOICES["attention"])
@pytest.mark.parametrize("reduced", CHOICES["guide_reduced"])
def test_every_guide_path_embeds_like_fp32(attention, reduced):
    pixels = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    exact = tiny_clip().encode_image(pixels)
    model = tiny_clip()
    plan = with_choices(kernel_plan("cpu", BF16), attention=attention, guide_reduced=reduced)
    model.set_precision(BF16, plan)
    got = model.encode_image(pixels.requires_grad_())
    assert F.cosine_similarity(got, exact).min() > 0.99
    got.sum().backward()
    assert pixels.grad.abs().sum() > 0
    swapped = any(type(m).__name__ == "Attention" for m in model.model.visual.modules())
    assert swapped == (attention == "bmm")
    assert model._dtype() == (torch.float32 if reduced == "autocast" else BF16)


@pytest.mark.parametrize("resample", CHOICES["resample"])
def test_every_resample_path_runs_in_the_plans_dtype(resample):
    cutouts = Cutouts(cutn=4, cut_size=32)
    cutouts.set_precision(BF16, with_choices(kernel_plan("cpu", BF16), resample=resample))
    assert cutouts.dtype == (BF16 if resample == "reduced" else torch.float32)


def test_an_amx_plan_is_the_one_the_models_run(monkeypatch):
    """AMX cannot run here: check that its plan is dispatched to each part."""
    pose(monkeypatch, ("amx_bf16", "avx512_bf16"))
    plan = kernel_plan("cpu", BF16)
    assert plan.kind == "amx_bf16"
    generator, model = tiny_generator(), tiny_clip()
    generator.set_precision(BF16)
    model.set_precision(BF16)
    assert generator.plan == plan
    assert generator.decoder.phases == (plan.decoder_upsample == "phases")
    swapped = any(type(m).__name__ == "Attention" for m in model.model.visual.modules())
    assert swapped == (plan.attention == "bmm")


# ---------------------------------------------------------------- runs record their plan


def test_result_json_records_the_plan_the_run_used(tmp_path):
    run_tiny(tmp_path / "run", ["steps=1", "precision=bf16"])
    result = json.loads((tmp_path / "run/result.json").read_text())
    assert result["kernels"] == kernel_plan("cpu", BF16).as_dict()
    assert result["kernels"]["kind"] == cpu_kind()


@pytest.mark.slow
def test_a_cpu_held_to_avx2_runs_its_own_plan(tmp_path):
    """The ISA limits are read when torch loads: a fresh process, as a user would set them."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = cli(
        "genart", *TINY, "steps=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "run/result.json").read_text())
    assert result["kernels"]["kind"] == "avx2" and result["precision"] == "fp32"
    assert result["kernels"]["decoder_upsample"] == "nearest_conv"


def test_a_precision_this_cpu_only_emulates_is_named_in_a_warning(monkeypatch):
    pose(monkeypatch, (), "AVX2")
    with pytest.warns(precision.EmulatedPrecisionWarning, match="precision=bf16 is emulated"):
        assert precision.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert precision.resolve_precision("auto", torch.device("cpu")) == "fp32"  # and no warning


@pytest.mark.parametrize(("kind", "resample"), [("avx2", "fp32"), ("avx512", "reduced")])
def test_bf16_resamples_in_fp32_products_only_where_that_measured_faster(
    kind, resample, monkeypatch
):
    """AVX2's emulated bf16 products cost 1.4x fp32's; AVX-512 without bf16 units: 0.6x."""
    monkeypatch.setattr(kernels, "cpu_kind", lambda: kind)
    assert kernel_plan("cpu", BF16).resample == resample
    monkeypatch.setattr(kernels, "cpu_kind", lambda: "avx512_bf16")
    assert kernel_plan("cpu", BF16).resample == "reduced"


def test_fp16_on_a_cpu_without_fp16_units_is_named_in_a_warning(monkeypatch):
    monkeypatch.setattr(precision, "_proc_cpu_flags", lambda: {"avx512_bf16", "avx512f"})
    with pytest.warns(precision.EmulatedPrecisionWarning, match="no AVX512-FP16 or AMX-FP16"):
        precision.resolve_precision("fp16", torch.device("cpu"))
    monkeypatch.setattr(precision, "_proc_cpu_flags", lambda: {"avx512_fp16"})
    assert precision.cpu_native("fp16")
