"""SDXL's GPU memory options (genart/generators/sdxl_memory.py), each exercised on CPU with the
tiny components where it can be: bf16 weights, the attention kernel, VAE slicing and tiling, and
accelerate's model offload (onto the CPU itself); the CUDA-only calls through mocks that check
what diffusers and accelerate are asked to do, and for real behind the `gpu` marker."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from genart.errors import UserError
from genart.generators import sdxl_memory
from genart.generators.sdxl_memory import (
    MemoryOptions,
    apply_memory,
    cast_models,
    check_dtypes,
    check_memory,
    check_offload,
    check_vae_dtype,
    enable_offload,
    memory_options,
    offloaded,
    offloaded_left_alone,
    set_attention,
    set_vae_slicing,
    set_vae_tiling,
    wants_tiling,
)
from tests.sdxl_helpers import one_thread, sample, tiny, tiny_generator  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 1)
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def parts(generator) -> dict:
    return {name: getattr(generator, name) for name in MODELS}


def unet_noise(unet, seed: int = 0) -> torch.Tensor:
    """ε̂ of the tiny UNet for fixed random inputs, in the UNet's dtype; returned in fp32."""
    rng = torch.Generator().manual_seed(seed)
    dtype = unet.dtype
    latents = torch.randn(1, 4, 16, 24, generator=rng)  # (B, 4, h, w)
    hidden = torch.randn(1, 77, 64, generator=rng)  # (B, 77, D1 + D2)
    pooled = torch.randn(1, 32, generator=rng)  # (B, D2)
    time_ids = torch.tensor([[32.0, 48, 0, 0, 32, 48]])  # (B, 6)
    with torch.no_grad():
        return unet(
            latents.to(dtype),
            torch.tensor(500),
            encoder_hidden_states=hidden.to(dtype),
            added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)},
        ).sample.float()


# ---------------------------------------------------------------- the config node


def test_no_node_means_the_defaults():
    assert memory_options(None) == memory_options({}) == MemoryOptions()
    assert MemoryOptions() == MemoryOptions("sdpa", False, "auto", 1536 * 1536, "none")


@pytest.mark.parametrize(
    "node",
    [
        {"attention": "plain", "vae_slicing": True, "vae_tiling": True, "cpu_offload": "model"},
        {"vae_tiling": False, "cpu_offload": "sequential", "tile_above": 1},
    ],
)
def test_every_choice_passes(node):
    assert memory_options(node) == MemoryOptions(**node)


BAD_NODES = [  # (node, what the paragraph must say)
    ({"attn": "sdpa"}, r"generator\.memory\.attn=sdpa is not a memory option.*Did you mean generator\.memory\.attention\?"),
    ({"attention": "flash"}, r"generator\.memory\.attention=flash is not allowed: .*one of sdpa, plain"),
    ({"vae_tiling": "yes"}, r"vae_tiling=yes is not allowed: .*one of auto, true, false, e\.g\. generator\.memory\.vae_tiling=auto"),
    ({"vae_slicing": 1}, r"vae_slicing=1 is not allowed: .*one of false, true"),
    ({"cpu_offload": None}, r"cpu_offload=null is not allowed: .*one of none, model, sequential"),
    ({"cpu_offload": "gpu"}, r"cpu_offload=gpu is not allowed"),
    ({"tile_above": 0}, r"tile_above=0 is not allowed: .*whole number ≥ 1"),
    ({"tile_above": 1.5}, r"tile_above=1\.5 is not allowed"),
]  # fmt: skip


@pytest.mark.parametrize("node, message", BAD_NODES, ids=[str(n) for n, _ in BAD_NODES])
def test_a_bad_memory_option_is_one_paragraph(node, message):
    with pytest.raises(UserError, match=message) as caught:
        memory_options(node)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- dtypes


def test_fp16_on_a_cpu_without_fp16_units_is_refused(monkeypatch):
    monkeypatch.setattr(sdxl_memory, "cpu_fp16_native", lambda: False)
    for key, dtypes in (("generator.dtype", (torch.float16, torch.float32)), ("generator.vae_dtype", (torch.float32, torch.float16))):  # fmt: skip
        with pytest.raises(UserError, match=rf"{key}=fp16 on the CPU: .*emulates.*set {key}=bf16 .* or {key}=fp32") as caught:  # fmt: skip
            check_dtypes(*dtypes, CPU)
        assert "\n" not in str(caught.value)
    check_dtypes(torch.float16, torch.float16, CUDA)  # what fp16 is for
    monkeypatch.setattr(sdxl_memory, "cpu_fp16_native", lambda: True)  # AVX512-FP16, AMX-FP16
    check_dtypes(torch.float16, torch.float32, CPU)


def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch):
    import genart.speed.precision

    native = {"native": False, "units": [], "limited_by": []}
    monkeypatch.setattr(genart.speed.precision, "cpu_bf16", lambda: native)
    with pytest.warns(UserWarning, match=r"generator\.dtype=bf16 on a CPU without bf16 units"):
        check_dtypes(torch.bfloat16, torch.float32, CPU)
    native["native"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_dtypes(torch.bfloat16, torch.float32, CPU)


def test_an_fp16_vae_that_says_force_upcast_is_refused(tiny):
    from diffusers import AutoencoderKL

    assert tiny.vae.config.force_upcast  # as SDXL's own VAE config says
    with pytest.raises(UserError, match=r"vae_dtype=fp16 with a VAE that overflows.*madebyollin/sdxl-vae-fp16-fix") as caught:  # fmt: skip
        check_vae_dtype(tiny.vae, torch.float16)
    assert "\n" not in str(caught.value)
    for dtype in (torch.float32, torch.bfloat16):
        check_vae_dtype(tiny.vae, dtype)
    fixed = AutoencoderKL(**{**tiny.vae.config, "force_upcast": False})  # as the fp16-fix's config
    check_vae_dtype(fixed, torch.float16)


def test_bf16_unet_and_text_encoders_stay_close_to_fp32(tiny):
    """cast_models does for built models what from_pretrained's torch_dtype does for loaded ones;
    the VAE keeps its own dtype."""
    bf16 = copy.deepcopy(parts(tiny))
    cast_models(bf16, torch.bfloat16, torch.float32)
    assert {p.dtype for name in ("unet", "text_encoder", "text_encoder_2") for p in bf16[name].parameters()} == {torch.bfloat16}  # fmt: skip
    assert {p.dtype for p in bf16["vae"].parameters()} == {torch.float32}
    reference, reduced = unet_noise(tiny.unet), unet_noise(bf16["unet"])
    error = (reduced - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.03, error  # measured 0.0096 (bf16 keeps 8 bits of mantissa)


def test_a_bf16_sampled_image_stays_close_to_fp32():
    reference, reduced = tiny_generator(), tiny_generator()
    cast_models(parts(reduced), torch.bfloat16, torch.float32)
    image, expected = sample(reduced), sample(reference)  # (1, 3, H, W) in [0, 1]
    assert (image - expected).abs().mean() < 0.01  # measured 0.0017 (max 0.0099)


# ---------------------------------------------------------------- attention


def test_plain_and_sdpa_attention_are_the_same_attention(tiny):
    """A parity test: diffusers' AttnProcessor against torch's fused kernel, same weights."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet, vae = copy.deepcopy(tiny.unet), copy.deepcopy(tiny.vae)
    set_attention([unet, vae], "plain")
    assert {type(p) for m in (unet, vae) for p in m.attn_processors.values()} == {AttnProcessor}
    plain = unet_noise(unet)
    set_attention([unet, vae], "sdpa")
    assert {type(p) for m in (unet, vae) for p in m.attn_processors.values()} == {AttnProcessor2_0}
    assert torch.allclose(unet_noise(unet), plain, atol=1e-5)


# ---------------------------------------------------------------- VAE slicing and tiling


def decoder_calls(vae) -> list:
    calls = []
    vae.decoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    return calls


def test_sliced_decoding_of_a_batch_equals_the_whole_batch(tiny):
    vae = copy.deepcopy(tiny.vae)
    latents = torch.randn(3, 4, 16, 24)  # (B, 4, h, w)
    with torch.no_grad():
        whole = vae.decode(latents).sample
        set_vae_slicing(vae, True)
        calls = decoder_calls(vae)
        sliced = vae.decode(latents).sample
    assert [c[0] for c in calls] == [1, 1, 1]  # one latent at a time
    assert torch.allclose(sliced, whole, atol=1e-5)  # measured 3.2e-6


@pytest.mark.parametrize(
    "setting, size, tiles",
    [
        ("auto", (1024, 1024), False),
        ("auto", (1536, 1536), False),  # tile_above itself
        ("auto", (1544, 1536), True),
        ("auto", (4096, 512), False),  # 2 MP: a panorama below the threshold
        (True, (64, 64), True),
        (False, (8192, 8192), False),
    ],
)
def test_auto_tiling_is_a_rule_on_the_pixel_count(setting, size, tiles):
    assert wants_tiling(setting, size, MemoryOptions().tile_above) is tiles


def test_tiled_decoding_of_a_large_canvas_stays_close_to_whole(tiny):
    """A 160×96 canvas in the tiny VAE's 64-px tiles: 8 overlapping tiles, blended. Each tile's
    GroupNorms see only the tile, so pixels shift a little everywhere (random weights, random
    latent: mean 0.017 in [0, 1]); a different latent differs ~10x more."""
    vae = copy.deepcopy(tiny.vae)
    rng = torch.Generator().manual_seed(0)
    latents, other = torch.randn(2, 1, 4, 48, 80, generator=rng)  # (1, 4, h, w) each
    image = lambda z: ((vae.decode(z).sample + 1) / 2).clamp(0, 1)  # noqa: E731
    with torch.no_grad():
        whole, different = image(latents), image(other)
        set_vae_tiling(vae, True)
        calls = decoder_calls(vae)
        tiled = image(latents)
    assert len(calls) == 8 and tiled.shape == whole.shape == (1, 3, 96, 160)
    shift = (tiled - whole).abs().mean()
    assert shift < 0.03, shift  # measured 0.017 (max 0.19)
    assert shift < (different - whole).abs().mean() / 4


def test_tiling_leaves_a_canvas_of_one_tile_untouched_and_passes_gradients(tiny):
    vae = copy.deepcopy(tiny.vae)
    set_vae_tiling(vae, True)
    small = torch.randn(1, 4, 32, 32)  # exactly one tile: diffusers decodes it whole
    with torch.no_grad():
        tiled = vae.decode(small).sample
        set_vae_tiling(vae, False)
        assert torch.equal(tiled, vae.decode(small).sample)
    set_vae_tiling(vae, True)
    z = torch.randn(1, 4, 48, 80, requires_grad=True)  # latent optimisation decodes with grad
    vae.decode(z).sample.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# ---------------------------------------------------------------- CPU offload


@pytest.mark.parametrize("device", ["cpu", "mps"])
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_without_cuda_is_refused(mode, device):
    with pytest.raises(UserError, match=rf"cpu_offload={mode} with device={device}: .*needs a CUDA device.*cpu_offload=none") as caught:  # fmt: skip
        check_offload(mode, torch.device(device))
    assert "\n" not in str(caught.value)
    check_offload("none", torch.device(device))
    check_offload(mode, CUDA)


def test_check_memory_refuses_before_any_weight_is_read(monkeypatch):
    monkeypatch.setattr(sdxl_memory, "cpu_fp16_native", lambda: False)
    with pytest.raises(UserError, match="cpu_offload=model with device=cpu"):
        check_memory(MemoryOptions(cpu_offload="model"), torch.float32, torch.float32, "cpu")
    with pytest.raises(UserError, match="generator.dtype=fp16 on the CPU"):
        check_memory(MemoryOptions(), torch.float16, torch.float32, "cpu")


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_asks_diffusers_for_the_runs_cuda_device(tiny, monkeypatch, mode):
    """apply_memory calls the pipeline's own enable_*_cpu_offload with the run's device."""
    from diffusers import StableDiffusionXLPipeline

    calls = []
    for name in ("enable_model_cpu_offload", "enable_sequential_cpu_offload"):
        record = lambda self, name=name, **kwargs: calls.append((name, kwargs))  # noqa: E731
        monkeypatch.setattr(StableDiffusionXLPipeline, name, record)
    apply_memory(tiny.pipe, MemoryOptions(cpu_offload=mode), tiny.size, CUDA)
    assert calls == [(f"enable_{mode}_cpu_offload", {"device": CUDA})]
    calls.clear()
    apply_memory(tiny.pipe, MemoryOptions(), tiny.size, CUDA)
    assert calls == []


def test_model_offload_chains_accelerates_hooks_onto_cuda(monkeypatch):
    """Through diffusers' real enable_model_cpu_offload, accelerate mocked: each model gets
    cpu_offload_with_hook onto cuda:1, chained text encoders → UNet → VAE."""
    import accelerate

    generator, calls = tiny_generator(), []

    def hook(model, device, prev_module_hook=None):
        calls.append((model, device, prev_module_hook))
        return model, f"hook {len(calls)}"

    monkeypatch.setattr(accelerate, "cpu_offload_with_hook", hook)
    enable_offload(generator.pipe, "model", CUDA)
    models = [getattr(generator, name) for name in ("text_encoder", "text_encoder_2", "unet", "vae")]  # fmt: skip
    assert [(m, d) for m, d, _ in calls] == [(m, CUDA) for m in models]
    assert [prev for _, _, prev in calls] == [None, "hook 1", "hook 2", "hook 3"]


def test_sequential_offload_puts_every_model_behind_accelerate_onto_cuda(monkeypatch):
    import accelerate

    generator, calls = tiny_generator(), []
    monkeypatch.setattr(accelerate, "cpu_offload", lambda model, device, **kw: calls.append((model, device)))  # fmt: skip
    enable_offload(generator.pipe, "sequential", CUDA)
    assert sorted(id(m) for m, _ in calls) == sorted(id(getattr(generator, n)) for n in MODELS)
    assert {d for _, d in calls} == {CUDA}


def test_model_offload_runs_on_the_cpu_and_changes_no_pixel():
    """Offload onto the CPU itself: accelerate's hooks really run (only the device is the same),
    the image is bit for bit the one without them, and gradients still reach θ."""
    plain, hooked = tiny_generator(), tiny_generator()
    enable_offload(hooked.pipe, "model", CPU)
    assert all(offloaded(getattr(hooked, name)) for name in MODELS)
    assert torch.equal(sample(hooked), sample(plain))
    hooked.z.grad = None
    hooked().mean().backward()  # the VAE's decode under its hook
    assert hooked.z.grad.abs().sum() > 0


def test_moving_the_generator_leaves_offloaded_models_to_their_hooks(tiny):
    """render calls generator.to(device): inside offloaded_left_alone only θ and models without
    a hook move (here: cast, which _apply does alike), the offloaded ones stay where they are."""
    generator = tiny_generator()
    enable_offload(generator.pipe, "model", CPU)
    with offloaded_left_alone(generator):
        generator.double()
    assert generator.z.dtype == torch.float64
    assert all(p.dtype == torch.float32 for name in MODELS for p in getattr(generator, name).parameters())  # fmt: skip
    assert list(generator._modules) == list(tiny._modules)  # all back, in order


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@no_cuda
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_on_cuda_makes_the_same_image_with_the_weights_off_the_gpu(mode):
    cuda = torch.device("cuda")
    reference = tiny_generator(device="cuda")
    generator = tiny_generator()
    apply_memory(generator.pipe, MemoryOptions(cpu_offload=mode), generator.size, cuda)
    generator.z.data = generator.z.data.to(cuda)
    image, expected = sample(generator), sample(reference)
    assert torch.allclose(image.cpu(), expected.cpu(), atol=1e-4)
    assert generator.unet.conv_in.weight.device.type != "cuda"  # offloaded again after the VAE ran


@pytest.mark.gpu
@no_cuda
def test_fp16_unet_on_cuda_stays_close_to_fp32():
    reference, reduced = tiny_generator(device="cuda"), tiny_generator(device="cuda")
    cast_models(parts(reduced), torch.float16, torch.float32)
    image, expected = sample(reduced), sample(reference)
    assert (image - expected).abs().mean() < 0.01


# ---------------------------------------------------------------- end to end (python -m genart)

CLI = ["generator=sdxl_tiny", "guide=clip_tiny", "logger=none", "updater=sample", "device=cpu"]
CLI += ["generator.sampler.steps=1", "size=[64,64]", "threads=1"]


def run_cli(tmp_path, *overrides):
    from tests.conftest import cli

    return cli("genart", *CLI, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, changes, message",
    [
        ("++generator.memory.cpu_offload=model", {"memory": {"cpu_offload": "model"}}, "generator.memory.cpu_offload=model with device=cpu"),
        ("++generator.memory.vae_tiling=maybe", {"memory": {"vae_tiling": "maybe"}}, "generator.memory.vae_tiling=maybe is not allowed"),
        ("generator.dtype=fp16", {"dtype": "fp16"}, "generator.dtype=fp16 on the CPU"),
    ],
)  # fmt: skip
def test_cli_an_impossible_memory_setting_is_one_paragraph(tmp_path, override, changes, message):
    if sdxl_memory.cpu_fp16_native():
        pytest.skip("this CPU computes fp16 natively: fp16 on it is allowed")
    out = run_cli(tmp_path, override)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (line,) = [ln for ln in out.stderr.splitlines() if message in ln]
    assert line.startswith("genart: "), out.stderr


@pytest.mark.slow
def test_cli_memory_options_that_fit_the_cpu_run(tmp_path):
    options = ["attention=plain", "vae_slicing=true", "vae_tiling=true", "tile_above=1"]
    out = run_cli(tmp_path, "generator.dtype=bf16", *(f"++generator.memory.{o}" for o in options))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "final.png").exists()
