"""Faster equivalents of parts of open_clip's vision transformer, swapped in by `set_precision`.

Each computes the same embedding as the part it replaces and keeps its parameters under the
same state_dict keys. Measured on ViT-B/32, 32 views of 224², forward + backward to the pixels,
2-core AVX512-BF16 CPU:

* `use_sequence_first`: OpenAI's (L, N, D) layout; bf16 3.65 → 1.42 s.
* `PatchEmbedding`: the stride-p patch convolution as one matmul; 1.33 → 1.17 s.
* `Attention`: the two attention products in the model's dtype, softmax in fp32 (what CUDA
  autocast does; on CPU torch's attention upcasts q, k, v to fp32, and these 50 × 64 products
  run 4x faster in bf16). Only swapped in below fp32 on CPU; on GPUs torch's fused attention
  kernels already run in bf16.
* `ClassTokenBlock`: the last block computed for the class token only, the one token the pooled
  embedding reads (its keys and values still come from every token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genart.speed.guard import Patch, applies, first_difference, parameters_differ


def vit_internals() -> str | None:
    """Why open_clip's transformer does not call its parts as these replacements expect, or None.

    They rely on: Transformer.forward(x, attn_mask) transposing by `batch_first` and calling each
    block as block(x, attn_mask=…); a block computing x + ls_1(attention(ln_1(x))) with
    attn(q, k, v, need_weights=False, attn_mask=…), then x + ls_2(mlp(ln_2(x))); `pool_type`
    "tok" pooling reading the class token alone (VisionTransformer._global_pool).
    """
    from open_clip.transformer import ResidualAttentionBlock, Transformer, VisionTransformer

    block = ("self", "q_x", "k_x", "v_x", "attn_mask")
    return first_difference(
        parameters_differ(Transformer.forward, "self", "x", "attn_mask"),
        parameters_differ(ResidualAttentionBlock.forward, *block),
        parameters_differ(ResidualAttentionBlock.attention, *block),
        parameters_differ(VisionTransformer._global_pool, "self", "x"),
    )


FAST_VIT = Patch(
    "fast_vit",
    "open_clip_torch",
    ">=2.24,<3.4",  # genart's lower bound; 3.3 is the newest tested, 3.x minors move internals
    "the faster CLIP image tower (genart.speed.vit)",
    vit_internals,
)


def use_sequence_first(transformer: nn.Module) -> None:
    """Run open_clip's batch-first attention blocks sequence-first (as OpenAI's CLIP does).

    Batch-first blocks hand nn.MultiheadAttention a transposed view, whose in-projection then
    runs as a batched matmul over a copied, expanded weight: ViT-B/32 forward + backward on 32
    views, 2-core CPU, took 3.65 s in bf16 against 1.42 s sequence-first (fp32: 4.23 / 4.05 s).
    The same sums, in contiguous (L, N, D) matmuls.
    """
    if not applies(FAST_VIT):
        return
    blocks = list(getattr(transformer, "resblocks", []))
    plain = all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks)
    if not (blocks and plain and getattr(transformer, "batch_first", False)):
        return
    transformer.batch_first = False
    for block in blocks:
        block.attn.batch_first = False


class PatchEmbedding(nn.Module):
    """A ViT's stride-p, p×p, bias-free patch convolution as one matmul over flattened patches.

    The same sums as the convolution, whose CPU backward to the pixels is slow: ViT-B/32 on 32
    views, bf16 forward + backward 1.33 → 1.17 s. Output (N, D, H/p, W/p) like the conv's.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight  # (D, C, p, p): state_dict keys stay those of the conv
        self.patch = conv.kernel_size[0]

    @staticmethod
    def fits(conv: nn.Module) -> bool:
        return (
            isinstance(conv, nn.Conv2d)
            and conv.bias is None
            and conv.groups == 1
            and conv.kernel_size[0] == conv.kernel_size[1] == conv.stride[0] == conv.stride[1]
            and conv.padding in ((0, 0), "valid")
            and conv.dilation == (1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p, d = self.patch, self.weight.shape[0]
        patches = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        flat = patches.reshape(n, (h // p) * (w // p), c * p * p)  # (N, L, C·p·p)
        out = flat @ self.weight.view(d, -1).T  # (N, L, D)
        return out.view(n, h // p, w // p, d).permute(0, 3, 1, 2)  # (N, D, h, w)


class Attention(nn.Module):
    """nn.MultiheadAttention (sequence-first, no mask, no dropout, eval) with its two products
    in the input's dtype and the softmax in fp32. Call as MHA: (query, key, value) → (out, None).
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.in_proj_weight, self.in_proj_bias = mha.in_proj_weight, mha.in_proj_bias
        self.out_proj = mha.out_proj  # keys stay attn.in_proj_weight, attn.out_proj.weight, …
        self.heads = mha.num_heads

    @staticmethod
    def fits(module: nn.Module) -> bool:
        return (
            isinstance(module, nn.MultiheadAttention)
            and not module.batch_first
            and module._qkv_same_embed_dim
            and module.in_proj_bias is not None
            and module.bias_k is None
            and not module.add_zero_attn
            and module.dropout == 0.0
        )

    def forward(self, query, key, value, need_weights=False, attn_mask=None):
        if attn_mask is not None or need_weights or key is not value:
            raise NotImplementedError(
                "genart.speed.vit.Attention: self-attention of the tokens only"
            )
        (lq, n, d), lk, h = query.shape, key.shape[0], self.heads

        def heads(t, length):  # (L, N, k·D) → k × (N·H, L, D/H): one copy for the k projections
            t = t.view(length, n, -1, h, d // h).permute(2, 1, 3, 0, 4)  # (k, N, H, L, D/H)
            return t.reshape(-1, n * h, length, d // h).unbind(0)  # (bmm is 3x slower on views)

        if query is key:  # all tokens ask: one packed in-projection
            q, k, v = heads(F.linear(key, self.in_proj_weight, self.in_proj_bias), lq)
        else:  # a subset of the tokens asks (ClassTokenBlock)
            w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
            b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
            (q,) = heads(F.linear(query, w_q, b_q), lq)
            k, v = heads(F.linear(key, w_kv, b_kv), lk)
        scores = torch.bmm(q * (d // h) ** -0.5, k.transpose(1, 2))  # (N·H, Lq, Lk)
        attn = scores.float().softmax(dim=-1).to(q.dtype)
        out = torch.bmm(attn, v).transpose(0, 1).reshape(lq, n, d)
        return self.out_proj(out), None


class ClassTokenBlock(nn.Module):
    """open_clip's ResidualAttentionBlock computed for the class token (position 0) only.

    Sequence-first in and out: (L, N, D) → (1, N, D). Holds the block's own modules under their
    own names, so state_dict keys do not change.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for name in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"):
            setattr(self, name, getattr(block, name))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None:
            raise NotImplementedError("genart.speed.vit.ClassTokenBlock: no attention mask")
        tokens = self.ln_1(x)
        cls = x[:1] + self.ls_1(self.attn(tokens[:1], tokens, tokens, need_weights=False)[0])
        return cls + self.ls_2(self.mlp(self.ln_2(cls)))


def reads_class_token_only(visual: nn.Module) -> bool:
    """Does the pooled embedding read only the class token of the last block's output?"""
    transformer = getattr(visual, "transformer", None)
    blocks = list(getattr(transformer, "resblocks", []))
    return bool(
        blocks
        and getattr(visual, "pool_type", None) == "tok"
        and getattr(visual, "attn_pool", None) is None
        and not getattr(visual, "output_tokens", True)
        and not getattr(transformer, "batch_first", True)
        and not hasattr(blocks[-1], "ln_1_kv")
        and all(hasattr(blocks[-1], n) for n in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"))
    )


def speed_up(visual: nn.Module, dtype: torch.dtype, attention: str = "library") -> None:
    """Swap the parts above into open_clip's VisionTransformer `visual` (already cast to dtype);
    `attention="bmm"` swaps in `Attention` (genart.speed.kernels' plan chooses)."""
    if not applies(FAST_VIT):
        return
    transformer = getattr(visual, "transformer", None)
    use_sequence_first(transformer)
    if PatchEmbedding.fits(getattr(visual, "conv1", None)):
        visual.conv1 = PatchEmbedding(visual.conv1)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        return
    if attention == "bmm":
        for block in blocks:
            if Attention.fits(getattr(block, "attn", None)):
                block.attn = Attention(block.attn)
    if reads_class_token_only(visual) and not isinstance(blocks[-1], ClassTokenBlock):
        blocks[-1] = ClassTokenBlock(blocks[-1])
