"""GPF-Net's gated progressive fusion layer (arXiv 2512.21476, Sec. 3.3, Fig. 2).

The layer works on the joint sequence ``x = [I; T]`` (image token first, then text tokens):
``g = sigmoid(W_g I)``, ``F = (1 - g) * I + g * T`` (broadcast over tokens), ``h = LN([I; F])``,
multi-head self-attention over ``h`` added to ``x`` (LN), then a feed-forward (LN).

``norm_first=True`` is gpfuse's pre-LN variant (Xiong et al. 2020): the same gate and attention input
``LN([I; F])``, but the residual stream is never normalised (``x + attn``, ``x + FFN(LN(x))``), which
trains stably at learning rates where the paper's post-LN stack collapses (docs/results.md, CUHK01).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gpfuse.fusion.gates import ImageConditionedGate
from gpfuse.fusion.layers import mlp
from gpfuse.fusion.pooling import key_padding_mask
from gpfuse.fusion.stacks import ProgressiveFusion

__all__ = ["GatedProgressiveLayer", "gated_progressive_stack"]


class GatedProgressiveLayer(nn.Module):
    """One gated progressive fusion layer.

    Args:
        dim: token size D. num_heads: self-attention heads (8 in the paper). ffn_dim: feed-forward size
            (2048). dropout: attention/FFN dropout.
        attn, ffn: modules to share with other layers (GPF-Net's code shares one attention and one FFN
            across its 4 layers, ALBERT-style, and keeps gates and LayerNorms per layer); None builds new ones.
        norm_first: pre-LN residuals instead of the paper's post-LN (see the module docstring).

    The gate reads the running image token ``x[:, 0]`` of this layer (the paper leaves open whether the
    original or the refined image token drives later gates; gpfuse uses the refined one, so each layer's
    gate sees the state the previous layers produced).

    Shapes: ``x`` (B, 1 + L, D), ``mask`` (B, 1 + L) bool (True on real tokens; token 0 is always real)
    -> (B, 1 + L, D); the gate is (B, 1, D). With L = 0 (no report) the layer is image-only.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        attn: nn.MultiheadAttention | None = None,
        ffn: nn.Module | None = None,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.gate = ImageConditionedGate(dim)
        self.norm_in = nn.LayerNorm(dim)
        self.attn = attn if attn is not None else nn.MultiheadAttention(dim, num_heads, dropout, batch_first=True)
        self.norm_attn = nn.Identity() if norm_first else nn.LayerNorm(dim)
        self.ffn = ffn if ffn is not None else mlp(dim, ffn_dim, dropout=dropout, out_dropout=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_gate: bool = False):
        image, text = x[:, :1], x[:, 1:]
        fused, gate = self.gate(image, text, return_gate=True)
        h = self.norm_in(torch.cat([image, fused], dim=1))
        attended, _ = self.attn(h, h, h, key_padding_mask=key_padding_mask(mask), need_weights=False)
        if self.norm_first:
            x = x + self.dropout(attended)
            x = x + self.ffn(self.norm_ffn(x))
        else:
            x = self.norm_attn(x + self.dropout(attended))
            x = self.norm_ffn(x + self.ffn(x))
        return (x, gate) if return_gate else x


def gated_progressive_stack(
    dim: int,
    num_layers: int = 4,
    num_heads: int = 8,
    ffn_dim: int = 2048,
    dropout: float = 0.1,
    share_layers: bool = True,
    norm_first: bool = False,
) -> ProgressiveFusion:
    """GPF-Net's 4 gated progressive fusion layers; ``share_layers`` shares attention + FFN across layers
    (gates and LayerNorms stay per layer), as the official code does; ``norm_first`` makes them pre-LN."""
    attn: nn.MultiheadAttention | None = None  # None: each layer builds its own
    ffn: nn.Module | None = None
    if share_layers:
        attn = nn.MultiheadAttention(dim, num_heads, dropout, batch_first=True)
        ffn = mlp(dim, ffn_dim, dropout=dropout, out_dropout=True)
    return ProgressiveFusion(
        lambda: GatedProgressiveLayer(dim, num_heads, ffn_dim, dropout, attn=attn, ffn=ffn, norm_first=norm_first),
        num_layers,
    )
