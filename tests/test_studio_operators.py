"""The studio's breeding operators, each against its definition (issue 17, docs/studio.md)."""

import math

import pytest
import torch

from genart.errors import UserError
from genart.studio.operators import (
    click_to_grid,
    local_mutation,
    plain_mutation,
    voronoi_crossover,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def parents(n, shape=(1, 4, 12, 16), seed=100):
    return [torch.randn(shape, generator=gen(seed + k)) for k in range(n)]


def within(centre_xy, radius, height, width):
    """Brute force: (H, W) bool, grid point (x=j, y=i) within radius of centre, grid units."""
    cx, cy = centre_xy
    return torch.tensor(
        [[(j - cx) ** 2 + (i - cy) ** 2 <= radius**2 for j in range(width)] for i in range(height)]
    )


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_2n_sites_for_n_parents(n):
    child, sites, owner = voronoi_crossover(parents(n), gen(0))
    assert sites.shape == (2 * n, 2)
    assert child.shape == (1, 4, 12, 16) and owner.shape == (12, 16)
    assert int(owner.min()) >= 0 and int(owner.max()) < 2 * n


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_every_grid_point_belongs_to_its_nearest_site(n):
    _, sites, owner = voronoi_crossover(parents(n), gen(n))
    height, width = owner.shape
    for i in range(height):
        for j in range(width):
            d = [math.hypot(j - float(x), i - float(y)) for x, y in sites]
            nearest = min(range(len(d)), key=lambda k: (d[k], k))  # ties to the lower index
            assert int(owner[i, j]) == nearest, (i, j, d)
    assert ((sites[:, 0] >= 0) & (sites[:, 0] <= width - 1)).all()
    assert ((sites[:, 1] >= 0) & (sites[:, 1] <= height - 1)).all()


@pytest.mark.parametrize("shape", [(1, 4, 12, 16), (4, 12, 16)])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_cell_j_comes_from_parent_j_mod_n(n, shape):
    ps = parents(n, shape)
    child, _, owner = voronoi_crossover(ps, gen(7))
    for i in range(owner.shape[0]):
        for j in range(owner.shape[1]):
            source = ps[int(owner[i, j]) % n]
            assert torch.equal(child[..., :, i, j], source[..., :, i, j])  # all channels


def test_one_parent_gives_a_copy():
    (p,) = parents(1)
    child, _, _ = voronoi_crossover([p], gen(0))
    assert torch.equal(child, p) and child.data_ptr() != p.data_ptr()


def test_same_seed_same_child_other_seed_other_child():
    ps = parents(3)
    child, _, owner = voronoi_crossover(ps, gen(1))
    assert all(not torch.equal(child, p) for p in ps)  # a real mix, so the next checks can fail
    again, _, _ = voronoi_crossover(ps, gen(1))
    other, _, _ = voronoi_crossover(ps, gen(2))
    assert torch.equal(child, again)
    assert not torch.equal(child, other)


def test_crossover_of_tokens_keeps_tokens():
    ps = [torch.randint(50, (9, 9), generator=gen(k)) for k in range(2)]
    child, _, owner = voronoi_crossover(ps, gen(0))
    assert child.dtype == torch.long
    assert torch.equal(child, torch.where(owner % 2 == 0, ps[0], ps[1]))


def test_parents_of_different_shapes_are_refused_in_one_paragraph():
    with pytest.raises(UserError, match="same shape") as error:
        voronoi_crossover([torch.zeros(4, 8, 8), torch.zeros(4, 8, 16)], gen(0))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("factor", [8, 16])
def test_click_mapping_corners_and_centre(factor):
    w, h = 6, 4
    size = (w * factor, h * factor)
    assert click_to_grid((0, 0), size, (w, h)) == pytest.approx((-0.5, -0.5))
    assert click_to_grid(size, size, (w, h)) == pytest.approx((w - 0.5, h - 0.5))
    assert click_to_grid((size[0] / 2, size[1] / 2), size, (w, h)) == pytest.approx(
        ((w - 1) / 2, (h - 1) / 2)
    )
    # the centre of grid point (j, i)'s pixel block maps onto it exactly
    assert click_to_grid((factor * 3.5, factor * 1.5), size, (w, h)) == pytest.approx((3, 1))
    # corner pixels round to corner grid points
    x, y = click_to_grid((size[0] - 1, size[1] - 1), size, (w, h))
    assert (round(x), round(y)) == (w - 1, h - 1)


def test_click_outside_the_image_is_refused():
    with pytest.raises(UserError, match="outside"):
        click_to_grid((-1, 5), (64, 64), (8, 8))


@pytest.mark.parametrize("factor", [8, 16])
def test_local_mutation_changes_only_inside_the_radius(factor):
    latent = torch.randn(1, 4, 16, 24, generator=gen(0))
    click, radius = (factor * 10.5, factor * 5.5), 3.5  # grid point (10, 5)
    child = local_mutation(
        latent, click, radius, 0.5, gen(1), image_size=(24 * factor, 16 * factor)
    )
    inside = within((10, 5), radius, 16, 24)
    assert torch.equal(child[..., ~inside], latent[..., ~inside])  # exactly, outside
    assert (child[..., inside] != latent[..., inside]).all()


@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_local_blend_keeps_unit_variance_and_correlation_cos_theta(strength):
    centre, radius = (31.5, 31.5), 24.0
    inside = within(centre, radius, 64, 64)
    xs, ys = [], []
    for seed in range(20):
        x = torch.randn(4, 64, 64, generator=gen(1000 + seed), dtype=torch.float64)
        y = local_mutation(x, centre, radius, strength, gen(seed))
        xs.append(x[:, inside].flatten())
        ys.append(y[:, inside].flatten())
    x, y = torch.cat(xs), torch.cat(ys)
    count, rho = len(y), math.cos(strength * math.pi / 2)
    # 5 standard errors: var of a sample variance of N(0, 1) is 2/N; of a correlation (1 − ρ²)²/N
    assert abs(float(y.mean())) < 5 / math.sqrt(count)
    assert abs(float(y.var()) - 1) < 5 * math.sqrt(2 / count)
    corr = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert abs(corr - rho) < 5 * (1 - rho**2) / math.sqrt(count) + 1e-9


def test_plain_mutation_blends_everywhere_and_is_seeded():
    x = torch.randn(1, 4, 8, 8, generator=gen(0))
    assert torch.equal(plain_mutation(x, 0.0, gen(1)), x)
    y = plain_mutation(x, 0.3, gen(1))
    assert (y != x).all()
    assert torch.equal(y, plain_mutation(x, 0.3, gen(1)))
    assert not torch.equal(y, plain_mutation(x, 0.3, gen(2)))
    eps = torch.randn(x.shape, generator=gen(1))
    theta = 0.3 * math.pi / 2
    assert torch.allclose(y, math.cos(theta) * x + math.sin(theta) * eps)  # the formula itself


def test_local_tokens_change_only_inside_the_radius_and_stay_codes():
    n_codes, (h, w) = 37, (16, 16)
    tokens = torch.randint(n_codes, (h, w), generator=gen(0))
    click, radius, size = (16 * 4.5, 16 * 8.5), 5.0, (256, 256)  # VQGAN f16: grid point (4, 8)
    child = local_mutation(tokens, click, radius, 1.0, gen(1), "tokens", size, n_codes)
    inside = within((4, 8), radius, h, w)
    assert child.dtype == torch.long
    assert torch.equal(child[~inside], tokens[~inside])
    assert (child[inside] != tokens[inside]).float().mean() > 0.8  # 1/37 redraws match by chance
    assert int(child.min()) >= 0 and int(child.max()) < n_codes


def test_token_redraw_probability_is_strength():
    n_codes = 1000
    tokens = torch.randint(n_codes, (64, 64), generator=gen(0))
    child = plain_mutation(tokens, 0.3, gen(1), "tokens", n_codes)
    changed = (child != tokens).float().mean()
    expected, count = 0.3 * (1 - 1 / n_codes), tokens.numel()
    assert abs(float(changed) - expected) < 5 * math.sqrt(expected * (1 - expected) / count)
    assert int(child.min()) >= 0 and int(child.max()) < n_codes


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_0_1_is_refused(strength):
    with pytest.raises(UserError, match="strength"):
        plain_mutation(torch.zeros(2, 4, 4), strength, gen(0))
