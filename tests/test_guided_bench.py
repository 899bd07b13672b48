"""genart.tools.guided_bench: the community-style guided loop agrees with genart's guided updater
(parity on sdxl_tiny), and the tool runs end to end on the tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO, cli

TINY = {
    "generator": "sdxl_tiny",
    "guide": "clip_tiny",
    "size": [64, 64],
    "cutn": 4,
    "scale": 100.0,
    "seed": 0,
    "steps": 1,
    "warmup": 1,
    "threads": 1,
    "modes": [],
    "profile": False,
    "compile": False,
}


def tiny_settings(precision: str = "fp32", *overrides: str) -> dict:
    return {**TINY, "precision": precision, "overrides": list(overrides)}


@pytest.mark.parametrize(
    "scheduler",
    ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler"],
)
def test_community_loop_takes_genarts_guided_step(scheduler):
    """Same x_t, RNG and crops: the same objective and, at fp32, the same x_{t-1} up to the
    batch-of-2 against batch-of-1 rounding; both sigma and alpha update rules."""
    from genart.tools.guided_bench import child_parity

    s = tiny_settings("fp32", f"generator.sampler.scheduler={scheduler}")
    parity = child_parity(s)
    assert parity["pass"], parity
    assert parity["objective_genart"] == pytest.approx(parity["objective_community"], rel=1e-5)
    assert parity["latents_diff_share_of_step"] < 1e-3


def test_parity_sees_the_guidance_term():
    """The guidance term moves x_{t-1} by far more than the parity tolerance, so a wrong sign
    or σ² in either loop would fail the parity check."""
    from genart.tools.guided_bench import build_run, community_loop, rewind, snapshot

    run, _ = build_run(tiny_settings())
    state, loop = snapshot(run), community_loop(run)
    loop.step(0)
    guided = run.updater.sampler.latents.clone()
    rewind(run, state)
    loop.plain_step(0)
    plain = run.updater.sampler.latents
    move = (guided - state["latents"]).abs().max()
    assert (guided - plain).abs().max() > 1e-2 * move


def test_bf16_parity_within_its_tolerance():
    from genart.tools.guided_bench import TOLERANCE, child_parity

    parity = child_parity(tiny_settings("bf16"))
    assert parity["pass"] and parity["tolerance"] == TOLERANCE["bf16"], parity


def test_components_are_built_at_the_runs_precision():
    """No fp32 copy of SDXL's UNet: its weights are born bf16; the VAE stays fp32 (guidance
    decodes with a bf16 copy); x_t fp32."""
    from genart.tools.guided_bench import build_run, community_loop

    run, built = build_run(tiny_settings("bf16"))
    generator = run.generator
    assert generator.unet.dtype == generator.text_encoder_2.dtype == torch.bfloat16
    assert generator.vae.dtype == torch.float32 and generator.z.dtype == torch.float32
    # both loops decode x̂0 with the same VAE at the run's precision (genart's guidance copy)
    assert community_loop(run).vae is generator.guidance_vae
    assert generator.guidance_vae.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32  # the build left the default alone
    assert built["build_s"] > 0 and built["build_peak_rss_mb"] > 0


def test_sdxl_random_is_sdxl_base_architecture():
    """conf/generator/sdxl_random.yaml composes as generator=sdxl_random, with SDXL base 1.0's
    published sizes (checked from the configs, without building 3.5 B parameters)."""
    from tests.conftest import compose

    cfg = compose(["generator=sdxl_random", "logger=none"])
    arch = cfg.generator.architecture
    assert cfg.generator.pretrained is None and cfg.updater._target_.endswith("SampleUpdater")
    assert list(arch.unet.block_out_channels) == [320, 640, 1280]
    assert list(arch.unet.transformer_layers_per_block) == [1, 2, 10]
    assert arch.unet.cross_attention_dim == (
        arch.text_encoder.hidden_size + arch.text_encoder_2.hidden_size
    )
    time_ids = 6 * arch.unet.addition_time_embed_dim
    assert arch.unet.projection_class_embeddings_input_dim == time_ids + 1280
    assert arch.text_encoder_2.num_hidden_layers == 32 and arch.vae.scaling_factor == 0.13025


@pytest.mark.slow
def test_guided_bench_cli_writes_the_report(tmp_path):
    """Every child on the tiny models: parity, both loops, the split, the three modes (TAESD's
    row may say why it is not available), the table and the JSON."""
    out = tmp_path / "guided_bench.json"
    args = ["--generator", "sdxl_tiny", "--guide", "clip_tiny", "--size", "64", "64"]
    args += ["--cutn", "2", "--steps", "2", "--profile", "--out", str(out), "--threads", "1"]
    proc = cli("genart.tools.guided_bench", *args, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(out.read_text())
    loops = report["loops"]
    assert report["ratio"] == loops["community"]["s_per_step"] / loops["genart"]["s_per_step"]
    assert report["parity"]["pass"] and report["cpu"] and report["precision"] in ("bf16", "fp32")
    for loop in loops.values():
        assert len(loop["times"]) == 2 and len(loop["unguided"]["times"]) == 2
        assert loop["peak_rss_mb"] > 0 and loop["split"]["unet_fwd"] > 0
        assert loop["split"]["unet_bwd"] > 0 and loop["split"]["vae_bwd"] > 0
    assert set(report["unguided_s_per_step"]) == {"community", "genart"}
    modes = report["modes"]
    assert set(modes) == {"taesd", "every2", "lcm4"}
    assert len(modes["lcm4"]["times"]) == 4 and modes["lcm4"]["run_s"] > 0
    assert modes["every2"]["s_per_step"] > 0
    assert "s_per_step" in modes["taesd"] or modes["taesd"]["not available"]
    assert "ratio community / genart s/step" in proc.stdout and "cpu: " in proc.stdout
