"""genart.model_cache: a sweep's later jobs in one process reuse the built models and still render
the pixels a fresh build renders; a new config evicts the old models; resume still works."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from genart import model_cache
from tests.conftest import compose, killed_at_step_3, run_tiny

MOVING = ["steps=3", "save_every=1", "optimizer.lr=0.5"]  # the tiny VQGAN's image moves in 3 steps


@pytest.fixture(autouse=True)
def _empty_cache():
    """Each test starts with no kept models, and leaves none behind for later tests."""
    model_cache.clear()
    yield
    model_cache.clear()


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def clip_weights_file(path) -> str:
    """clip_tiny's weights as an open_clip file: building from it draws from the global RNG
    (open_clip's random init before the weights load), the case a kept guide must replay."""
    from hydra.utils import instantiate

    torch.save(instantiate(compose(["guide=clip_tiny"]).guide).models.tiny.model.state_dict(), path)
    return str(path)


def from_file(tmp_path) -> list[str]:
    path = clip_weights_file(tmp_path / "clip_tiny.pt")
    return [f"+guide.models.tiny.pretrained.path={path}", "guide.models.tiny.init_seed=null"]


def sweep(root, overrides, cache: bool, seeds=(0, 1)) -> dict:
    """Jobs one after another in this process, as the basic launcher (or one worker) runs them."""
    for seed in seeds:
        run_tiny(root / str(seed), [*overrides, f"seed={seed}", f"cache_models={cache}"])
    return {seed: pixels(root / str(seed) / "final.png") for seed in seeds}


@pytest.mark.parametrize("weights", ["seeded", "file"])
def test_kept_models_render_the_pixels_of_fresh_ones(tmp_path, weights):
    overrides = [*MOVING, *(from_file(tmp_path) if weights == "file" else [])]
    fresh = sweep(tmp_path / "fresh", overrides, cache=False)
    assert model_cache.hits("generator") == model_cache.hits("guide") == 0
    kept = sweep(tmp_path / "kept", overrides, cache=True)
    assert model_cache.hits("generator") == model_cache.hits("guide") == 1, "job 1 reused both"
    first = pixels(tmp_path / "kept/1/frames/00001.png")
    assert (first != kept[1]).mean() > 0.25, "the image moves during the run"
    assert (kept[0] != kept[1]).mean() > 0.25, "the seed decides the image"
    for seed in (0, 1):
        assert np.array_equal(kept[seed], fresh[seed]), f"seed {seed}"


def test_a_second_job_builds_no_model(tmp_path, monkeypatch):
    """Counts the loaders' calls: the generator's network, open_clip's model, the scorer's net."""
    import open_clip
    import timm

    import genart.generators.vqgan as vqgan

    calls = {"vqgan": 0, "clip": 0, "nima": 0}

    def counted(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(vqgan, "build_model", counted("vqgan", vqgan.build_model))
    monkeypatch.setattr(open_clip, "create_model", counted("clip", open_clip.create_model))
    monkeypatch.setattr(timm, "create_model", counted("nima", timm.create_model))
    overrides = ["steps=1", "scorer=nima_tiny"]
    sweep(tmp_path / "kept", overrides, cache=True)
    assert calls == {"vqgan": 1, "clip": 1, "nima": 1}
    sweep(tmp_path / "fresh", overrides, cache=False)
    assert calls == {"vqgan": 3, "clip": 3, "nima": 3}, "cache_models=false loads per job"


def test_a_new_config_evicts_the_kept_models(tmp_path):
    run_tiny(tmp_path / "a", ["steps=1"])
    old = weakref.ref(model_cache._CACHE["generator"].model)
    run_tiny(tmp_path / "b", ["steps=1", "size=[64,32]"])  # another generator, the same guide
    gc.collect()
    assert old() is None, "the first config's generator is freed"
    assert model_cache.hits("guide") == 1 and set(model_cache._CACHE) == {"generator", "guide"}


def test_a_changed_weights_file_is_loaded_again(tmp_path, monkeypatch):
    import open_clip

    overrides = ["steps=1", *from_file(tmp_path)]
    built = []
    real = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: built.append(1) or real(*a, **k))
    run_tiny(tmp_path / "a", overrides)
    stat = os.stat(tmp_path / "clip_tiny.pt")
    os.utime(tmp_path / "clip_tiny.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    run_tiny(tmp_path / "b", overrides)
    assert len(built) == 2 and model_cache.hits("guide") == 0


def test_a_killed_run_resumes_on_kept_models(tmp_path, monkeypatch):
    run_tiny(tmp_path / "whole", MOVING)
    undo = killed_at_step_3(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tmp_path / "cut", MOVING)
    undo()
    run_tiny(tmp_path / "cut", MOVING, resume=True)
    assert model_cache.hits("generator") == 2
    assert np.array_equal(pixels(tmp_path / "cut/final.png"), pixels(tmp_path / "whole/final.png"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_renders_the_same_pixels_with_and_without_kept_models(tmp_path, launcher):
    """Two `-m` sweeps as a user types them: the basic launcher runs the jobs in one process,
    joblib's two workers two jobs each."""
    from tests.conftest import TINY, cli

    seeds = "0,1" if launcher == "basic" else "0,1,2,3"
    finals = {}
    for cache in ("false", "true"):
        args = [*TINY, "size=[64,64]", *MOVING, f"seed={seeds}", f"cache_models={cache}"]
        args += [f"hydra/launcher={launcher}", "-m"]
        (tmp_path / cache).mkdir()
        out = cli("genart", *args, cwd=tmp_path / cache, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        (sweep_dir,) = (tmp_path / cache / "outputs/multirun").glob("*/*")
        jobs = [str(job) for job in range(len(seeds.split(",")))]
        finals[cache] = [pixels(sweep_dir / job / "final.png") for job in jobs]
        assert (pixels(sweep_dir / "1/frames/00001.png") != finals[cache][1]).mean() > 0.25
    assert (finals["true"][0] != finals["true"][1]).mean() > 0.25
    for fresh, kept in zip(finals["false"], finals["true"], strict=True):
        assert np.array_equal(fresh, kept)


def test_a_kept_model_writes_the_very_final_png_of_a_fresh_one(tmp_path):
    """The same job twice in one process: the first builds (fresh), the second reuses every kept
    model; their final.png files (pixels, prompts, seed and config chunks) are byte-identical."""
    job = [*MOVING, "seed=0", "cache_models=true", "scorer=nima_tiny"]
    run_tiny(tmp_path / "fresh", job)
    assert [model_cache.hits(r) for r in ("generator", "guide", "scorer")] == [0, 0, 0]
    run_tiny(tmp_path / "kept", job)
    assert [model_cache.hits(r) for r in ("generator", "guide", "scorer")] == [1, 1, 1]
    fresh, kept = (tmp_path / d / "final.png" for d in ("fresh", "kept"))
    assert (pixels(tmp_path / "fresh/frames/00001.png") != pixels(fresh)).mean() > 0.25, "moved"
    assert fresh.read_bytes() == kept.read_bytes()
