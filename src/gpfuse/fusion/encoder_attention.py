"""EA-DK's Encoder Attention (arXiv 2509.23502, Sec. 3.2, Fig. 1): the encoder's stages, each pooled to one
token, attend to each other; their mean is the global context the dynamic kernel is generated from.

The paper does not give the layer's form; gpfuse follows LDNet: one pre-LN Transformer layer (4 heads, FFN
2x) with a learned embedding per stage.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gpfuse.fusion.layers import mlp

__all__ = ["EncoderAttention"]


class EncoderAttention(nn.Module):
    """The stage maps, each average-pooled to a C-d token plus a learned stage embedding, pass one
    self-attention layer; their mean is the global context G.

    Shapes: list of ``num_stages`` maps (B, C, h_i, w_i) -> G (B, C) and the attention weights
    (B, num_stages, num_stages).
    """

    def __init__(self, dim: int, num_stages: int = 5, num_heads: int = 4) -> None:
        super().__init__()
        self.stage_embedding = nn.Parameter(torch.zeros(num_stages, dim))
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = mlp(dim, 2 * dim)
        nn.init.trunc_normal_(self.stage_embedding, std=0.02)

    def forward(self, stages: list[Tensor]) -> tuple[Tensor, Tensor]:
        tokens = torch.stack([s.mean(dim=(-2, -1)) for s in stages], dim=1) + self.stage_embedding
        h = self.norm_attn(tokens)
        attended, weights = self.attn(h, h, h, need_weights=True)
        tokens = tokens + attended
        tokens = tokens + self.ffn(self.norm_ffn(tokens))
        return tokens.mean(dim=1), weights
