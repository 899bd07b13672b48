"""The plain loop the benchmark measures genart against, kept apart from genart's code.

nerdyrodent/VQGAN-CLIP's generate.py step at its defaults, written out (nerdyrodent;
docs/references.md): fp32, both models frozen (`eval().requires_grad_(False)`), straight-through
quantisation, the "latest" cutouts (the whole image pooled cutn times, augments Af Pe Ji Er,
unclamped per-view noise), one Prompt, Adam on z, z clamped to the codebook range. Its
straight-through helpers are deliberate twins of genart's: the parity check compares two
independent implementations.
"""

from __future__ import annotations

import math

RANGE = "genart/"  # profiler ranges, the same names genart.render uses


def reference_augmentations() -> list:
    """generate.py's default augments, Af Pe Ji Er, with its values."""
    import kornia.augmentation as K

    return [
        K.RandomAffine(
            degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros", keepdim=True
        ),
        K.RandomPerspective(distortion_scale=0.7, p=0.7),
        K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
        K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7),
    ]


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

    def __init__(self, cfg, vqgan, clip, mean, std, tokenizer):
        import torch
        from torch import nn

        self.replace_grad, self.clamp_with_grad = plain_classes()
        self.vqgan, self.clip, self.mean, self.std = vqgan, clip, mean, std
        self.vqgan.eval().requires_grad_(False)
        self.clip.eval().requires_grad_(False)
        self.codebook = vqgan.quantize.embedding.weight
        self.z_min = self.codebook.amin(0)[None, :, None, None]
        self.z_max = self.codebook.amax(0)[None, :, None, None]
        self.cutn, self.noise_fac = cfg.cutouts.cutn, cfg.cutouts.noise
        cut_size = max(clip.visual.image_size)
        self.av_pool = nn.AdaptiveAvgPool2d((cut_size, cut_size))
        self.max_pool = nn.AdaptiveMaxPool2d((cut_size, cut_size))
        # an empty cutouts.augmentations switches them off in both loops (the bench's parity)
        self.augs = nn.Sequential(*(reference_augmentations() if cfg.cutouts.augmentations else []))
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

    def make_cutouts(self, image, params=None, noise=None):
        """cutn pooled copies of the whole image, augmented, noised; params/noise may be given."""
        import torch

        cutouts = [(self.av_pool(image) + self.max_pool(image)) / 2 for _ in range(self.cutn)]
        batch = torch.cat(cutouts)
        for k, aug in enumerate(self.augs):
            batch = aug(batch) if params is None else aug(batch, params=params[k])
        if self.noise_fac:
            if noise is None:
                facs = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, self.noise_fac)
                noise = facs * torch.randn_like(batch)
            batch = batch + noise
        return batch

    def prompt_loss(self, image_embeds):
        """The reference's Prompt: spherical distance, weight 1, stop −inf, mean over views."""
        import torch
        import torch.nn.functional as F

        a = F.normalize(image_embeds.unsqueeze(1), dim=2)
        b = F.normalize(self.embed.unsqueeze(0), dim=2)
        dists = a.sub(b).norm(dim=2).div(2).arcsin().pow(2).mul(2)
        return self.replace_grad(dists, torch.maximum(dists, torch.tensor(-math.inf))).mean()

    def step(self, i: int, params=None, noise=None):
        import torch
        from torch.profiler import record_function

        self.opt.zero_grad(set_to_none=True)
        with record_function(RANGE + "generator"):
            out = self.synth(self.z)
        with record_function(RANGE + "cutouts"):
            batch = self.make_cutouts(out, params, noise)
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


def build_plain(cfg, clip_state: dict | None = None) -> PlainLoop:
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
    return PlainLoop(cfg, vqgan, model.model, model.mean, model.std, model.tokenizer)
