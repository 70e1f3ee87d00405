"""BiPVL-Seg's BiFusion block (arXiv 2503.23534, Sec. 3.2): bidirectional fusion of volume features and text
tokens at one encoder stage.

The text tokens are L2-normalised and projected to the stage width; a two-way transformer (``depth`` blocks
of the fusion core's :class:`~gpfuse.fusion.attention.TwoWayAttention`: text self-attention, text -> volume
cross-attention, MLP, volume -> text cross-attention, MLP on the volume tokens) updates both; each result is
projected (text back to its own width) and added to its input. gpfuse's choice where the paper is silent:
both output projections start at zero, so a block starts as the identity and training starts from the
encoders' own features.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from gpfuse.fusion.attention import TwoWayAttention

__all__ = ["BiFusionBlock"]


class BiFusionBlock(nn.Module):
    """One BiFusion block.

    Args:
        dim: channels C of the volume features at this stage. text_dim: width H of the text tokens.
        depth: two-way blocks (2). num_heads: attention heads (8). mlp_dim: MLP width (2048).
        downsample_rate: internal channel reduction of the cross-attentions (SAM's 2).
        update_text: False returns the text unchanged (no output projection), for a last block whose text
            nothing reads.

    Shapes: ``features`` (B, C, *spatial), ``text`` (B, N, H), ``text_mask`` (B, N) bool -> fused features of the
    same shape and fused text (B, N, H).
    """

    def __init__(
        self,
        dim: int,
        text_dim: int,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        downsample_rate: int = 2,
        dropout: float = 0.0,
        update_text: bool = True,
    ) -> None:
        super().__init__()
        self.text_in = nn.Linear(text_dim, dim)
        self.blocks = nn.ModuleList(
            TwoWayAttention(dim, num_heads, mlp_dim, dropout, downsample_rate) for _ in range(depth)
        )
        self.text_out = nn.Linear(dim, text_dim) if update_text else None
        self.volume_out = nn.Linear(dim, dim)
        for layer in (self.volume_out,) if self.text_out is None else (self.text_out, self.volume_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor, text: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        spatial = features.shape[2:]
        tokens = features.flatten(2).transpose(1, 2)  # (B, prod(spatial), C)
        words = self.text_in(F.normalize(text, dim=-1))
        for block in self.blocks:
            words, tokens = block(words, tokens, text_mask)
        update = self.volume_out(tokens).transpose(1, 2).reshape(*features.shape[:2], *spatial)
        return features + update, text if self.text_out is None else text + self.text_out(words)
