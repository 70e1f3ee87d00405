"""Losses (a leaf: imports nothing else of gpfuse)."""
from gpfuse.losses.metric import batch_hard_triplet_loss

__all__ = ["batch_hard_triplet_loss"]
