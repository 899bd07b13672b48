"""Cutout samplers: the views of the image the guide sees, each with its geometry.

Detail crops follow Crowson's MakeCutouts (VQGAN+CLIP): square crops whose side is
rand**cut_pow between cut_size and the image's short side, kornia augmentations, per-view
noise. Mirrored pairs are the semantic-symmetry cutouts of the Doorways post; composition
windows are the zoomed-out whole-image views of the Malazan post; pooled views are
nerdyrodent/VQGAN-CLIP's default ("latest") cut method (Doorways, Malazan, nerdyrodent;
docs/references.md). Anti-aliased, batched resampling lives in `genart.speed.resample`. All
randomness comes from the global torch RNG (kornia samples from it too), so a seeded run sees the
same views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genart.errors import UserError
from genart.speed.color import use_fast_hue
from genart.speed.guard import applies
from genart.speed.kernels import plan_or_rule
from genart.speed.resample import PAD_MODES, pad_to_square, resample_crops
from genart.speed.views import CHOSEN_VIEWS


@dataclass
class Views:
    """A batch of views of one image and where each came from (docs/architecture.md)."""

    pixels: Tensor  # (N, 3, S, S) in [0, 1]
    centres: Tensor  # (N, 2) crop centre (x, y) in [-1, 1] of the image
    sizes: Tensor  # (N,) crop side / min(H, W), in (0, 1]
    pair: Tensor  # (N,) long: index of the mirrored partner, or -1
    composition: Tensor  # (N,) bool: a zoomed-out whole-image composition window

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def tensors(self) -> list[Tensor]:
        """The fields in declaration order (dataclasses.astuple would deep-copy them)."""
        return [getattr(self, f.name) for f in fields(self)]

    def to(self, device: torch.device | str) -> Views:
        """The same views on another device."""
        return Views(*(t.to(device) for t in self.tensors()))

    @staticmethod
    def cat(*views: Views) -> Views:
        """Concatenates batches of views; partner indices move with their views."""
        offset, pairs = 0, []
        for v in views:
            pairs.append(v.pair.where(v.pair < 0, v.pair + offset))  # -1 stays -1
            offset += len(v)
        joined = Views(*(torch.cat(c) for c in zip(*(v.tensors() for v in views), strict=True)))
        return replace(joined, pair=torch.cat(pairs))


def empty_views(size: int, like: Tensor) -> Views:
    """No views (N = 0) with the dtype and device of `like`."""
    device = like.device
    return Views(
        like.new_zeros(0, 3, size, size),
        torch.zeros(0, 2, device=device),
        torch.zeros(0, device=device),
        torch.zeros(0, dtype=torch.long, device=device),
        torch.zeros(0, dtype=torch.bool, device=device),
    )


def sample_boxes(height: int, width: int, n: int, cut_size: int, cut_pow: float) -> Tensor:
    """(n, 4) square crops (x1, y1, x2, y2), Crowson's law: side = rand**cut_pow over [min, max)."""
    max_size, min_size = min(height, width), min(height, width, cut_size)
    sides = (torch.rand(n) ** cut_pow * (max_size - min_size) + min_size).floor()  # (n,)
    x1 = (torch.rand(n) * (width - sides + 1)).floor().clamp(max=width - sides)  # uniform offsets
    y1 = (torch.rand(n) * (height - sides + 1)).floor().clamp(max=height - sides)
    return torch.stack([x1, y1, x1 + sides, y1 + sides], dim=1)


def mirror_boxes(boxes: Tensor, width: int) -> Tensor:
    """Horizontal mirror images (N, 4) of boxes: same y and side, x1' = W − x2."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return torch.stack([width - x2, y1, width - x1, y2], dim=1)


def left_members(boxes: Tensor, width: int) -> Tensor:
    """Each box, or its mirror when its centre lies right of the middle: centre x ≤ 0."""
    right = boxes[:, 0] + boxes[:, 2] > width  # (N,) 2·centre > W
    return torch.where(right[:, None], mirror_boxes(boxes, width), boxes)


def box_geometry(boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Centres (N, 2) (x, y) in [-1, 1] and sizes (N,) side / min(H, W)."""
    extent = torch.tensor([width, height], dtype=boxes.dtype)
    centres = (boxes[:, :2] + boxes[:, 2:] - extent) / extent  # 2·mid / extent − 1, x-odd exactly
    return centres, (boxes[:, 2] - boxes[:, 0]) / min(height, width)


VIEW_INDEPENDENT = ("order", "forward_input_shape")  # kornia parameters not drawn per view


def transform_chosen(module: nn.Module, pixels: Tensor, params: dict | None = None) -> Tensor:
    """`module(pixels)` for a kornia augmentation, transforming only the views its coin flips chose.

    kornia transforms every view, then keeps the chosen ones: at p = 0.7 it throws away 30 % of
    the work (the four reference augmentations on 32 views of 224², forward + backward, 2-core
    CPU: 224 ms, against 144 ms for the 22 views they keep). Same draws, same parameters, same
    pixels; `module._params` holds the whole batch's parameters afterwards, as after
    `module(pixels)`. `params`: replay these instead of drawing. Other modules are just called,
    and so is every module on GPUs, where picking rows would wait for the device.
    """
    if not hasattr(module, "forward_parameters"):
        return module(pixels)
    if not applies(CHOSEN_VIEWS):  # kornia's own path: every view transformed, the chosen kept
        return module(pixels, params=params)
    params = module.forward_parameters(pixels.shape) if params is None else params
    chosen, n = params["batch_prob"] > 0.5, pixels.shape[0]
    per_view = all(k in VIEW_INDEPENDENT or v.shape[:1] == (n,) for k, v in params.items())
    if pixels.device.type != "cpu" or chosen.all() or not per_view:  # GPUs: no host sync
        return module(pixels, params=params)
    rows, out = chosen.nonzero().squeeze(1), pixels
    if len(rows):
        subset = {k: v if k in VIEW_INDEPENDENT else v[rows] for k, v in params.items()}
        subset["forward_input_shape"] = torch.tensor([len(rows), *pixels.shape[1:]])
        out = pixels.index_copy(0, rows, module(pixels.index_select(0, rows), params=subset))
    module._params = params  # the whole batch's, not the subset's that module() kept
    return out


def augment(pixels: Tensor, modules: Sequence[nn.Module]) -> Tensor:
    """Applies the augmentation modules in order, each sampling fresh parameters."""
    for module in modules:
        pixels = transform_chosen(module, pixels)
    return pixels


def augment_mirrored(
    left: Tensor, right_flipped: Tensor, modules: Sequence[nn.Module]
) -> tuple[Tensor, Tensor]:
    """Augments left crops, then the flipped right crops with the same parameters (flip∘A∘flip)."""
    for module in modules:
        left = transform_chosen(module, left)  # (k, 3, S, S), samples parameters
        params = getattr(module, "_params", None)  # kornia's; others sample afresh
        right_flipped = transform_chosen(module, right_flipped, params)  # same parameters
    return left, right_flipped


def sample_noise(like: Tensor, scale: float) -> Tensor:
    """Gaussian noise, std drawn per view from U(0, scale) (the reference's noise_fac)."""
    std = like.new_empty(like.shape[0], 1, 1, 1).uniform_(0, scale)  # (N, 1, 1, 1)
    return std * torch.randn_like(like)


def clamp_straight_through(pixels: Tensor) -> Tensor:
    """clamp(x, 0, 1) forward, identity backward: views stay in [0, 1], no dead gradients."""
    return pixels + (pixels.clamp(0, 1) - pixels).detach()


def crop_views(pixels: Tensor, boxes: Tensor, height: int, width: int, pair: Tensor) -> Views:
    """Detail views from resampled crops and the boxes they came from."""
    centres, sizes = box_geometry(boxes, height, width)
    device = pixels.device
    composition = torch.zeros(len(boxes), dtype=torch.bool, device=device)
    return Views(pixels, centres.to(device), sizes.to(device), pair.to(device), composition)


class CompositionWindows(nn.Module):
    """Zoomed-out, augmented views of the whole image (Malazan; docs/references.md), until `end`."""

    def __init__(
        self,
        count: int,
        end: int | None = None,
        augmentations: Sequence[nn.Module] | None = None,
        padding_mode: str = "reflect",
    ):
        super().__init__()
        if padding_mode not in PAD_MODES:
            raise UserError(
                f'cutouts.composition.padding_mode is "{padding_mode}"; use '
                f"{' or '.join(PAD_MODES)}."
            )
        self.count, self.end, self.padding_mode = count, end, padding_mode
        self.augmentations = nn.ModuleList(list(augmentations or []))
        use_fast_hue(self.augmentations)  # the same hue shift, ~2x faster (genart.speed.color)

    def active(self, step: int) -> bool:
        """Whether windows are returned at this step (none from `end` on)."""
        return self.count > 0 and (self.end is None or step < self.end)

    def forward(self, image: Tensor, step: int, cut_size: int) -> Views:
        """image (1, 3, H, W) → `count` windows (count, 3, S, S), or none once past `end`."""
        if not self.active(step):
            return empty_views(cut_size, image)
        square = pad_to_square(image, self.padding_mode)  # (1, 3, M, M)
        whole = torch.tensor([[0.0, 0.0, square.shape[-1], square.shape[-2]]])  # (1, 4)
        pixels = resample_crops(square, whole, cut_size).repeat(self.count, 1, 1, 1)
        pixels = augment(pixels, self.augmentations)  # (count, 3, S, S)
        device, n = image.device, self.count
        return Views(
            pixels,
            torch.zeros(n, 2, device=device),  # centred: no part in positional weighting
            torch.ones(n, device=device),
            torch.full((n,), -1, dtype=torch.long, device=device),  # never in a mirrored pair
            torch.ones(n, dtype=torch.bool, device=device),
        )


class Cutouts(nn.Module):
    """Crowson-style random square crops, optionally in mirrored pairs, plus composition windows.

    Mirrored (`mirrored=True`): cutn / 2 left crops (centre x ≤ 0) and their exact mirrors, laid
    out [L0..Lk-1, R0..Rk-1] with pair[i] = i + k and pair[i + k] = i. Each right crop gets the
    mirrored augmentation (and noise) of its left partner. `flip_right=True` returns the right
    member flipped (its pixels show the mirrored crop, so semantic symmetry compares like with
    like); by default it shows the image as it is.
    """

    def __init__(
        self,
        cutn: int,
        cut_size: int | None = None,
        cut_pow: float = 1.0,
        augmentations: Sequence[nn.Module] | None = None,
        noise: float = 0.0,
        mirrored: bool = False,
        flip_right: bool = False,
        composition: CompositionWindows | None = None,
    ):
        super().__init__()
        if mirrored and cutn % 2:
            raise UserError(
                f"cutouts.cutn is {cutn}; mirrored cutouts come in pairs: use an even cutn."
            )
        self.cutn, self.cut_size, self.cut_pow, self.noise = cutn, cut_size, cut_pow, noise
        self.mirrored, self.flip_right = mirrored, flip_right
        self.augmentations = nn.ModuleList(list(augmentations or []))
        use_fast_hue(self.augmentations)  # the same hue shift, ~2x faster (genart.speed.color)
        self.composition = composition
        self.dtype = torch.float32  # the resampling products' (set_precision)

    def set_precision(self, dtype: torch.dtype, plan=None) -> None:
        """Resample the crops in `dtype` (genart.speed.resample) where the kernel plan says
        `resample: reduced`, else in fp32; augmentations and noise stay fp32.

        32 views of 224² from 256², bf16: 0.12 → 0.03 s of matrix products per step (2-core
        CPU). The windows of `composition`, one resample per step, stay in the image's dtype.
        """
        plan = plan_or_rule(plan, "cpu", dtype)
        self.dtype = dtype if plan.resample == "reduced" else torch.float32

    def output_size(self) -> int:
        """S, the side of every view."""
        if self.cut_size is None:
            raise UserError(
                "cutouts.cut_size is null: set it, or let the run pass the guide's size."
            )
        return self.cut_size

    def forward(self, image: Tensor, step: int) -> Views:
        """image (1, 3, H, W) in [0, 1] → detail views, then composition windows while active."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"Cutouts take one image (1, 3, H, W), got {tuple(image.shape)}.")
        size = self.output_size()
        views = self.mirrored_views(image, size) if self.mirrored else self.plain_views(image, size)
        if self.composition is None:
            return views
        return Views.cat(views, self.composition(image, step, size))

    def plain_views(self, image: Tensor, size: int) -> Views:
        """cutn independent crops."""
        h, w = image.shape[-2:]
        boxes = sample_boxes(h, w, self.cutn, size, self.cut_pow)  # (N, 4)
        crops = resample_crops(image, boxes, size, self.dtype)  # (N, 3, S, S)
        pixels = augment(crops, self.augmentations)
        if self.noise > 0:
            pixels = clamp_straight_through(pixels + sample_noise(pixels, self.noise))
        return crop_views(pixels, boxes, h, w, torch.full((self.cutn,), -1))

    def mirrored_views(self, image: Tensor, size: int) -> Views:
        """cutn / 2 left crops, then their mirrors with mirrored augmentations."""
        h, w = image.shape[-2:]
        k = self.cutn // 2
        left = left_members(sample_boxes(h, w, k, size, self.cut_pow), w)  # (k, 4)
        boxes = torch.cat([left, mirror_boxes(left, w)])  # (2k, 4): [L0..Lk-1, R0..Rk-1]
        crops = resample_crops(image, boxes, size, self.dtype)  # (2k, 3, S, S)
        a, b = augment_mirrored(crops[:k], crops[k:].flip(-1), self.augmentations)  # left frame
        if self.noise > 0:
            noise = sample_noise(a, self.noise)  # one draw per pair, mirrored onto the right
            a, b = clamp_straight_through(a + noise), clamp_straight_through(b + noise)
        pixels = torch.cat([a, b if self.flip_right else b.flip(-1)])
        pair = torch.cat([torch.arange(k) + k, torch.arange(k)])
        return crop_views(pixels, boxes, h, w, pair)


def pool_whole(image: Tensor, size: int) -> Tensor:
    """image (1, 3, H, W) → (1, 3, S, S): the mean of adaptive average and max pooling."""
    return (F.adaptive_avg_pool2d(image, size) + F.adaptive_max_pool2d(image, size)) / 2


class PooledCutouts(Cutouts):
    """cutn copies of the whole image, pooled to cut_size, augmented, noised: nerdyrodent's
    default "latest" cut method (nerdyrodent; docs/references.md).

    No crops, so every view is centred, of size 1 and unpaired. The noise is added unclamped, as
    the reference adds it: views may leave [0, 1] by a few noise stds. `set_precision` changes
    nothing here: the pooling is one pass over the image, not a per-view product.
    """

    def __init__(
        self,
        cutn: int,
        cut_size: int | None = None,
        augmentations: Sequence[nn.Module] | None = None,
        noise: float = 0.0,
        mirrored: bool = False,
    ):
        if mirrored:
            raise UserError(
                "cutouts.mirrored is true with cutouts=pooled, whose views are all the whole "
                "image: none has a mirrored partner. Use cutouts=mirrored for mirrored pairs."
            )
        super().__init__(cutn, cut_size, augmentations=augmentations, noise=noise)

    def plain_views(self, image: Tensor, size: int) -> Views:
        """cutn augmented copies of the pooled whole image (N, 3, S, S)."""
        pixels = augment(pool_whole(image, size).repeat(self.cutn, 1, 1, 1), self.augmentations)
        if self.noise > 0:
            pixels = pixels + sample_noise(pixels, self.noise)
        n, device = self.cutn, image.device
        return Views(
            pixels,
            torch.zeros(n, 2, device=device),
            torch.ones(n, device=device),
            torch.full((n,), -1, dtype=torch.long, device=device),
            torch.zeros(n, dtype=torch.bool, device=device),
        )
