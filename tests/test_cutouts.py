"""Cutout samplers: real crops, geometry, anti-aliasing, mirrored pairs, composition windows."""

from pathlib import Path

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F

from genart.cutouts import CompositionWindows, Cutouts, Views, mirror_boxes, sample_boxes
from genart.errors import UserError
from genart.speed.resample import PAD_MODES, blur_weights, pad_to_square, resample_crops

CONF = Path(__file__).resolve().parents[1] / "conf"


def ramp_image(height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W): R = x, G = y of each pixel centre in [0, 1], B = 0.5."""
    x = ((torch.arange(width) + 0.5) / width).expand(height, width)
    y = ((torch.arange(height) + 0.5) / height)[:, None].expand(height, width)
    return torch.stack([x, y, torch.full_like(x, 0.5)])[None]


def checkerboard(side: int) -> torch.Tensor:
    """(1, 3, side, side) 1-px checkerboard of 0 and 1."""
    idx = torch.arange(side)
    board = ((idx[:, None] + idx[None]) % 2).float()
    return board.expand(1, 3, side, side).contiguous()


def symmetric_image(height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) random image equal to its own horizontal flip."""
    x = torch.rand(1, 3, height, width)
    return (x + x.flip(-1)) / 2


def strong_augs() -> list:
    """Augmentations that always fire, so the mirrored tests cannot pass by doing nothing."""
    return [
        K.RandomAffine(degrees=25, translate=0.1, shear=5, p=1.0, padding_mode="border"),
        K.RandomPerspective(0.5, p=1.0),
        K.ColorJitter(0.1, 0.1, 0.1, 0.1, p=1.0),
        K.RandomErasing((0.1, 0.4), (0.3, 1 / 0.3), p=1.0),
    ]


# --- resampling ------------------------------------------------------------------------------


def test_crop_at_output_size_is_an_exact_copy():
    image = torch.rand(1, 3, 40, 50)
    view = resample_crops(image, torch.tensor([[7.0, 3.0, 39.0, 35.0]]), 32)
    torch.testing.assert_close(view[0], image[0, :, 3:35, 7:39])


def test_crops_of_different_sizes_in_one_call_match_single_calls():
    image = F.interpolate(torch.rand(1, 3, 8, 8), size=(256, 256), mode="bicubic")  # smooth
    boxes = torch.tensor(
        [[0.0, 0, 32, 32], [10, 20, 74, 84], [100, 50, 228, 178], [0, 0, 256, 256]]
    )
    batched = resample_crops(image, boxes, 32)  # (4, 3, 32, 32)
    for box, view in zip(boxes, batched, strict=True):
        torch.testing.assert_close(view, resample_crops(image, box[None], 32)[0])
        x1, y1, x2, y2 = box.int().tolist()
        reference = F.interpolate(
            image[..., y1:y2, x1:x2], (32, 32), mode="bilinear", antialias=True
        )
        # Same picture as PyTorch's antialiased resize up to the filters' shapes (box+[1,2,1]
        # against a triangle): over 300 random smooth images the largest pixel gap was 0.0205.
        gap = (view - reference[0]).abs()
        assert gap.max() < 0.03 and gap.mean() < 0.005


def test_checkerboard_turns_grey_while_naive_bilinear_aliases():
    torch.manual_seed(0)
    image = checkerboard(256)
    views = Cutouts(cutn=64, cut_size=32)(image, step=0)
    shrink = views.sizes * 256 / 32
    naive = torch.stack(
        [naive_crop(image, c, s) for c, s in zip(views.centres, views.sizes, strict=True)]
    )
    ours_std = views.pixels.std(dim=(1, 2, 3))[shrink >= 1.5]  # near 1x nothing can remove it
    naive_std = naive.std(dim=(1, 2, 3))[shrink >= 1.5]
    assert len(ours_std) > 40
    assert ours_std.max() < 0.05
    assert (views.pixels.mean(dim=(1, 2, 3)) - 0.5).abs().max() < 0.01
    assert naive_std.mean() > 0.1  # F.interpolate(bilinear) samples 4 pixels: moiré


def naive_crop(image: torch.Tensor, centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """The crop a view came from, shrunk by F.interpolate(mode="bilinear") (no anti-aliasing)."""
    side = round(float(size) * 256)
    x1, y1 = ((centre + 1) * 128 - side / 2).round().int().tolist()
    crop = image[..., y1 : y1 + side, x1 : x1 + side]
    return F.interpolate(crop, (32, 32), mode="bilinear", align_corners=False)[0]


def test_prefilter_removes_the_box_filter_ripple_at_odd_shrink():
    from torchvision.ops import roi_align

    stripes = (torch.arange(96) % 2).float().expand(1, 3, 96, 96).contiguous()  # 1-px stripes
    box = torch.tensor([[0.0, 0.0, 96.0, 96.0]])
    bare = roi_align(stripes, [box], (32, 32), 1.0, -1, True)  # a 3-px box: 2/3 or 1/3 per pixel
    assert bare.std() > 0.1
    assert resample_crops(stripes, box, 32).std() < 1e-3
    blur = blur_weights(torch.eye(96))  # B: B @ A blurs A's rows with reflected edges
    assert (blur @ stripes[0, 0].T).std() < 1e-6  # [1, 2, 1] nulls Nyquist, edges included
    torch.testing.assert_close(blur.sum(dim=1), torch.ones(96))  # and keeps the mean


def blur_reflect(image):
    """[1, 2, 1]² / 16 blur with reflected edges, written plainly as a reference."""
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 16
    padded = F.pad(image, (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel.expand(image.shape[1], 1, 3, 3), groups=image.shape[1])


@pytest.mark.parametrize(
    ("height", "width", "size"), [(256, 256, 224), (64, 96, 16), (300, 200, 32)]
)
def test_resampling_equals_roi_align_of_sharp_and_prefiltered_images(height, width, size):
    from torchvision.ops import roi_align

    image = torch.rand(1, 3, height, width)
    boxes = sample_boxes(height, width, 16, size, 1.0)
    outside = torch.tensor([[0.0, 0, width, height], [-3.5, 2, 40, 45.5]])  # whole, partly outside
    boxes = torch.cat([boxes, outside])
    sharp = roi_align(image, [boxes], (size, size), 1.0, -1, True)
    soft = roi_align(blur_reflect(image), [boxes], (size, size), 1.0, -1, True)
    shrink = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1) / size
    expected = torch.lerp(sharp, soft, (shrink - 1).clamp(0, 1)[:, None, None, None])
    torch.testing.assert_close(resample_crops(image, boxes, size), expected, atol=1e-6, rtol=0)


def test_resampling_backward_is_deterministic_and_reaches_every_pixel():
    image = torch.rand(1, 3, 64, 64, requires_grad=True)
    boxes = torch.tensor([[0.0, 0, 64, 64], [5, 9, 45, 49]])
    weights = torch.rand(2, 3, 16, 16)
    grads = []
    for _ in range(2):
        (resample_crops(image, boxes, 16) * weights).sum().backward()
        grads.append(image.grad.clone())
        image.grad = None
    assert torch.equal(grads[0], grads[1])
    assert (grads[0] != 0).all()  # area filter: no pixel skipped (unlike point sampling)


def test_bf16_resampling_products_stay_within_bf16_rounding_and_return_fp32():
    image = torch.rand(1, 3, 96, 128)
    boxes = torch.tensor([[0.0, 0, 96, 96], [5, 9, 45, 49], [30, 2, 62, 34]])
    exact = resample_crops(image, boxes, 32)
    low = resample_crops(image, boxes, 32, torch.bfloat16)
    assert low.dtype == torch.float32
    assert low.is_contiguous() and exact.is_contiguous()  # the augmentations' warps want it
    err = (low - exact).abs()
    assert 0 < err.max() < 2**-6 and err.mean() < 2**-9  # bf16 inputs, fp32 accumulation


def test_cutouts_resample_in_their_precision():
    image, cutouts = torch.rand(1, 3, 64, 64), Cutouts(cutn=4, cut_size=16)
    views = []
    for dtype in (torch.float32, torch.bfloat16, torch.float32):
        cutouts.set_precision(dtype)
        torch.manual_seed(0)
        views.append(cutouts(image, 0).pixels)
    assert torch.equal(views[0], views[2]) and not torch.equal(views[0], views[1])
    assert torch.allclose(views[0], views[1], atol=2**-6)


@pytest.mark.parametrize("mode", sorted(PAD_MODES))
def test_pad_to_square_handles_wide_panoramas(mode):
    image = torch.rand(1, 3, 10, 64)
    square = pad_to_square(image, mode)
    assert square.shape == (1, 3, 64, 64)
    torch.testing.assert_close(square[..., 27:37, :], image)


# --- detail views ----------------------------------------------------------------------------


def test_views_are_real_crops_at_their_stated_geometry():
    torch.manual_seed(1)
    height, width, size = 96, 160, 24
    views = Cutouts(cutn=16, cut_size=size)(ramp_image(height, width), step=0)
    assert ((views.centres >= -1) & (views.centres <= 1)).all()
    assert ((views.sizes > 0) & (views.sizes <= 1)).all()
    grid = (torch.arange(size) + 0.5) / size - 0.5  # (S,) output pixel centres, in crop sides
    half_px = 0.5 / width, 0.5 / height  # the prefilter's reflected edge moves edge rows a little
    for pixels, (cx, cy), s in zip(views.pixels, views.centres, views.sizes, strict=True):
        side = s * min(height, width)
        expect_x = ((cx + 1) * width / 2 + grid * side) / width  # R = x at each view column
        expect_y = ((cy + 1) * height / 2 + grid * side) / height  # G = y at each view row
        torch.testing.assert_close(pixels[0], expect_x.expand(size, size), atol=half_px[0], rtol=0)
        torch.testing.assert_close(
            pixels[1], expect_y[:, None].expand(size, size), atol=half_px[1], rtol=0
        )


def test_cut_pow_follows_crowsons_size_law():
    image = torch.rand(1, 3, 256, 256)

    def mean_size(cut_pow: float) -> float:
        torch.manual_seed(0)
        return float(Cutouts(cutn=2000, cut_size=16, cut_pow=cut_pow)(image, 0).sizes.mean())

    low = 16 / 256  # side = rand**p · (256 − 16) + 16, so E[size] ≈ low + (1 − low) / (p + 1)
    for cut_pow in (0.5, 1.0, 3.0):
        assert mean_size(cut_pow) == pytest.approx(low + (1 - low) / (cut_pow + 1), abs=0.02)
    assert mean_size(3.0) < mean_size(1.0) - 0.15  # cut_pow > 1: more small crops


def test_noise_keeps_views_in_range_and_gradients_alive():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64, requires_grad=True)
    views = Cutouts(cutn=8, cut_size=32, noise=0.5)(image, 0)
    assert views.pixels.min() >= 0 and views.pixels.max() <= 1
    views.pixels.sum().backward()
    assert (image.grad > 0).all()  # straight-through clamp: saturated pixels still pass gradient


# --- mirrored pairs --------------------------------------------------------------------------


def test_mirrored_pairs_geometry():
    torch.manual_seed(2)
    views = Cutouts(cutn=24, cut_size=32, mirrored=True)(torch.rand(1, 3, 96, 200), 0)
    k = 12
    assert torch.equal(views.pair, torch.cat([torch.arange(k) + k, torch.arange(k)]))
    assert torch.equal(views.pair[views.pair], torch.arange(2 * k))  # pair[pair[i]] = i
    left, right = views.centres[:k], views.centres[k:]
    assert (left[:, 0] <= 0).all()  # left members first
    assert torch.equal(right[:, 0], -left[:, 0])
    assert torch.equal(right[:, 1], left[:, 1])
    assert torch.equal(views.sizes[:k], views.sizes[k:])
    assert not views.composition.any()


def test_mirror_boxes_are_exact():
    boxes = torch.tensor([[3.0, 5, 40, 42]])
    assert torch.equal(mirror_boxes(boxes, 100), torch.tensor([[60.0, 5, 97, 42]]))
    assert torch.equal(mirror_boxes(mirror_boxes(boxes, 100), 100), boxes)


def test_right_member_shows_the_mirrored_region():
    torch.manual_seed(3)
    views = Cutouts(cutn=8, cut_size=16, mirrored=True)(ramp_image(64, 128), 0)
    red = views.pixels[:, 0].mean(dim=(1, 2))  # mean x of the region each view shows
    torch.testing.assert_close(red, (views.centres[:, 0] + 1) / 2, atol=2e-3, rtol=0)


@pytest.mark.parametrize("flip_right", [False, True])
def test_mirrored_augmentations_on_a_symmetric_image(flip_right):
    torch.manual_seed(4)
    image = symmetric_image(80, 120)
    cutouts = Cutouts(
        cutn=16,
        cut_size=32,
        augmentations=strong_augs(),
        noise=0.1,
        mirrored=True,
        flip_right=flip_right,
    )
    views = cutouts(image, 0)
    left, right = views.pixels[:8], views.pixels[8:]
    expected = left if flip_right else left.flip(-1)  # flip∘A∘flip of the mirrored crop
    torch.testing.assert_close(right, expected, atol=1e-5, rtol=0)
    torch.manual_seed(4)
    plain = Cutouts(cutn=16, cut_size=32, mirrored=True)(image, 0).pixels[:8]
    assert (left - plain).abs().mean() > 0.02  # the augmentations did act


def test_odd_cutn_with_mirrored_pairs_is_a_user_error():
    with pytest.raises(UserError, match="even"):
        Cutouts(cutn=7, cut_size=32, mirrored=True)


def test_missing_cut_size_is_a_user_error():
    with pytest.raises(UserError, match="cut_size"):
        Cutouts(cutn=4)(torch.rand(1, 3, 32, 32), 0)


# --- composition windows ---------------------------------------------------------------------


def test_composition_windows_stop_at_end():
    torch.manual_seed(5)
    windows = CompositionWindows(
        count=3, end=10, augmentations=[K.RandomAffine(20, scale=(0.6, 0.9))]
    )
    cutouts = Cutouts(cutn=6, cut_size=24, mirrored=True, composition=windows)
    early, late = cutouts(torch.rand(1, 3, 48, 96), 9), cutouts(torch.rand(1, 3, 48, 96), 10)
    assert len(early) == 9 and len(late) == 6
    assert torch.equal(early.composition, torch.tensor([False] * 6 + [True] * 3))
    assert torch.equal(early.pair[6:], torch.full((3,), -1))
    assert torch.equal(early.centres[6:], torch.zeros(3, 2))
    assert torch.equal(early.sizes[6:], torch.ones(3))
    assert early.pixels.shape == (9, 3, 24, 24)
    assert not late.composition.any()


def test_composition_window_shows_the_whole_padded_image():
    window = CompositionWindows(count=1, padding_mode="border")(ramp_image(32, 64), 0, 16)
    red = window.pixels[0, 0]  # x ramp: 0 on the left edge, 1 on the right
    assert red[:, 0].mean() < 0.05 and red[:, -1].mean() > 0.95
    assert abs(float(red.mean()) - 0.5) < 0.01


def test_an_unknown_padding_mode_stops_the_run_when_the_windows_are_built():
    with pytest.raises(UserError) as err:
        CompositionWindows(count=1, padding_mode="zeros")
    assert str(err.value) == 'cutouts.composition.padding_mode is "zeros"; use reflect or border.'


# --- the whole sampler -----------------------------------------------------------------------


def full_sampler() -> Cutouts:
    windows = CompositionWindows(count=2, end=5, augmentations=[K.RandomPerspective(0.4, p=1.0)])
    return Cutouts(
        cutn=8,
        cut_size=32,
        augmentations=strong_augs(),
        noise=0.1,
        mirrored=True,
        composition=windows,
    )


def test_same_seed_same_views():
    image, cutouts = torch.rand(1, 3, 64, 96), full_sampler()
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(cutouts(image, 0))
    for a, b in zip(runs[0].tensors(), runs[1].tensors(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0].pixels, runs[2].pixels)


def test_gradient_reaches_the_image_through_crops_and_augmentations():
    torch.manual_seed(6)
    image = torch.rand(1, 3, 64, 96, requires_grad=True)
    views = full_sampler()(image, 0)
    (views.pixels * torch.rand_like(views.pixels)).sum().backward()
    assert torch.isfinite(image.grad).all()
    assert (image.grad != 0).float().mean() > 0.5


def test_views_cat_moves_partner_indices():
    views = Cutouts(cutn=4, cut_size=8, mirrored=True)(torch.rand(1, 3, 16, 16), 0)
    both = Views.cat(views, views).to("cpu")
    assert len(both) == 8
    assert torch.equal(both.pair, torch.tensor([2, 3, 0, 1, 6, 7, 4, 5]))


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["standard", "mirrored", "composition", "pooled"])
def test_yaml_configs_instantiate_with_kornia_augmentations(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=f"cutouts/{name}").cutouts
    cutouts = instantiate(cfg, cut_size=32)
    assert [type(m).__name__ for m in cutouts.augmentations] == [
        "RandomAffine",
        "RandomPerspective",
        "ColorJitter",
        "RandomErasing",
    ]
    assert cutouts.mirrored == (name in ("mirrored", "composition"))
    assert (cutouts.composition is not None) == (name == "composition")
    torch.manual_seed(0)
    views = cutouts(torch.rand(1, 3, 48, 64), step=0)
    assert views.pixels.shape[1:] == (3, 32, 32)
    assert len(views) == 32 + (4 if name == "composition" else 0)


def test_compile_leaves_the_augmentations_eager():
    """kornia's kernel compile would recompile for every count of chosen views (transform_chosen)."""
    from genart.speed.precision import compile_models

    cutouts = Cutouts(8, 16, augmentations=[K.ColorJitter(0.1, 0.1, 0.1, 0.1, p=0.7)])
    compile_models([cutouts])
    assert getattr(cutouts.augmentations[0], "_compile_kwargs", None) is None


def reference_augmentations(p: float = 0.7) -> list:
    """The standard config's four (p = 0.7), plus a grayscale whose params are only the coin."""
    return [
        K.RandomAffine(15, 0.1, shear=5, p=p, padding_mode="border"),
        K.RandomPerspective(0.7, p=p),
        K.ColorJitter(0.1, 0.1, 0.1, 0.1, p=p),
        K.RandomErasing((0.1, 0.4), (0.3, 3.3333), same_on_batch=True, p=p),
        K.RandomGrayscale(p=0.3),
    ]


@pytest.mark.parametrize("p", [0.0, 0.7, 1.0])
def test_transform_chosen_equals_kornia_and_transforms_only_the_chosen_views(p):
    from genart.cutouts import transform_chosen

    x = torch.rand(12, 3, 24, 24, requires_grad=True)
    grad = torch.randn(12, 3, 24, 24)
    stock, ours = reference_augmentations(p), reference_augmentations(p)
    seen = []
    for module in ours:
        module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    torch.manual_seed(3)
    y_stock = x
    for module in stock:
        y_stock = module(y_stock)
    after_stock = torch.rand(4)
    torch.manual_seed(3)
    y_ours = x
    for module in ours:
        y_ours = transform_chosen(module, y_ours)
    assert torch.equal(torch.rand(4), after_stock)  # the same draws
    assert torch.equal(y_ours, y_stock)
    assert torch.equal(*(torch.autograd.grad(y, x, grad)[0] for y in (y_ours, y_stock)))
    for a, b in zip(stock, ours, strict=True):  # replay (mirrored partners) reads these
        assert a._params.keys() == b._params.keys()
        assert all(torch.equal(a._params[k], b._params[k]) for k in a._params)
    chosen = [int((m._params["batch_prob"] > 0.5).sum()) for m in ours]
    assert seen == [c for c in chosen if c > 0]  # kornia saw the chosen views only
    if p == 0.7:
        assert 0 < min(chosen[:3]) and max(chosen[:3]) < 12
