"""Cross-modal attention: one-way, symmetric (GRF) and two-way (BiPVL-Seg).

Masks follow one convention across gpfuse: (B, L) bool, True where a step is real. A padded step never
changes the output at a real step.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from gpfuse.fusion.layers import decoder_stack, mlp
from gpfuse.fusion.pooling import key_padding_mask

__all__ = ["CrossAttention", "DownsampledAttention", "SymmetricCrossAttention", "TwoWayAttention"]


def _check_heads(dim: int, num_heads: int) -> None:
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")


class CrossAttention(nn.Module):
    """One-way cross-attention: ``query`` reads ``context``.

    ``out = LN(query + dropout(MHA(query, context, context)))`` with ``residual=True``; with
    ``residual=False`` the attention output itself (PGF-Net's ``H_cross``, which its gate then mixes
    with the query).

    Shapes: ``query`` (B, Lq, D), ``context`` (B, Lk, D), ``context_mask`` (B, Lk) -> (B, Lq, D).
    """

    def __init__(self, dim: int, num_heads: int = 4, dropout: float = 0.0, residual: bool = True) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.residual = residual
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim) if residual else nn.Identity()

    def forward(self, query: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        out, _ = self.attn(query, context, context, key_padding_mask=key_padding_mask(context_mask), need_weights=False)
        return self.norm(query + self.dropout(out)) if self.residual else out


class SymmetricCrossAttention(nn.Module):
    """GRF's symmetric cross-attention (Sec. 3.2): two Transformer-decoder stacks, ``a`` attends to ``b``
    and ``b`` attends to ``a``, each with self-attention, cross-attention and a feed-forward per layer.

    Args:
        dim: model size D. num_heads: attention heads. num_layers: decoder layers per direction.
        ffn_dim: feed-forward size. dropout: dropout inside the decoder layers.

    Shapes: ``a`` (B, La, D), ``b`` (B, Lb, D), masks (B, La) / (B, Lb) -> (a', b') of the input shapes.
    """

    def __init__(
        self, dim: int, num_heads: int = 4, num_layers: int = 4, ffn_dim: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads)

        self.a_to_b = decoder_stack(dim, num_heads, num_layers, ffn_dim, dropout)
        self.b_to_a = decoder_stack(dim, num_heads, num_layers, ffn_dim, dropout)

    def forward(
        self, a: Tensor, b: Tensor, a_mask: Tensor | None = None, b_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        pad_a, pad_b = key_padding_mask(a_mask), key_padding_mask(b_mask)
        a_new = self.a_to_b(a, b, tgt_key_padding_mask=pad_a, memory_key_padding_mask=pad_b)
        b_new = self.b_to_a(b, a, tgt_key_padding_mask=pad_b, memory_key_padding_mask=pad_a)
        return a_new, b_new


class DownsampledAttention(nn.Module):
    """SAM's attention (Kirillov et al. 2023, ``Attention``): queries, keys and values are projected to
    ``dim // downsample_rate`` channels, attended with ``num_heads`` heads, and projected back to ``dim``.

    Shapes: ``q`` (B, Lq, D), ``k`` and ``v`` (B, Lk, D), ``key_mask`` (B, Lk) bool (True on real steps)
    -> (B, Lq, D).
    """

    def __init__(self, dim: int, num_heads: int = 8, downsample_rate: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim // downsample_rate
        if downsample_rate < 1 or inner % num_heads:
            raise ValueError(
                f"dim // downsample_rate ({dim} // {downsample_rate}) must be divisible by num_heads ({num_heads})"
            )
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, heads, L, inner / heads)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TwoWayAttention(nn.Module):
    """BiPVL-Seg's two-way attention block (after SAM's ``TwoWayAttentionBlock``): self-attention on ``a``,
    ``a -> b`` cross-attention, MLP on ``a``, ``b -> a`` cross-attention, MLP on ``b``; each a residual +
    LayerNorm. Cross-attentions work in ``dim // downsample_rate`` channels (SAM: 2). No positional encoding is
    added to ``b`` (SAM adds the image's; BiPVL-Seg's volume tokens come from Swin stages).

    Shapes: ``a`` (B, La, D) (e.g. class-text tokens), ``b`` (B, Lb, D) (e.g. flattened volume
    features) -> (a', b') of the input shapes.
    """

    def __init__(
        self, dim: int, num_heads: int = 4, mlp_dim: int = 512, dropout: float = 0.0, downsample_rate: int = 1
    ) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.self_attn = DownsampledAttention(dim, num_heads, 1, dropout)
        self.a_reads_b = DownsampledAttention(dim, num_heads, downsample_rate, dropout)
        self.b_reads_a = DownsampledAttention(dim, num_heads, downsample_rate, dropout)
        self.mlp_a = mlp(dim, mlp_dim, dropout=dropout)
        self.mlp_b = mlp(dim, mlp_dim, dropout=dropout)
        self.norm_self, self.norm_a_reads_b, self.norm_mlp_a, self.norm_b_reads_a, self.norm_mlp_b = (
            nn.LayerNorm(dim) for _ in range(5)
        )

    def forward(
        self, a: Tensor, b: Tensor, a_mask: Tensor | None = None, b_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        a = self.norm_self(a + self.self_attn(a, a, a, a_mask))
        a = self.norm_a_reads_b(a + self.a_reads_b(a, b, b, b_mask))
        a = self.norm_mlp_a(a + self.mlp_a(a))
        b = self.norm_b_reads_a(b + self.b_reads_a(b, a, a, a_mask))
        b = self.norm_mlp_b(b + self.mlp_b(b))
        return a, b
