"""Baseline fusions of two modalities: concatenation + linear, sum, and a fixed 0.5 gate.

All binary fusions in gpfuse share one call: ``fusion(a, b) -> fused`` with ``a`` (B, *, D) and ``b``
(B, *, D) broadcastable, and ``return_gate=True`` to also get the gate (None for ungated blocks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConcatFusion", "FixedGateFusion", "SumFusion"]


class ConcatFusion(nn.Module):
    """``F = W [a; b] + c``: concatenation followed by a linear layer back to ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, a: Tensor, b: Tensor, return_gate: bool = False):
        a, b = torch.broadcast_tensors(a, b)
        fused = self.proj(torch.cat([a, b], dim=-1))
        return (fused, None) if return_gate else fused


class SumFusion(nn.Module):
    """``F = a + b``: no parameters."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()

    def forward(self, a: Tensor, b: Tensor, return_gate: bool = False):
        fused = a + b
        return (fused, None) if return_gate else fused


class FixedGateFusion(nn.Module):
    """``F = (1 - g) a + g b`` with a constant gate ``g`` (0.5: the "no learned gate" ablation)."""

    def __init__(self, dim: int | None = None, gate: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= gate <= 1.0:
            raise ValueError(f"gate must be in [0, 1], got {gate}")
        self.gate = gate

    def forward(self, a: Tensor, b: Tensor, return_gate: bool = False):
        fused = (1.0 - self.gate) * a + self.gate * b
        if not return_gate:
            return fused
        return fused, torch.full(fused.shape, self.gate, dtype=fused.dtype, device=fused.device)
