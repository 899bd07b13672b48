"""The studio's surrogate ranking (genart.studio.surrogate, genart.studio.previews): the
classifier learns a known preference, ranks by a synthetic taste better than chance, only k of a
larger pool come back (and nothing is previewed when ranking is off), and the previews are the
generators' own images of a start (VQGAN) or first-step x̂0 (SDXL)."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import instantiate
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from genart.generators.pixels import PixelGenerator
from genart.studio import previews
from genart.studio.previews import embed, preview_images
from genart.studio.surrogate import Surrogate, breed_and_rank, breed_child
from tests.conftest import compose


@pytest.fixture(scope="module")
def guide():
    cfg = compose(["guide=clip_tiny", "device=cpu"])
    return instantiate(cfg.guide).eval()


@pytest.fixture(scope="module")
def vqgan():
    cfg = compose(["generator=vqgan_tiny", "size=[32,32]", "device=cpu"])
    return instantiate(cfg.generator).eval()  # 4×4 latent grid, 64 codes


def hidden_direction_data(n: int, seed: int, dim: int = 32):
    """Random embeddings; chosen = positive along a hidden unit direction (with 10% label noise)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    x = torch.randn(n, dim, generator=g)
    flip = torch.rand(n, generator=g) < 0.1
    return x, (x @ w > 0) ^ flip, x @ w


def test_surrogate_learns_a_hidden_direction_held_out_auc():
    x, chosen, truth = hidden_direction_data(400, seed=0)
    surrogate = Surrogate().fit(x[:200], chosen[:200])
    scores = surrogate.score(x[200:])
    assert roc_auc_score((truth[200:] > 0).numpy(), scores.numpy()) > 0.9  # the clean preference
    assert spearmanr(scores.numpy(), truth[200:].numpy()).statistic > 0.8
    again = Surrogate().fit(x[:200], chosen[:200]).score(x[200:])
    assert torch.equal(scores, again)  # deterministic


def test_three_picks_among_sixty_still_rank_the_hidden_direction():
    """The usual studio case: few picks, one class tiny (held-out Spearman, chance 0)."""
    x, _, truth = hidden_direction_data(400, seed=1)
    chosen = torch.zeros(60, dtype=torch.bool)
    chosen[truth[:60].topk(3).indices] = True
    scores = Surrogate().fit(x[:60], chosen).score(x[200:])
    assert spearmanr(scores.numpy(), truth[200:].numpy()).statistic > 0.3


@pytest.mark.parametrize("picked", ["nothing", "everything"])
def test_nothing_to_learn_keeps_the_breeding_order(picked):
    x = torch.randn(10, 8)
    surrogate = Surrogate().fit(x, torch.full((10,), picked == "everything"))
    assert not surrogate.fitted and surrogate.score(x) is None
    assert torch.equal(surrogate.rank(x), torch.arange(10))


def test_rank_is_by_descending_score():
    x, chosen, _ = hidden_direction_data(100, seed=2)
    surrogate = Surrogate().fit(x, chosen)
    order = surrogate.rank(x[:20])
    assert torch.all(surrogate.score(x[:20])[order].diff() <= 0)


def red_taste_case(guide, seed: int, pool_size: int = 32, k: int = 8):
    """A user who picks the reddest half of 32 seen images (pixel latents, 4×4 grid); the
    surrogate ranks a fresh pool of 32. Returns (Spearman of score vs true redness over the pool,
    fraction of the top k by score that are in the true top k)."""
    generator = PixelGenerator(size=[4, 4])
    g = torch.Generator().manual_seed(1000 + seed)
    seen = [2 * torch.randn(1, 3, 4, 4, generator=g) for _ in range(32)]
    seen_images = preview_images(generator, seen)
    red = seen_images[:, 0].mean((1, 2))
    surrogate = Surrogate().fit(embed(guide, seen_images), red > red.median())
    breed = lambda rng: 2 * torch.randn(1, 3, 4, 4, generator=rng)  # noqa: E731
    ranked = breed_and_rank(breed, pool_size, pool_size, seed, surrogate, generator, guide)
    pool_red = torch.sigmoid(torch.stack(ranked.latents))[:, 0, 0].mean((1, 2))  # score order
    by_score = ranked.pool_index
    true_red = torch.empty(pool_size)
    true_red[by_score] = pool_red
    scores = torch.empty(pool_size, dtype=torch.float64)
    scores[by_score] = ranked.scores
    rho = spearmanr(scores.numpy(), true_red.numpy()).statistic
    hits = len(set(by_score[:k].tolist()) & set(true_red.topk(k).indices.tolist()))
    return rho, hits / k


def test_ranking_by_a_red_taste_beats_chance(guide):
    """Chance: Spearman 0, top-8 precision 8/32 = 0.25. A negated ranking gives Spearman < 0."""
    cases = [red_taste_case(guide, seed) for seed in range(3)]
    rhos, precisions = zip(*cases, strict=True)
    assert min(rhos) > 0.5, cases
    assert sum(precisions) / len(precisions) > 0.5, cases


def counting(monkeypatch) -> list[int]:
    """Count preview_images calls (the number of latents each was given)."""
    calls: list[int] = []
    real = previews.preview_images

    def counted(generator, latents):
        calls.append(len(latents))
        return real(generator, latents)

    monkeypatch.setattr(previews, "preview_images", counted)
    return calls


def fitted_surrogate(vqgan, guide) -> Surrogate:
    g = torch.Generator().manual_seed(5)
    seen = [torch.randint(64, (4, 4), generator=g) for _ in range(8)]
    chosen = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool)
    return Surrogate().fit(embed(guide, preview_images(vqgan, seen)), chosen)


def token_breed(vqgan):
    g = torch.Generator().manual_seed(6)
    parents = [torch.randint(64, (4, 4), generator=g) for _ in range(2)]
    return functools.partial(breed_child, parents, strength=0.5, kind="tokens", n_codes=64)


def test_the_pool_is_bred_larger_than_k_and_only_the_top_k_come_back(monkeypatch, vqgan, guide):
    surrogate, breed = fitted_surrogate(vqgan, guide), token_breed(vqgan)
    bred: list[torch.Tensor] = []
    recording = lambda rng: bred.append(breed(rng)) or bred[-1]  # noqa: E731
    calls = counting(monkeypatch)
    ranked = breed_and_rank(recording, 12, 3, 0, surrogate, vqgan, guide)
    assert len(bred) == 12 and calls == [12]
    assert len(ranked.latents) == 3 and len(set(ranked.pool_index.tolist())) == 3
    for latent, i in zip(ranked.latents, ranked.pool_index, strict=True):
        assert torch.equal(latent, bred[i])
    all_scores = surrogate.score(embed(guide, preview_images(vqgan, bred)))
    assert torch.allclose(ranked.scores, all_scores.topk(3).values)
    again = breed_and_rank(breed, 12, 3, 0, surrogate, vqgan, guide)
    assert torch.equal(again.pool_index, ranked.pool_index)  # seeded


def test_rank_false_returns_the_first_k_bred_and_previews_nothing(monkeypatch, vqgan, guide):
    surrogate, breed = fitted_surrogate(vqgan, guide), token_breed(vqgan)
    calls = counting(monkeypatch)
    ranked = breed_and_rank(breed, 12, 3, 0, surrogate, vqgan, guide, rank=False)
    unfitted = breed_and_rank(breed, 12, 3, 0, Surrogate(), vqgan, guide)
    assert calls == []
    rng = torch.Generator().manual_seed(0)
    first = [breed(rng) for _ in range(3)]
    for result in (ranked, unfitted):
        assert result.scores is None and torch.equal(result.pool_index, torch.arange(3))
        assert all(torch.equal(a, b) for a, b in zip(result.latents, first, strict=True))


def test_vqgan_previews_are_the_generators_own_decode_of_the_start_z(vqgan):
    g = torch.Generator().manual_seed(3)
    tokens = [torch.randint(64, (4, 4), generator=g) for _ in range(10)]  # 10 > BATCH
    images = preview_images(vqgan, tokens)
    assert images.shape == (10, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, preview_images(vqgan, tokens))
    with torch.no_grad():
        for token_grid, image in zip(tokens, images, strict=True):
            z = vqgan.codebook[token_grid.flatten()].T.reshape(1, -1, 4, 4)  # random_latent's way
            vqgan.z.copy_(z)
            assert torch.equal(preview_images(vqgan, [token_grid])[0], vqgan()[0])
            assert torch.equal(preview_images(vqgan, [z])[0], vqgan()[0])
            assert torch.allclose(image, vqgan()[0], atol=1e-5)  # batched: conv rounding ~3e-6


def test_sdxl_previews_are_taesd_of_the_samplers_first_x0():
    """Parity: the scheduler's own pred_original_sample at step 0, decoded by TAESD."""
    from genart.samplers import DiffusionSampler
    from tests.sdxl_helpers import tiny_generator

    model = tiny_generator().eval()
    assert model.taesd is not None
    g = torch.Generator().manual_seed(4)
    noises = [torch.randn(model.z.shape, generator=g) for _ in range(3)]
    images = preview_images(model, noises)
    h, w = model.z.shape[-2:]  # tiny TAESD decodes 2x, as sdxl_tiny's VAE
    assert images.shape == (3, 3, 2 * h, 2 * w) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, preview_images(model, noises))
    assert not torch.allclose(images[0], images[1])
    with torch.no_grad():
        for noise, image in zip(noises, images, strict=True):
            sampler = DiffusionSampler(model)
            sampler.latents = noise * model.scheduler.init_noise_sigma
            _, x0 = sampler.step(0, model.conditioning(0))
            assert torch.allclose(image, model.decode_fast(x0)[0], atol=1e-5)
