"""The plain loop the benchmark measures genart against, kept apart from genart's code.

VQGAN+CLIP the way nerdyrodent/VQGAN-CLIP's generate.py writes it: fp32, a Python loop of
per-crop resamples, CLIP frozen, VQGAN weights left requiring grad as the issue specifies
(generate.py's own loader freezes them: `frozen_vqgan=True` times that too), Adam on z, nothing
else. It computes genart's function (same crop filter, augmentations and straight-through clamp
of the noisy views), so that the bench's parity check can hold. Its straight-through helpers are
deliberate twins of genart's: the parity check compares two independent implementations.
"""

from __future__ import annotations

import math

RANGE = "genart/"  # profiler ranges, the same names genart.render uses


def plain_classes():
    """The straight-through helpers of the reference, written out (built lazily: torch import)."""
    import torch

    class ReplaceGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, shown, carried):
            ctx.shape = carried.shape
            return shown

        @staticmethod
        def backward(ctx, grad):
            return None, grad.sum_to_size(ctx.shape)

    class ClampWithGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, low, high):
            ctx.low, ctx.high = low, high
            ctx.save_for_backward(x)
            return x.clamp(low, high)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (grad * (x - x.clamp(ctx.low, ctx.high)) >= 0), None, None

    return ReplaceGrad.apply, ClampWithGrad.apply


class PlainLoop:
    """VQGAN+CLIP the way generate.py writes it: synth, MakeCutouts, Prompt, Adam on z."""

    def __init__(self, cfg, vqgan, clip, mean, std, tokenizer, frozen_vqgan: bool = False):
        import torch
        from hydra.utils import instantiate
        from torch import nn

        self.replace_grad, self.clamp_with_grad = plain_classes()
        self.vqgan, self.clip, self.mean, self.std = vqgan, clip, mean, std
        self.vqgan.requires_grad_(not frozen_vqgan)  # the reference leaves it unfrozen
        self.clip.eval().requires_grad_(False)
        self.codebook = vqgan.quantize.embedding.weight
        self.z_min = self.codebook.amin(0)[None, :, None, None]
        self.z_max = self.codebook.amax(0)[None, :, None, None]
        self.cutn, self.cut_pow = cfg.cutouts.cutn, cfg.cutouts.cut_pow
        self.cut_size, self.noise_fac = max(clip.visual.image_size), cfg.cutouts.noise
        self.augs = nn.Sequential(*instantiate(cfg.cutouts.augmentations))
        self.kernel = torch.tensor([1.0, 2.0, 1.0]).outer(torch.tensor([1.0, 2.0, 1.0])) / 16
        with torch.no_grad():
            self.embed = clip.encode_text(tokenizer([cfg.prompts.text])).float()  # (1, D)
        factor = 2 ** (len(cfg.generator.ddconfig.ch_mult) - 1)
        self.toks = (cfg.size[1] // factor, cfg.size[0] // factor)
        self.z = self.random_z().requires_grad_(True)
        self.opt = torch.optim.Adam([self.z], lr=cfg.optimizer.lr)

    def random_z(self):
        import torch
        import torch.nn.functional as F

        n_toks, (toks_y, toks_x) = self.codebook.shape[0], self.toks
        one_hot = F.one_hot(torch.randint(n_toks, [toks_y * toks_x]), n_toks).float()
        z = (one_hot @ self.codebook).detach()
        return z.view(1, toks_y, toks_x, -1).permute(0, 3, 1, 2).contiguous()

    def synth(self, z):
        """Nearest codes (straight-through), decode, map to [0, 1] with the gradient-keeping clamp."""
        import torch.nn.functional as F

        flat = z.movedim(1, 3)  # (1, h, w, D)
        dist = (
            flat.pow(2).sum(-1, keepdim=True)
            + self.codebook.pow(2).sum(1)
            - 2 * flat @ self.codebook.T
        )
        one_hot = F.one_hot(dist.argmin(-1), self.codebook.shape[0]).to(dist.dtype)
        z_q = self.replace_grad(one_hot @ self.codebook, flat).movedim(3, 1)
        return self.clamp_with_grad(
            self.vqgan.decoder(self.vqgan.post_quant_conv(z_q)).add(1).div(2), 0, 1
        )

    def blur(self, image):
        """[1, 2, 1]² / 16 prefilter with reflected edges, as one depthwise convolution."""
        import torch.nn.functional as F

        padded = F.pad(image, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(padded, self.kernel.expand(3, 1, 3, 3).to(image), groups=3)

    def resample(self, image, soft, x1: int, y1: int, side: int):
        """One crop to cut_size²: a box filter of ceil(shrink)² bilinear samples per pixel, blended
        with the same from the blurred image by clamp(shrink − 1, 0, 1) (genart's filter)."""
        import torch
        import torch.nn.functional as F

        height, width = image.shape[2:]
        g = math.ceil(side / self.cut_size)  # samples per output pixel and axis
        t = (torch.arange(self.cut_size * g, dtype=image.dtype) + 0.5) * (
            side / (self.cut_size * g)
        )
        ys, xs = torch.meshgrid((y1 + t) * 2 / height - 1, (x1 + t) * 2 / width - 1, indexing="ij")
        grid = torch.stack([xs, ys], dim=-1)[None]  # (1, S·g, S·g, 2) as (x, y) in [-1, 1]

        def sample(source):
            out = F.grid_sample(source, grid, "bilinear", "border", align_corners=False)
            return F.avg_pool2d(out, g)

        sharp, alpha = sample(image), min(max(side / self.cut_size - 1, 0.0), 1.0)
        return sharp + alpha * (sample(soft) - sharp) if alpha > 0 else sharp

    def make_cutouts(self, image, boxes=None, params=None, noise=None):
        """cutn crops one by one, augmented, noised; boxes/params/noise may be given (parity)."""
        import torch

        side_y, side_x = image.shape[2:]
        max_size, min_size = min(side_x, side_y), min(side_x, side_y, self.cut_size)
        soft, cutouts = self.blur(image), []
        for i in range(self.cutn):
            if boxes is None:
                size = int(torch.rand([]) ** self.cut_pow * (max_size - min_size) + min_size)
                x1 = int(torch.randint(0, side_x - size + 1, ()))
                y1 = int(torch.randint(0, side_y - size + 1, ()))
            else:
                x1, y1, size = (
                    int(v) for v in (boxes[i, 0], boxes[i, 1], boxes[i, 2] - boxes[i, 0])
                )
            cutouts.append(self.resample(image, soft, x1, y1, size))
        batch = torch.cat(cutouts)
        for k, aug in enumerate(self.augs):
            batch = aug(batch) if params is None else aug(batch, params=params[k])
        if self.noise_fac:
            if noise is None:
                facs = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, self.noise_fac)
                noise = facs * torch.randn_like(batch)
            batch = batch + noise
            batch = batch + (batch.clamp(0, 1) - batch).detach()  # genart keeps views in [0, 1]
        return batch

    def prompt_loss(self, image_embeds):
        """The reference's Prompt: spherical distance, weight 1, stop −inf, mean over views."""
        import torch
        import torch.nn.functional as F

        a = F.normalize(image_embeds.unsqueeze(1), dim=2)
        b = F.normalize(self.embed.unsqueeze(0), dim=2)
        dists = a.sub(b).norm(dim=2).div(2).arcsin().pow(2).mul(2)
        return self.replace_grad(dists, torch.maximum(dists, torch.tensor(-math.inf))).mean()

    def step(self, i: int, boxes=None, params=None, noise=None):
        import torch
        from torch.profiler import record_function

        self.opt.zero_grad(set_to_none=True)
        with record_function(RANGE + "generator"):
            out = self.synth(self.z)
        with record_function(RANGE + "cutouts"):
            batch = self.make_cutouts(out, boxes, params, noise)
        with record_function(RANGE + "guide"):
            embeds = self.clip.encode_image((batch - self.mean) / self.std).float()
        with record_function(RANGE + "losses"):
            loss = self.prompt_loss(embeds)
        with record_function(RANGE + "backward"):
            loss.backward()
        with record_function(RANGE + "optimizer"), torch.no_grad():
            self.opt.step()
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))
        return loss


def build_plain(cfg, frozen_vqgan: bool = False, clip_state: dict | None = None) -> PlainLoop:
    """The plain loop on freshly built models of the same architectures (random weights)."""
    import torch
    from hydra.utils import instantiate

    from genart.speed.vit import use_sequence_first

    torch.manual_seed(cfg.seed)
    generator, guide = instantiate(cfg.generator), instantiate(cfg.guide)
    if not hasattr(generator, "codebook") or len(guide.models) != 1:
        raise SystemExit(
            "genart.tools.bench: the plain loop is VQGAN + one CLIP; pick a VQGAN "
            "generator and a single-model guide (e.g. vqgan_tiny, clip_tiny)."
        )
    vqgan, model = generator.model, next(iter(guide.models.values()))  # taming's, open_clip's
    if clip_state is not None:
        model.model.load_state_dict(clip_state)
    # generate.py runs OpenAI's clip package, whose ViT is sequence-first; open_clip's stock
    # batch-first layout would make this loop slower than the reference it stands for.
    use_sequence_first(model.model.visual.transformer)
    return PlainLoop(cfg, vqgan, model.model, model.mean, model.std, model.tokenizer, frozen_vqgan)
