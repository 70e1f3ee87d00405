"""Task heads shared by the models."""

from __future__ import annotations

from torch import nn

from gpfuse.fusion.layers import mlp

__all__ = ["regression_head"]


def regression_head(dim: int, dropout: float = 0.0) -> nn.Sequential:
    """(B, D) -> (B, 1): ``Linear -> ReLU -> Dropout -> Linear`` (GRF and PGF-Net leave the head's
    shape unstated; this two-layer MLP is gpfuse's choice)."""
    return mlp(dim, dim, 1, activation=nn.ReLU, dropout=dropout)
