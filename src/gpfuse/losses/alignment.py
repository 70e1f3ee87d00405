"""Vision-language alignment losses and multi-task weighting (BiPVL-Seg, arXiv 2503.23534, Sec. 3.3-3.4).

- :func:`class_info_nce`: global (class-level) alignment, a symmetric InfoNCE between the vision embedding
  and the text embedding of each class (Oord et al. 2018; CLIP's two-way form), temperature 0.2, each class's
  term weighted by its concept-to-vision similarity (:func:`concept_similarity_weights`) as the paper says.
- :func:`concept_info_nce`: local (concept-level) alignment: each class's vision embedding against each of
  its concept-text embeddings (positive) and the ``k`` MOST similar concept texts of other classes (hard
  negatives; the public code took the least similar, i.e. easy negatives).

What the vision embedding of a class is: the paper aligns concepts "with visual regions" without saying which
regions or how they are pooled. gpfuse's vision side of both terms is the class prototype: the bottleneck
tokens averaged with the class-embedding head's soft assignment to that class, i.e. the region the model
attributes to the class, pooled to one vector (``BiPVLSeg``). A per-token (region-level) local term is not
implemented; ``train.local_alignment: false`` and ``train.global_alignment: uniform`` are the ablations.
- :class:`UncertaintyWeighting`: homoscedastic uncertainty weighting (Kendall et al. 2018),
  ``sum_i L_i / (2 exp(s_i)) + s_i / 2`` with learnable ``s_i = log sigma_i^2`` starting at 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["UncertaintyWeighting", "class_info_nce", "concept_info_nce", "concept_similarity_weights"]


def concept_similarity_weights(vision: Tensor, concepts: Tensor, temperature: float = 0.2) -> Tensor:
    """Per-class weights of the global term from concept-to-vision similarity (the paper's weighting, whose exact
    form it does not give; gpfuse's choice): ``w_bc = C * softmax_c(mean_k cos(v_bc, t_bck) / T)``, so the
    weights of a sample average 1, and classes whose concepts already describe the volume's region count more.
    Detached: the weights steer the global term, they are not a loss the model can lower by itself.

    Shapes: vision (B, C, D), concepts (B, C, K, D) -> (B, C).
    """
    sim = torch.einsum("bcd,bckd->bck", F.normalize(vision, dim=-1), F.normalize(concepts, dim=-1)).mean(-1)
    return (sim / temperature).softmax(dim=-1).detach() * vision.shape[1]


def class_info_nce(vision: Tensor, text: Tensor, temperature: float = 0.2, weights: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over the C classes of each sample.

    Args:
        vision: (B, C, D) class embeddings from the volume. text: (B, C, D) class (global prompt) embeddings.
        weights: (B, C) weight of each class's term (:func:`concept_similarity_weights`); None weighs all 1.

    Returns:
        scalar: mean over (sample, class) of ``w_bc (CE(v_c -> t, c) + CE(t_c -> v, c)) / 2`` on cosine
        similarities / T.
    """
    logits = torch.einsum("bcd,bkd->bck", F.normalize(vision, dim=-1), F.normalize(text, dim=-1)) / temperature
    target = torch.arange(vision.shape[1], device=vision.device).expand(vision.shape[0], -1).flatten()
    per_class = 0.5 * (
        F.cross_entropy(logits.flatten(0, 1), target, reduction="none")
        + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target, reduction="none")
    )
    return per_class.mean() if weights is None else (per_class * weights.flatten()).mean()


def concept_info_nce(vision: Tensor, concepts: Tensor, temperature: float = 0.2, hard_negatives: int = 3) -> Tensor:
    """InfoNCE of each class's vision embedding against its own concepts, with hard negatives.

    Args:
        vision: (B, C, D) class embeddings from the volume. concepts: (B, C, K, D) concept-text embeddings
            (K concepts per class). hard_negatives: negatives per positive pair: the most similar concept
            texts of the other classes (all of them when fewer exist).

    Returns:
        scalar: mean over (sample, class, concept) of ``-log(exp(s+) / (exp(s+) + sum exp(s-)))``, s = cos / T.
    """
    b, c, k, _ = concepts.shape
    sim = torch.einsum("bcd,bjkd->bcjk", F.normalize(vision, dim=-1), F.normalize(concepts, dim=-1)) / temperature
    own = torch.eye(c, dtype=torch.bool, device=sim.device)[None, :, :, None].expand(b, c, c, k)
    positives = sim[own].view(b, c, k)  # (B, C, K): class c against its own concepts
    others = sim.masked_fill(own, float("-inf")).flatten(2)  # (B, C, C*K): other classes' concepts
    n = min(hard_negatives, (c - 1) * k)
    negatives = others.topk(n, dim=-1).values  # the most similar ones
    logits = torch.cat([positives.unsqueeze(-1), negatives.unsqueeze(2).expand(b, c, k, n)], dim=-1)
    return -F.log_softmax(logits, dim=-1)[..., 0].mean()


class UncertaintyWeighting(nn.Module):
    """``sum_i L_i / (2 exp(s_i)) + s_i / 2`` over ``num_losses`` losses, ``s_i`` learnable from 0.

    Shapes: ``losses`` a sequence of scalars -> scalar. :attr:`weights` gives ``1 / (2 exp(s_i))``.
    """

    def __init__(self, num_losses: int) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(num_losses))

    @property
    def weights(self) -> Tensor:
        return 0.5 * torch.exp(-self.log_vars)

    def forward(self, losses: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        if len(losses) != len(self.log_vars):
            raise ValueError(f"expected {len(self.log_vars)} losses, got {len(losses)}")
        stacked = torch.stack(list(losses))
        return (stacked * self.weights + 0.5 * self.log_vars).sum()
