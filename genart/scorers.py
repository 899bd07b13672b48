"""Aesthetic scorers that rank a finished image (conf/scorer): NIMA (Talebi & Milanfar 2018), the
LAION aesthetic predictor v2 (an MLP over CLIP ViT-L/14 embeddings) and the run's CLIP-prompt
similarity. Each has `score(image) -> float`, a `name` and the `range` its scores fall in."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genart.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUCKETS = 10  # NIMA predicts the AVA vote histogram over the ratings 1..10
PromptSimilarity = Callable[..., float]  # (image, n_views=, seed=) -> weighted similarity


class CLIPPromptScorer:
    """The run's weighted CLIP similarity to its prompts over fixed, seeded views (genart.render)."""

    def __init__(
        self, views: int, seed: int, name: str = "clip_prompt", range: Sequence = (-1, 1)
    ) -> None:
        self.views, self.seed = int(views), int(seed)
        self.name, self.range = name, (float(range[0]), float(range[1]))
        self._similarity: PromptSimilarity | None = None

    def bind(self, similarity: PromptSimilarity) -> None:
        """Take the run's similarity (its guide, cutouts, prompts and targets): only it knows them."""
        self._similarity = similarity

    def score(self, image: torch.Tensor) -> float:
        if self._similarity is None:
            raise RuntimeError("CLIPPromptScorer scores a run's image: bind() it to the run first")
        return self._similarity(image, n_views=self.views, seed=self.seed)


def expected_rating(probs: torch.Tensor) -> torch.Tensor:
    """NIMA's mean score Σ_i i·p_i over the buckets i = 1..10; probs (B, 10) → (B,)."""
    ratings = torch.arange(1, probs.shape[-1] + 1, dtype=probs.dtype, device=probs.device)
    return (probs * ratings).sum(-1)


class NIMAScorer(nn.Module):
    """NIMA (Talebi & Milanfar 2018): a CNN's pooled features → dropout → linear → softmax over
    the ratings 1..10; the score is the expected rating. Module names follow pyiqa's published
    checkpoints (`base_model.*` a timm features_only net, `classifier.2.*` the linear layer)."""

    def __init__(
        self,
        backbone: str,  # a timm model name, built with pretrained=False (weights come from the file)
        pretrained: Mapping | None = None,
        name: str = "nima",
        range: Sequence = (1, 10),
        input_size: int = 224,
        dropout: float = 0.0,
        mean: Sequence = IMAGENET_MEAN,
        std: Sequence = IMAGENET_STD,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        import timm

        self.name, self.range = name, (float(range[0]), float(range[1]))
        self.input_size = int(input_size)
        with seeded(init_seed):
            self.base_model = timm.create_model(backbone, pretrained=False, features_only=True)
            channels = self.base_model.feature_info.channels()[-1]
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, BUCKETS), nn.Softmax(-1)
            )
        self.register_buffer(
            "mean", torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor([float(s) for s in std]).view(1, 3, 1, 1), persistent=False
        )
        if pretrained is not None:
            load_state(self, pretrained, "scorer.pretrained.path", "NIMA")
        self.requires_grad_(False).eval()

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1] → (B, 10) rating probabilities."""
        size = (self.input_size, self.input_size)
        x = F.interpolate(image.float(), size, mode="bilinear", antialias=True)
        x = (x - self.mean) / self.std  # (B, 3, S, S) ImageNet-normalised
        features = self.base_model(x)[-1]  # (B, C, h, w), the last stage
        return self.classifier(F.adaptive_avg_pool2d(features, 1))

    @torch.no_grad()
    def score(self, image: torch.Tensor) -> float:
        return float(expected_rating(self.probabilities(image))[0])


def aesthetic_mlp(dim: int) -> nn.Sequential:
    """improved-aesthetic-predictor's MLP (768→1024→128→64→16→1, dropouts, no activations:
    the published `linearMSE` files are this linear stack). Indices match their state_dicts."""
    return nn.Sequential(
        nn.Linear(dim, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


class LAIONAestheticScorer(nn.Module):
    """LAION aesthetic predictor v2: the MLP above on the L2-normalised CLIP image embedding."""

    def __init__(
        self,
        clip: nn.Module,  # a genart.guides.CLIPModel (ViT-L/14 for the published MLP)
        pretrained: Mapping | None = None,
        name: str = "laion",
        range: Sequence = (1, 10),
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.name, self.range = name, (float(range[0]), float(range[1]))
        self.clip = clip
        with seeded(init_seed):
            self.layers = aesthetic_mlp(clip.model.visual.output_dim)
        if pretrained is not None:
            load_state(self.layers, pretrained, "scorer.pretrained.path", "LAION aesthetic MLP")
        else:
            with torch.no_grad():  # random weights score near the range's centre, as real ones do
                self.layers[-1].bias.fill_(sum(self.range) / 2)
        self.requires_grad_(False).eval()

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1] → (B, D) unit embeddings, CLIP's resize + centre crop."""
        side = self.clip.input_size
        return self.clip.encode_image(resize_centre_crop(image.float(), side))

    @torch.no_grad()
    def score(self, image: torch.Tensor) -> float:
        return float(self.layers(self.embed(image))[0, 0])


def resize_centre_crop(image: torch.Tensor, side: int) -> torch.Tensor:
    """The shorter side to `side` (bicubic, as CLIP's preprocessing), then the centre square."""
    h, w = image.shape[-2:]
    scale = side / min(h, w)
    size = (max(side, round(h * scale)), max(side, round(w * scale)))
    x = F.interpolate(image, size, mode="bicubic", antialias=True).clamp(0, 1)
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    return x[..., top : top + side, left : left + side]  # (B, 3, side, side)


@contextmanager
def seeded(seed: int | None):
    """Build random weights from `seed` with the global RNG left alone (None: the global RNG)."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------- checkpoints


def load_state(module: nn.Module, pretrained: Mapping, key: str, what: str) -> None:
    """A resolved checkpoint (torch.save'd state_dict, optionally under `params`/`state_dict`, or
    safetensors) into `module`, strictly; a file that does not fit is one paragraph naming `key`."""
    path = pretrained.get("path")
    if not path:
        raise UserError(f"{what}: {key} is not resolved; set {key}=/path/to/file.")
    state = read_state_dict(Path(path))
    problems = mismatch(module.state_dict(), state)
    if problems:
        raise UserError(
            f"{path} is not a {what} checkpoint for this scorer config ({problems}). Set {key} to "
            f"the file the config names (docs/scorers.md), or pick the scorer config that matches "
            "the file."
        )
    module.load_state_dict(state, strict=True)


def read_state_dict(path: Path) -> dict:
    """Tensors only, never unpickled code: safetensors, or genart's weights-only torch.load."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
            raise UserError(f"{path} is not a readable safetensors file ({err}).") from None
    from genart.pretrained import load_checkpoint

    checkpoint = load_checkpoint(path)
    for wrapper in (
        "params",
        "state_dict",
    ):  # pyiqa saves {"params": …}; Lightning {"state_dict": …}
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
    return dict(checkpoint)


def mismatch(expected: Mapping, given: Mapping) -> str:
    """Missing, unexpected and mis-shaped keys in a few words ('' when the file fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: file {tuple(getattr(given[k], 'shape', ()))} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(getattr(given[k], "shape", ())) != tuple(v.shape)
    ]
    parts = [f"{len(ks)} {what}, e.g. {ks[0]}" for what, ks in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
             if ks]  # fmt: skip
    return "; ".join(parts)


def describe(scorer) -> dict:
    """What result.json records of the scorer: its name and score range."""
    return {"name": scorer.name, "range": [nice(v) for v in scorer.range]}


def nice(value: float) -> float | int:
    """1.0 → 1 in result.json, so a range reads as it is written in the config."""
    return int(value) if math.isfinite(value) and float(value).is_integer() else value
