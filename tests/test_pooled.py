"""cutouts=pooled (nerdyrodent's default "latest" cut method) and the bench's plain loop that
transcribes it: the views, their noise, the config, the frozen models, and their parity."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from genart.cutouts import PooledCutouts
from genart.errors import UserError
from genart.tools import bench
from genart.tools.plain_loop import PlainLoop, build_plain, reference_augmentations
from tests.conftest import compose

TINY = {
    "steps": 1,
    "warmup": 0,
    "size": [96, 80],  # larger than clip_tiny's 64: the pooling shrinks, and squashes the aspect
    "cutn": 8,
    "precision": "bf16",
    "compile": False,
    "fidelity_steps": 0,
    "threads": None,
    "generator": "vqgan_tiny",
    "guide": "clip_tiny",
    "seed": 0,
    "overrides": [],
}


def adaptive_windows(n: int, size: int) -> list[slice]:
    """Adaptive pooling's windows along one axis: [floor(i·n/S), ceil((i + 1)·n/S))."""
    return [slice(i * n // size, math.ceil((i + 1) * n / size)) for i in range(size)]


def naive_pooled(image: torch.Tensor, size: int) -> torch.Tensor:
    """(avg_pool + max_pool) / 2 of the whole image, window by window."""
    rows, cols = adaptive_windows(image.shape[2], size), adaptive_windows(image.shape[3], size)
    out = torch.empty(1, 3, size, size)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            window = image[0, :, r, c].flatten(1)  # (3, k)
            out[0, :, i, j] = (window.mean(1) + window.amax(1)) / 2
    return out


@pytest.mark.parametrize("height, width", [(48, 48), (37, 53)])
def test_pooled_views_are_the_mean_of_avg_and_max_pooling_of_the_whole_image(height, width):
    image = torch.rand(1, 3, height, width)
    views = PooledCutouts(cutn=5, cut_size=16)(image, step=0)
    assert views.pixels.shape == (5, 3, 16, 16)
    expected = naive_pooled(image, 16).expand(5, -1, -1, -1)
    assert torch.allclose(views.pixels, expected, atol=1e-6)
    assert views.centres.eq(0).all() and views.sizes.eq(1).all()
    assert views.pair.eq(-1).all() and not views.composition.any()


def test_pooled_noise_is_per_view_with_std_up_to_noise_and_unclamped():
    """The reference's noise_fac: std ~ U(0, 0.1) per view, added without a clamp."""
    torch.manual_seed(0)
    views = PooledCutouts(cutn=400, cut_size=32, noise=0.1)(torch.ones(1, 3, 64, 64), step=0)
    stds = (views.pixels - 1).flatten(1).std(1)  # (N,) each view's own std
    assert stds.max() <= 0.1 * 1.05 and stds.max() > 0.09 and stds.min() < 0.01
    assert stds.mean() == pytest.approx(0.05, abs=0.005)  # U(0, 0.1)'s mean
    assert views.pixels.max() > 1.2  # no clamp to [0, 1], as in the reference


def test_gradient_reaches_the_image_through_pooling_and_augmentations():
    cfg = compose(["cutouts=pooled"]).cutouts
    cutouts = instantiate(cfg, cut_size=16)
    image = torch.rand(1, 3, 40, 40, requires_grad=True)
    cutouts(image, step=0).pixels.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_pooled_config_is_the_references_cut_method():
    """32 views at the guide's size, noise 0.1, and generate.py's augments with its values."""
    cfg = compose(["cutouts=pooled"]).cutouts
    assert (cfg.cutn, cfg.cut_size, cfg.noise) == (32, None, 0.1)
    cutouts = instantiate(cfg, cut_size=16)
    assert isinstance(cutouts, PooledCutouts) and not cutouts.mirrored
    assert list(map(settings, cutouts.augmentations)) == list(
        map(settings, reference_augmentations())
    )


def settings(module) -> str:
    """A kornia augmentation's class and values as its repr shows them (YAML lists as tuples)."""
    return repr(module).replace("[", "(").replace("]", ")")


def test_pooled_cutouts_refuse_mirrored_pairs():
    """A user error the app shows in one paragraph (genart.app.as_user_error unwraps Hydra's)."""
    from genart.app import as_user_error

    with pytest.raises(Exception) as err:
        instantiate(compose(["cutouts=pooled", "cutouts.mirrored=true"]).cutouts, cut_size=16)
    assert "Use cutouts=mirrored" in str(as_user_error(err.value))
    with pytest.raises(UserError):
        PooledCutouts(cutn=2, mirrored=True)


def test_plain_loop_freezes_both_models():
    """As generate.py loads them: eval().requires_grad_(False), whatever state they came in."""
    cfg = bench.compose_config(bench.pooled(TINY), "fp32")
    built = build_plain(cfg)
    vqgan, clip = (m.train().requires_grad_(True) for m in (built.vqgan, built.clip))
    tokenizer = next(iter(instantiate(cfg.guide).models.values())).tokenizer
    plain = PlainLoop(cfg, vqgan, clip, built.mean, built.std, tokenizer)
    plain.step(0)
    models = [plain.vqgan, plain.clip]
    assert not any(m.training for model in models for m in model.modules())
    params = [p for model in models for p in model.parameters()]
    assert params and all(not p.requires_grad and p.grad is None for p in params)
    assert plain.z.grad is not None and plain.z.grad.abs().sum() > 0


def test_parity_of_the_plain_loop_and_genart_pooled_on_tiny_models():
    result = bench.child_parity(TINY)
    assert result["pass"], result
    for mode in ("off", "on"):
        check = result[mode]
        assert check["noise"] and check["grad_max_abs_err_rel"] < 1e-4
        assert check["loss_genart"] == pytest.approx(check["loss_plain"], rel=1e-6)
    assert result["on"]["bf16"]["grad_cos"] > 0.95  # bf16 steers the same way


def test_parity_fails_when_genart_pads_its_views_otherwise():
    """The check compares pooled.yaml with the reference: border padding is not the reference's."""
    s = {**TINY, "precision": "fp32", "overrides": ["cutouts.augmentations.0.padding_mode=border"]}
    assert not bench.parity_once(s, "on")["pass"]
