"""Losses (a leaf: imports nothing else of gpfuse)."""

from gpfuse.losses.alignment import UncertaintyWeighting, class_info_nce, concept_info_nce, concept_similarity_weights
from gpfuse.losses.metric import batch_hard_triplet_loss

__all__ = [
    "UncertaintyWeighting",
    "batch_hard_triplet_loss",
    "class_info_nce",
    "concept_info_nce",
    "concept_similarity_weights",
]
