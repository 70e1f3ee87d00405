"""Learned gates that mix two modalities, one per paper.

Each takes ``(a, b)`` of shape (B, *, D) (broadcastable) and returns the fused (B, *, D) tensor, or
``(fused, gate)`` with ``return_gate=True`` so a task can log and plot what the gate chose.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GatedArbitration", "GatedFusionUnit", "ImageConditionedGate"]


class ImageConditionedGate(nn.Module):
    """GPF-Net's gate (Sec. 3, gated fusion): ``g = sigmoid(W_g I)``, ``F = (1 - g) * I + g * T``.

    The gate is computed from the image feature alone and broadcast over text tokens.

    Args:
        dim: feature size D of both modalities.

    Shapes: ``image`` (B, D) or (B, 1, D); ``text`` (B, L, D) or (B, D) -> fused like ``text``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w_g = nn.Linear(dim, dim)

    def forward(self, image: Tensor, text: Tensor, return_gate: bool = False):
        if image.dim() == 2 and text.dim() == 3:
            image = image.unsqueeze(1)  # (B, 1, D): broadcast over the L text tokens
        g = torch.sigmoid(self.w_g(image))
        fused = (1 - g) * image + g * text
        return (fused, g) if return_gate else fused


class GatedFusionUnit(nn.Module):
    """GRF's Gated Fusion Unit (GRU-like): ``z = sigmoid(W_z [s; m])``, ``c = tanh(W_c [s; m])``,
    ``s' = LN(dropout((1 - z) * s + z * c))``.

    Args:
        dim: state and modality size D.
        dropout: dropout on the mixed state before the LayerNorm.

    Shapes: ``state`` (B, *, D), ``incoming`` (B, *, D) -> (B, *, D); the gate ``z`` has the same shape.
    """

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w_z = nn.Linear(2 * dim, dim)
        self.w_c = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, state: Tensor, incoming: Tensor, return_gate: bool = False):
        state, incoming = torch.broadcast_tensors(state, incoming)
        joint = torch.cat([state, incoming], dim=-1)
        z = torch.sigmoid(self.w_z(joint))
        c = torch.tanh(self.w_c(joint))
        fused = self.norm(self.dropout((1 - z) * state + z * c))
        return (fused, z) if return_gate else fused


class GatedArbitration(nn.Module):
    """PGF-Net's adaptive gated arbitration (Sec. 3): ``g = sigmoid(W [H_a; H_b])``,
    ``H = g * H_a + (1 - g) * H_b``, one gate value per dimension and token.

    Args:
        dim: size D of both inputs.
        init_bias: initial bias of ``W``; a positive value starts the gate near 1 (``h_a`` kept), so a block
            inserted into a pretrained network starts close to the identity.

    Shapes: ``h_a`` (B, L, D) (e.g. text states), ``h_b`` (B, L, D) (e.g. cross-attended) -> (B, L, D).
    """

    def __init__(self, dim: int, init_bias: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Linear(2 * dim, dim)
        nn.init.constant_(self.w.bias, init_bias)

    def forward(self, h_a: Tensor, h_b: Tensor, return_gate: bool = False):
        h_a, h_b = torch.broadcast_tensors(h_a, h_b)
        g = torch.sigmoid(self.w(torch.cat([h_a, h_b], dim=-1)))
        fused = g * h_a + (1 - g) * h_b
        return (fused, g) if return_gate else fused
