"""Frozen open_clip models that embed views and prompts: `CLIPModel` each, `Guide` the ensemble."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genart.errors import UserError
from genart.speed.kernels import plan_or_rule
from genart.speed.vit import speed_up


def _plain(node: Any) -> Any:
    """A config node (dict, DictConfig, list, ListConfig) as plain dicts and lists."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, Sequence) and not isinstance(node, str):
        return [_plain(v) for v in node]
    return node


def register_arch(arch: str, model_config: Mapping) -> None:
    """Register `model_config` with open_clip under the name `arch`; a no-op if already there."""
    import open_clip

    config = _plain(model_config)
    if open_clip.get_model_config(arch) == config:
        return
    builtin = Path(open_clip.factory.__file__).parent / "model_configs" / f"{arch}.json"
    if builtin.exists():
        raise UserError(
            f"guide: model_config would redefine open_clip's built-in architecture '{arch}'; "
            "give the custom architecture its own name (e.g. 'genart-tiny')."
        )
    # open_clip reads configs from files only; the registry keeps the entry once scanned.
    with tempfile.TemporaryDirectory(prefix="genart-arch-") as tmp:
        (Path(tmp) / f"{arch}.json").write_text(json.dumps(config))
        open_clip.add_model_config(tmp)


def _pretrained_path(pretrained: Mapping | None, arch: str) -> str | None:
    """The local file of an already resolved `pretrained:` node, or None for random init."""
    if pretrained is None:
        return None
    path = pretrained.get("path")
    if path is None:
        raise UserError(
            f"guide ({arch}): the pretrained node has no resolved path; set "
            "guide.models.<name>.pretrained.path=FILE, or guide.models.<name>.pretrained=null "
            "for a randomly initialised model."
        )
    if not Path(path).is_file():
        raise UserError(f"guide ({arch}): pretrained file not found: {path}")
    return str(path)


def _pretrained_overrides(arch: str, tag: str | None) -> dict[str, Any]:
    """create_model kwargs that make a local file behave like open_clip's `pretrained=tag`."""
    if tag is None:
        return {}
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise UserError(f"guide: open_clip has no tag '{tag}' for '{arch}' (known: {tags}).")
    # openai weights were trained with QuickGELU; plain GELU would load but embed wrongly.
    return {
        "force_quick_gelu": bool(cfg.get("quick_gelu", False)),
        "force_preprocess_cfg": {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])},
    }


def _attention_kernel(device: torch.device):
    """On CPU the plain (math) attention: for ~50 tokens it beat the flash kernel's backward
    (ViT-B/32, 32 views, bf16 forward + backward 1.42 → 1.33 s). Elsewhere torch's choice."""
    if device.type != "cpu":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextmanager
def _quiet_root_log():
    """open_clip narrates every build on the root logger (and warns on intended random init)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class CLIPModel(nn.Module):
    """One frozen open_clip model; gradients flow to the pixels, never to its weights."""

    def __init__(
        self,
        arch: str,
        pretrained: Mapping | None = None,
        weight: float = 1.0,  # this model's share of the ensemble's similarity
        init_seed: int | None = None,
        model_config: Mapping | None = None,
        tag: str | None = None,
    ) -> None:
        super().__init__()
        import open_clip

        if model_config is not None:
            register_arch(arch, model_config)
        path = _pretrained_path(pretrained, arch)
        kwargs = _pretrained_overrides(arch, tag)
        with torch.random.fork_rng(devices=[], enabled=init_seed is not None), _quiet_root_log():
            if init_seed is not None:
                torch.manual_seed(init_seed)
            self.model = open_clip.create_model(
                arch, pretrained=path, pretrained_text=False, **kwargs
            )
        self.model.requires_grad_(False)
        self.model.eval()
        self.arch = arch
        self.weight = float(weight)
        self.tokenizer = open_clip.get_tokenizer(arch)
        visual = self.model.visual
        size = visual.image_size
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._text_cache: dict[str, torch.Tensor] = {}  # text -> (D,) fp32 unit vector
        self._autocast: torch.dtype | None = None  # the image tower's, when it runs under autocast

    @property
    def input_size(self) -> int:
        """Side of the square the model sees (the larger side for non-square models)."""
        return max(self.image_size)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def train(self, mode: bool = True) -> CLIPModel:
        """Stay in eval mode whatever the parent does: the model is frozen."""
        return super().train(False)

    def new_run(self) -> None:
        """Forget the last run's prompts (genart.model_cache keeps the model for the next run)."""
        self._text_cache.clear()

    def _apply(self, fn, *args, **kwargs):
        # a move or cast (.to, .half) changes what the text tower returns: recompute
        self._text_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    def set_precision(self, dtype: torch.dtype, plan=None) -> None:
        """Run the frozen image tower at `dtype` as genart.speed.kernels' plan says: cast weights
        or autocast (`guide_reduced`), attention products by `bmm` or the library's, and the
        faster equivalents of its other parts (genart.speed.vit).

        The text tower stays fp32 (it runs once per prompt); embeddings leave fp32 either way.
        """
        plan = plan_or_rule(plan, self.device, dtype)
        visual = self.model.visual
        reduced = dtype != torch.float32
        self._autocast = dtype if reduced and plan.guide_reduced == "autocast" else None
        visual.to(torch.float32 if self._autocast else dtype)
        speed_up(visual, dtype, attention=plan.attention)

    def compile_hot(self) -> None:
        """torch.compile the image tower (the first call compiles)."""
        self.model.visual.compile()

    def text_overflow(self, text: str) -> tuple[int, int]:
        """(tokens of `text` the tokenizer drops, its context length in tokens)."""
        encode = getattr(self.tokenizer, "encode", None)
        context = getattr(self.tokenizer, "context_length", None)
        if encode is None or not context:  # a tokenizer without a plain BPE encode: cannot tell
            return 0, 0
        # the start and end markers take two of the context's tokens
        return max(0, len(encode(text)) + 2 - context), context

    @torch.no_grad()
    def _embed_text(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer([text]).to(self.device)  # (1, context_length)
        embed = self.model.encode_text(tokens).float()  # (1, D)
        return F.normalize(embed, dim=-1)[0]

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings (P, D), fp32; each string is encoded once, alone."""
        for text in texts:
            if text not in self._text_cache:  # batch of one: rows never depend on cache state
                self._text_cache[text] = self._embed_text(text)
        return torch.stack([self._text_cache[t] for t in texts])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) in [0, 1] -> unit embeddings (N, D), fp32, differentiable."""
        x = pixels.float()
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(
                x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )
        x = (x - self.mean) / self.std  # (N, 3, H, W) CLIP-normalised
        autocast = (
            torch.autocast(x.device.type, self._autocast) if self._autocast else nullcontext()
        )
        with _attention_kernel(x.device), autocast:
            embed = self.model.encode_image(x.to(self._dtype())).float()  # (N, D)
        return F.normalize(embed, dim=-1)


class Guide(nn.Module):
    """An ensemble of CLIP models; every output is a list in `names` order."""

    def __init__(self, models: Mapping[str, CLIPModel | None]) -> None:
        super().__init__()
        kept = {name: model for name, model in models.items() if model is not None}
        if not kept:
            raise UserError("guide: every model is switched off (guide.models.* are all null).")
        self.models = nn.ModuleDict(kept)
        self._checked: set[str] = set()  # texts already checked for truncation (warn once)

    @property
    def names(self) -> list[str]:
        return list(self.models.keys())

    @property
    def model_weights(self) -> list[float]:
        """Each model's ensemble share (`guide.models.<name>.weight`), in `names` order."""
        return [model.weight for model in self.models.values()]

    @property
    def input_size(self) -> int:
        """The largest model input size: cutouts render at this size, smaller models downsample."""
        return max(model.input_size for model in self.models.values())

    @property
    def device(self) -> torch.device:
        return next(iter(self.models.values())).device

    def set_precision(self, dtype: torch.dtype, plan=None) -> None:
        for model in self.models.values():
            model.set_precision(dtype, plan)

    def new_run(self) -> None:
        """Forget the last run's prompts, so a kept guide warns about a long prompt again."""
        self._checked.clear()
        for model in self.models.values():
            model.new_run()

    def compile_hot(self) -> None:
        for model in self.models.values():
            model.compile_hot()

    def encode_text(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Per model (P, D) unit vectors, cached per string."""
        for text in dict.fromkeys(texts):
            if text not in self._checked:
                self._checked.add(text)
                self._warn_if_truncated(text)
        return [model.encode_text(texts) for model in self.models.values()]

    def _warn_if_truncated(self, text: str) -> None:
        dropped, context = max(model.text_overflow(text) for model in self.models.values())
        if dropped:
            short = text if len(text) <= 60 else text[:57] + "..."
            warnings.warn(
                f'the prompt "{short}" is longer than CLIP\'s context of {context} tokens: its '
                f"last {dropped} tokens are ignored. Shorten it, or split it into prompts joined "
                'with "|".',
                stacklevel=3,
            )

    def encode_image(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """pixels (N, 3, S, S) in [0, 1] -> per model (N, D) unit vectors."""
        return [model.encode_image(pixels) for model in self.models.values()]
