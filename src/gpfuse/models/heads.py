"""Task heads shared by the models."""
from __future__ import annotations

from torch import nn

__all__ = ["regression_head"]


def regression_head(dim: int, dropout: float = 0.0) -> nn.Sequential:
    """(B, D) -> (B, 1): ``Linear -> ReLU -> Dropout -> Linear`` (GRF and PGF-Net leave the head's
    shape unstated; this two-layer MLP is gpfuse's choice)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, 1))
