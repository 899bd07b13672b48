"""Latents as genes (issue 17, must have 1): every run records start_latent.safetensors, and
`init.start_latent=<file>` starts a run from one; presets carry theirs beside the preset file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from genart.checks import check_config
from genart.errors import UserError
from genart.safety import check_presets, conf_dir
from tests.conftest import cli, compose, run_tiny

FAST = ["steps=3", "save_every=3", "log_every=3", "cutouts.cutn=4", "score.views=4"]


def pixels(run_dir: Path) -> np.ndarray:
    return np.asarray(Image.open(run_dir / "final.png"))


def tokens(run_dir: Path) -> torch.Tensor:
    return load_file(str(run_dir / "start_latent.safetensors"))["start_latent"]


@pytest.mark.parametrize("cache", ["true", "false"])
def test_the_same_start_latent_and_seed_give_the_same_image(tmp_path, cache):
    common = [*FAST, f"cache_models={cache}", "seed=0"]
    run_tiny(tmp_path / "a", common)
    genes = tokens(tmp_path / "a")
    assert genes.dtype == torch.long and genes.ndim == 2  # VQGAN: codebook tokens (h, w)
    other = tmp_path / "other.safetensors"  # first: a different start latent changes the image
    save_file({"start_latent": (genes + 1) % 64}, str(other))
    run_tiny(tmp_path / "c", [*common, f"init.start_latent={other}"])
    assert torch.equal(tokens(tmp_path / "c"), (genes + 1) % 64)
    assert not np.array_equal(pixels(tmp_path / "a"), pixels(tmp_path / "c"))
    run_tiny(
        tmp_path / "b", [*common, f"init.start_latent={tmp_path / 'a/start_latent.safetensors'}"]
    )
    assert torch.equal(tokens(tmp_path / "b"), genes)
    assert np.array_equal(pixels(tmp_path / "a"), pixels(tmp_path / "b"))


def test_a_sweep_job_with_a_start_latent_overrides_the_kept_generators_draw(tmp_path):
    """Job 2 of one process reuses job 1's generator (new_run re-draws z from the seed): the
    file still wins, and gives the pixels of a fresh build started from the same file."""
    run_tiny(tmp_path / "a", [*FAST, "seed=3", "cache_models=false"])
    other = tmp_path / "other.safetensors"  # not what seed 3 draws
    save_file({"start_latent": (tokens(tmp_path / "a") + 7) % 64}, str(other))
    latent = f"init.start_latent={other}"
    run_tiny(tmp_path / "fresh", [*FAST, "seed=3", "cache_models=false", latent])
    run_tiny(tmp_path / "job1", [*FAST, "seed=0", "cache_models=true"])
    run_tiny(tmp_path / "job2", [*FAST, "seed=3", "cache_models=true", latent])
    assert torch.equal(tokens(tmp_path / "job2"), (tokens(tmp_path / "a") + 7) % 64)
    assert not np.array_equal(pixels(tmp_path / "a"), pixels(tmp_path / "job2"))
    assert np.array_equal(pixels(tmp_path / "fresh"), pixels(tmp_path / "job2"))


def test_another_seed_keeps_the_start_but_not_the_image(tmp_path):
    """The latent fixes where θ starts; the cutouts (and any noise) still follow the seed. z is
    quantised, so the image changes only once the steps move z across codebook cells: after 3
    steps at the default lr it had not; here lr 0.5 for 6 steps."""
    moving = ["steps=6", "save_every=6", "log_every=6", "cutouts.cutn=4", "score.views=4"]
    moving.append("optimizer.lr=0.5")
    run_tiny(tmp_path / "a", [*moving, "seed=0"])
    latent = f"init.start_latent={tmp_path / 'a/start_latent.safetensors'}"
    run_tiny(tmp_path / "d", [*moving, "seed=1", latent])
    run_tiny(tmp_path / "e", [*moving, "seed=1"])
    assert torch.equal(tokens(tmp_path / "d"), tokens(tmp_path / "a"))
    assert not torch.equal(tokens(tmp_path / "e"), tokens(tmp_path / "a"))
    assert not np.array_equal(pixels(tmp_path / "a"), pixels(tmp_path / "d"))


def test_start_latent_with_an_init_image_is_refused():
    cfg = compose(["init.start_latent=x.safetensors", "init.image=y.png"])
    with pytest.raises(UserError, match=r"init.start_latent=x.safetensors and init.image") as e:
        check_config(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("latent", "said"),
    [
        (torch.zeros(4, 4, dtype=torch.long), r"\(4, 4\) int64.*size=64x64.*\(8, 8\) int64"),
        (torch.zeros(8, 8), r"\(8, 8\) float32.*size=64x64.*\(8, 8\) int64"),
        (torch.full((8, 8), 99, dtype=torch.long), r"each in \[0, 64\)"),
    ],
    ids=["shape", "dtype", "range"],
)
def test_a_start_latent_that_does_not_fit_is_refused(tmp_path, latent, said):
    path = tmp_path / "x.safetensors"
    save_file({"start_latent": latent}, str(path))
    with pytest.raises(UserError, match=said) as e:
        run_tiny(tmp_path / "run", [*FAST, f"init.start_latent={path}"])
    assert "\n" not in str(e.value)


def test_a_pickle_is_not_a_start_latent(tmp_path):
    path = tmp_path / "x.safetensors"
    torch.save({"start_latent": torch.zeros(8, 8, dtype=torch.long)}, path)
    with pytest.raises(UserError, match="cannot read a start latent"):
        run_tiny(tmp_path / "run", [*FAST, f"init.start_latent={path}"])


def test_the_pixels_generator_records_and_takes_its_start(tmp_path):
    pix = ["generator=pixels", *FAST]
    run_tiny(tmp_path / "a", pix)
    start = tokens(tmp_path / "a")
    assert start.shape == (1, 3, 64, 64) and start.dtype == torch.float32
    run_tiny(tmp_path / "b", [*pix, f"init.start_latent={tmp_path / 'a/start_latent.safetensors'}"])
    assert np.array_equal(pixels(tmp_path / "a"), pixels(tmp_path / "b"))


def write_preset(root: Path, name: str, start_latent: str) -> None:
    (root / "preset").mkdir(parents=True, exist_ok=True)
    text = f"# @package _global_\ninit:\n  start_latent: {start_latent}\n"
    (root / "preset" / f"{name}.yaml").write_text(text)


@pytest.mark.parametrize(
    "hostile",
    ["../../etc/x", "/etc/passwd", "../outside.safetensors", "sub/../../outside.safetensors"],
)
def test_a_preset_latent_outside_the_preset_dirs_is_refused(tmp_path, hostile):
    write_preset(tmp_path / "mine", "evil", hostile)
    with pytest.raises(UserError, match=r"Refusing preset 'evil'.*init.start_latent") as e:
        check_presets(["+preset=evil"], [tmp_path / "mine", conf_dir()])
    assert "\n" not in str(e.value)


def test_a_preset_latent_through_a_symlink_out_is_refused(tmp_path):
    (tmp_path / "mine/preset").mkdir(parents=True)
    (tmp_path / "secret.safetensors").write_bytes(b"")
    (tmp_path / "mine/preset/link.safetensors").symlink_to(tmp_path / "secret.safetensors")
    write_preset(tmp_path / "mine", "evil", "link.safetensors")
    with pytest.raises(UserError, match="init.start_latent"):
        check_presets(["+preset=evil"], [tmp_path / "mine", conf_dir()])


def test_a_preset_latent_beside_the_preset_passes(tmp_path):
    write_preset(tmp_path / "mine", "good", "good.start_latent.safetensors")
    check_presets(["+preset=good"], [tmp_path / "mine", conf_dir()])


@pytest.mark.slow  # three subprocess runs of the tiny models
def test_a_preset_carries_its_latent_and_reproduces_the_image(tmp_path):
    presets, elsewhere = tmp_path / "my_presets", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"GENART_PRESETS_DIR": str(presets)}
    tiny = ["generator=vqgan_tiny", "guide=clip_tiny", "logger=none", "size=[32,32]", *FAST]

    def genart(*args, cwd=tmp_path):
        out = cli("genart", *args, cwd=cwd, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]

    genart(*tiny, "seed=5")
    (first,) = (tmp_path / "outputs").glob("2*/*")
    save = cli("genart.presets", "save", str(first), "--name", "gene", cwd=tmp_path, env=env)
    assert save.returncode == 0, save.stderr
    beside = presets / "preset/gene.start_latent.safetensors"
    assert torch.equal(load_file(str(beside))["start_latent"], tokens(first))
    assert (
        "start_latent: gene.start_latent.safetensors" in (presets / "preset/gene.yaml").read_text()
    )
    genart("+preset=gene", "seed=0", cwd=elsewhere)  # seed: the preset's own, 5; this is overridden
    genart("+preset=gene", cwd=elsewhere)  # from another cwd: relative to the preset file
    runs = sorted((elsewhere / "outputs").glob("2*/*"))
    assert len(runs) == 2
    by_seed = {r: (r / ".hydra/config.yaml").read_text() for r in runs}
    same = next(r for r, text in by_seed.items() if "seed: 5" in text)
    other = next(r for r in runs if r != same)
    assert torch.equal(tokens(same), tokens(first)) and torch.equal(tokens(other), tokens(first))
    assert np.array_equal(pixels(first), pixels(same))


def test_sdxl_records_and_takes_its_initial_noise():
    from tests.sdxl_helpers import tiny_generator

    generator = tiny_generator()
    width, height = generator.size
    f = generator.pipe.vae_scale_factor  # 8 for SDXL, 2 for sdxl_tiny
    start = generator.start_latent()
    assert start.shape == (1, 4, height // f, width // f) and start.dtype == torch.float32
    assert torch.equal(start, generator.z.detach())
    noise = torch.randn_like(start)
    generator.set_start_latent(noise)
    assert torch.equal(generator.z.detach(), noise) and torch.equal(generator.start_latent(), noise)
    with pytest.raises(
        UserError, match=rf"size={width}x{height}.*\(1, 4, {height // f}, {width // f}\)"
    ):
        generator.set_start_latent(torch.randn(1, 4, 3, 3))
    sampled = tiny_generator(init="sample")
    assert sampled.start_latent() is None
    with pytest.raises(UserError, match="generator.init=sample"):
        sampled.set_start_latent(noise)


def test_sdxl_sampling_records_its_starting_noise_and_starts_from_a_given_one(tmp_path):
    """updater=sample (the sdxl default): the gene is the unscaled noise ε_T the sampler starts
    from (x_T = ε_T · init_noise_sigma); the same file and seed give the same image."""
    from tests.test_sdxl_runs import SDXL

    common = [*SDXL, "updater=sample", "size=[32,32]", "seed=3"]
    run_tiny(tmp_path / "a", common)
    noise = tokens(tmp_path / "a")
    assert noise.dtype == torch.float32 and noise.shape[:2] == (1, 4)
    assert 0.8 < float(noise.std()) < 1.2, "unscaled Gaussian noise"
    other = tmp_path / "other.safetensors"  # first: another start gives another image
    save_file({"start_latent": torch.flip(noise, dims=[-1]).contiguous()}, str(other))
    run_tiny(tmp_path / "c", [*common, f"init.start_latent={other}"])
    assert not np.array_equal(pixels(tmp_path / "a"), pixels(tmp_path / "c"))
    assert torch.equal(tokens(tmp_path / "c"), torch.flip(noise, dims=[-1]))
    run_tiny(
        tmp_path / "b", [*common, f"init.start_latent={tmp_path / 'a/start_latent.safetensors'}"]
    )
    assert np.array_equal(pixels(tmp_path / "a"), pixels(tmp_path / "b"))
    bad = tmp_path / "bad.safetensors"
    save_file({"start_latent": torch.zeros(1, 4, 3, 3)}, str(bad))
    with pytest.raises(
        UserError, match=r"sampling.s noise at size=32x32 starts from \(1, 4, 16, 16\)"
    ):
        run_tiny(tmp_path / "d", [*common, f"init.start_latent={bad}"])
