"""PGF-Net's fusion step inside a language model layer (arXiv 2508.15852, Sec. 3, Fig. 2).

After an encoder layer, the text states ``H_text`` (query) read a bank of projected audio-visual steps
(key/value): ``H_cross = MHA(H_text, bank, bank)``; the adaptive gated arbitration mixes them per
dimension, ``g = sigmoid(W [H_text; H_cross])``, ``H = g * H_text + (1 - g) * H_cross``; a post-fusion
bottleneck adapter refines the result, ``H + W_up GELU(W_down H)``. The ablations swap one part: no
cross-attention (``H_cross`` = the bank's masked mean, the same for every token), no gate (``H_text +
H_cross``, the fusion core's ``sum``), no adapter.
"""

from __future__ import annotations

from torch import Tensor, nn

from gpfuse.fusion.attention import CrossAttention
from gpfuse.fusion.pooling import masked_mean

__all__ = ["BottleneckAdapter", "GatedCrossModalBlock"]


class BottleneckAdapter(nn.Module):
    """Houlsby-style adapter ``x + W_up GELU(W_down x)`` with bottleneck ``size``; ``W_up`` starts at zero so
    the adapter starts as the identity (the paper leaves its initialisation open)."""

    def __init__(self, dim: int, size: int = 64) -> None:
        super().__init__()
        self.down = nn.Linear(dim, size)
        self.act = nn.GELU()
        self.up = nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.act(self.down(x)))


class GatedCrossModalBlock(nn.Module):
    """One PGF-Net fusion step.

    Args:
        dim: hidden size D of the text states and the bank. num_heads: cross-attention heads.
        gate: the binary fusion mixing ``H_text`` and ``H_cross`` (``"arbitration"``: PGF-Net; ``"sum"``:
            the no-gate ablation; any name of ``BINARY_FUSIONS``).
        cross_attention: False replaces ``H_cross`` by the bank's masked mean (ablation).
        adapter: bottleneck size of the post-fusion adapter; 0 for none (ablation).
        gate_bias: initial bias of the arbitration gate (``"arbitration"`` only): 0 starts at g = 0.5.

    Shapes: ``text`` (B, L, D), ``bank`` (B, Lb, D), ``bank_mask`` (B, Lb) bool -> (B, L, D); with
    ``return_gate`` also the gate (B, L, D), or None for an ungated mix.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        gate: str = "arbitration",
        cross_attention: bool = True,
        adapter: int = 64,
        dropout: float = 0.1,
        gate_bias: float = 0.0,
    ) -> None:
        super().__init__()
        from gpfuse.fusion import build_fusion  # the registry imports this module

        self.cross = CrossAttention(dim, num_heads, dropout, residual=False) if cross_attention else None
        self.gate = build_fusion(gate, dim=dim, **({"init_bias": gate_bias} if gate == "arbitration" else {}))
        self.adapter = BottleneckAdapter(dim, adapter) if adapter else nn.Identity()

    def forward(self, text: Tensor, bank: Tensor, bank_mask: Tensor | None = None, return_gate: bool = False):
        if self.cross is not None:
            cross = self.cross(text, bank, bank_mask)
        else:
            cross = masked_mean(bank, bank_mask).unsqueeze(1).expand_as(text)
        fused, gate = self.gate(text, cross, return_gate=True)
        fused = self.adapter(fused)
        return (fused, gate) if return_gate else fused
