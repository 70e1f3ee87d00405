"""Encoders for pre-extracted feature sequences (audio, visual, text token states)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SequenceProjection", "SinusoidalPositionalEncoding"]


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sine/cosine positions (Vaswani et al. 2017, Sec. 3.5), added to a (B, L, D) sequence."""

    pe: Tensor  # (max_len, dim) buffer, not saved

    def __init__(self, dim: int, max_len: int = 512) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div[: dim // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence length {x.shape[1]} exceeds the positional table ({self.pe.shape[0]})")
        return x + self.pe[: x.shape[1]]


class SequenceProjection(nn.Module):
    """GRF Sec. 3.1: a linear projection of each modality to ``d_model`` plus sinusoidal positions.

    Shapes: (B, L, in_dim) -> (B, L, d_model).
    """

    def __init__(self, in_dim: int, d_model: int, max_len: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model)
        self.pos = SinusoidalPositionalEncoding(d_model, max_len)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.pos(self.proj(x)))
