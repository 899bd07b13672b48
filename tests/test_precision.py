"""Speed without a different result: bf16 fidelity, the bench's report, frozen weights."""

from __future__ import annotations

import json
import platform

import pytest
import torch

from genart.errors import UserError
from genart.speed.precision import resolve_precision
from genart.speed.vit import Attention, ClassTokenBlock
from genart.tools import bench
from tests.conftest import REPO, cli, compose

TINY = {
    "steps": 1,
    "warmup": 0,
    "size": [64, 64],
    "cutn": 8,
    "precision": "bf16",
    "compile": False,
    "fidelity_steps": 50,
    "threads": None,
    "generator": "vqgan_tiny",
    "guide": "clip_tiny",
    "seed": 0,
    "overrides": [],
}
# A clearly falling loss: with noise and augmentations the tiny random models' loss wanders.
FALLING = ["optimizer.lr=0.2", "cutouts.noise=0", "cutouts.augmentations=[]"]


def test_bf16_loss_falls_and_stays_within_5_percent_of_fp32s_decrease():
    """Gap measured on fp32's own trajectory (same θ_t, crops): the precision error alone.

    Free-running runs part after a few steps whatever the cause (bench.child_fidelity): fp32
    with its gradient perturbed by as much as bf16 perturbs it parts from fp32 as much.
    """
    result = bench.child_fidelity({**TINY, "cutn": 32, "overrides": FALLING}, floor=False)
    assert result["falls"] and result["fp32_decrease"] > 0.05
    assert result["along_share"] <= 0.05, result["along_share"]
    assert result["along_grad_cos_min"] > 0.98
    assert result["pass"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frozen_models_get_no_weight_gradients(precision):
    from genart.render import guided_step

    run, _ = bench.build_genart({**TINY, "precision": precision})
    guided_step(run, 0)
    theta = {id(p) for p in run.generator.theta()}
    frozen = [
        p for p in [*run.generator.parameters(), *run.guide.parameters()] if id(p) not in theta
    ]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in run.generator.theta())


def test_bf16_runs_the_frozen_models_reduced_and_keeps_theta_and_outputs_fp32():
    run, _ = bench.build_genart({**TINY, "precision": "bf16"})
    generator, clip = run.generator, next(iter(run.guide.models.values()))
    seen = []
    generator.model.decoder.conv_out.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    image = generator()
    assert seen == [torch.bfloat16]  # the decoder ran under autocast
    assert generator.codebook.dtype == generator.z.dtype == torch.float32
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert next(clip.model.visual.parameters()).dtype == torch.bfloat16  # cast once, frozen
    assert next(clip.model.transformer.parameters()).dtype == torch.float32  # text tower
    assert run.guide.encode_image(torch.rand(2, 3, 64, 64))[0].dtype == torch.float32


def test_fast_clip_layout_computes_the_same_embeddings():
    """Sequence-first attention, matmul patch embedding and math attention: same function."""
    from hydra.utils import instantiate

    cfg = compose(["guide=clip_tiny"])
    stock = next(iter(instantiate(cfg.guide).models.values()))
    fast = next(iter(instantiate(cfg.guide).models.values()))
    fast.set_precision(torch.float32)
    pixels = torch.rand(4, 3, 64, 64, requires_grad=True)
    expected = stock.encode_image(pixels)
    (grad,) = torch.autograd.grad(expected.sum(), pixels)
    got = fast.encode_image(pixels)
    (fast_grad,) = torch.autograd.grad(got.sum(), pixels)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(fast_grad, grad, atol=1e-5 * float(grad.abs().max()))
    blocks = fast.model.visual.transformer.resblocks
    assert isinstance(blocks[-1], ClassTokenBlock)  # the class token alone, same embedding
    assert not isinstance(blocks[0].attn, Attention)  # fp32 keeps torch's attention
    assert fast.model.state_dict().keys() == stock.model.state_dict().keys()


def test_attention_equals_torch_multihead_attention():
    """genart.speed.vit.Attention (used below fp32) computes nn.MultiheadAttention's function, for
    all tokens asking and for the class token alone (ClassTokenBlock)."""
    mha = torch.nn.MultiheadAttention(64, 4).eval()  # sequence-first, like open_clip after set-up
    ours = Attention(mha)
    x = torch.randn(10, 3, 64)  # (L, N, D)
    expected = mha(x, x, x, need_weights=False)[0]
    assert torch.allclose(ours(x, x, x)[0], expected, atol=1e-5)
    assert torch.allclose(ours(x[:1], x, x)[0], mha(x[:1], x, x, need_weights=False)[0], atol=1e-5)
    assert ours.state_dict().keys() == mha.state_dict().keys()


def test_bf16_clip_swaps_in_reduced_attention_and_stays_close_to_fp32():
    from hydra.utils import instantiate

    cfg = compose(["guide=clip_tiny"])
    exact = next(iter(instantiate(cfg.guide).models.values()))
    low = next(iter(instantiate(cfg.guide).models.values()))
    low.set_precision(torch.bfloat16)
    assert all(isinstance(b.attn, Attention) for b in low.model.visual.transformer.resblocks)
    pixels = torch.rand(8, 3, 64, 64)
    cos = (exact.encode_image(pixels) * low.encode_image(pixels)).sum(-1)  # unit vectors
    assert cos.min() > 0.999, cos


def test_legacy_auto_is_fp32_on_cpu_and_unknown_names_fail():
    assert resolve_precision("auto_cpu_fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(UserError, match="precision=half"):
        resolve_precision("half", torch.device("cpu"))
    assert compose([])["compile"] is False


@pytest.mark.slow
def test_bench_cli_writes_the_report(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        "--generator",
        "vqgan_tiny",
        "--guide",
        "clip_tiny",
        "--size",
        "64",
        "64",
        "--cutn",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
    ]
    proc = cli("genart.tools.bench", *args, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["parity"]["pass"] and report["ratio"] > 0 and report["ratio_default"] > 0
    assert set(report["loops"]) == {"plain", "genart_pooled", "genart"}
    assert report["loops"]["genart_pooled"]["cutouts"] == "PooledCutouts"
    assert "ratio plain / genart" in proc.stdout and "at identical work" in proc.stdout
    assert report["cpu"]["name"] and f"cpu: {report['cpu']['name']}" in proc.stdout
    kernels = report["kernels"]  # the plan genart's loops ran, at what auto became here
    assert kernels["dtype"] == report["settings"]["precision"] != "auto"
    assert f"kernels ({kernels['kind']}, {kernels['dtype']})" in proc.stdout
    ceiling = report["ceiling"]  # FLOPs of a real step over a measured GEMM rate
    assert ceiling["step_flops"] > 1e8 and ceiling["gemm_flops_per_s"] > 1e9
    assert ceiling["step_at_peak_s"] == ceiling["step_flops"] / ceiling["gemm_flops_per_s"]
    assert "4x the plain loop needs" in proc.stdout
    for loop in report["loops"].values():  # every phase ran: the warm-up, 2 timed, 1 profiled
        assert len(loop["times"]) == 2 and loop["split"]["total"] > 0


@pytest.mark.slow
def test_bench_names_the_loop_that_failed_and_stops_the_other():
    """The loops take turns; when one fails, the other stops waiting and the report names the
    failing one (here the plain loop, which needs a VQGAN)."""
    args = ["--generator", "pixels", "--guide", "clip_tiny", "--size", "32", "32", "--no-parity"]
    proc = cli("genart.tools.bench", *args, "--cutn", "4", "--steps", "1", cwd=REPO)
    assert proc.returncode == 1
    assert "child 'plain' failed" in proc.stderr and "VQGAN + one CLIP" in proc.stderr
    assert "Traceback" not in proc.stderr.split("child 'plain' failed")[0]


@pytest.mark.slow
def test_compile_runs_and_keeps_the_loss():
    """compile=true takes the same steps as eager (torch.compile; slow: it compiles first)."""
    from genart.render import guided_step

    losses = []
    for compiled in (False, True):
        run, _ = bench.build_genart({**TINY, "compile": compiled})
        losses.append([float(guided_step(run, i)["total"].detach()) for i in range(2)])
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_glibc_takes_the_allocator_settings():
    from genart.runtime import keep_freed_memory

    assert keep_freed_memory()  # mallopt rejects out-of-range values with 0
