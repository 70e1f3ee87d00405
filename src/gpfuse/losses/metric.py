"""Metric-learning losses for re-identification."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["batch_hard_triplet_loss"]


def batch_hard_triplet_loss(embeddings: Tensor, pids: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017), as torchreid's ``TripletLoss``: for each anchor the
    farthest positive and the closest negative under Euclidean distance, ``relu(d_ap - d_an + margin)``
    averaged over anchors that have at least one positive and one negative in the batch.

    Args:
        embeddings: (B, D). pids: (B,) identity labels. margin: the margin (0.3 in GPF-Net).

    Returns:
        scalar loss (0 with no valid anchor, still attached to the graph).
    """
    dist = torch.cdist(embeddings, embeddings).clamp_min(1e-12)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    positive, negative = same & ~eye, ~same
    valid = positive.any(1) & negative.any(1)
    if not valid.any():
        return embeddings.sum() * 0.0
    d_ap = dist.masked_fill(~positive, float("-inf")).max(1).values
    d_an = dist.masked_fill(~negative, float("inf")).min(1).values
    return F.relu(d_ap - d_an + margin)[valid].mean()
