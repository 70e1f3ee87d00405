"""Masked pooling shared by the fusion stacks."""

from __future__ import annotations

from torch import Tensor

__all__ = ["key_padding_mask", "masked_mean"]


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over time of the real steps only.

    Args:
        x: (B, L, D) sequence.
        mask: (B, L) bool, True where a step is real; None means every step is real.

    Returns:
        (B, D). A row whose mask is all False pools to zeros (never NaN).
    """
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def key_padding_mask(mask: Tensor | None) -> Tensor | None:
    """gpfuse masks are True on real steps; ``nn.MultiheadAttention`` wants True on padding."""
    return None if mask is None else ~mask.bool()
