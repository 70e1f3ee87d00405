"""Vision-language alignment losses and multi-task weighting (BiPVL-Seg, arXiv 2503.23534, Sec. 3.3-3.4).

- :func:`class_info_nce`: global (class-level) alignment, a symmetric InfoNCE between the vision embedding
  and the text embedding of each class (Oord et al. 2018; CLIP's two-way form), temperature 0.2.
- :func:`concept_info_nce`: local (concept-level) alignment: each class's vision embedding against each of
  its concept-text embeddings (positive) and the ``k`` MOST similar concept texts of other classes (hard
  negatives; the public code took the least similar, i.e. easy negatives).
- :class:`UncertaintyWeighting`: homoscedastic uncertainty weighting (Kendall et al. 2018),
  ``sum_i L_i / (2 exp(s_i)) + s_i / 2`` with learnable ``s_i = log sigma_i^2`` starting at 0.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["class_info_nce", "concept_info_nce", "UncertaintyWeighting"]


def class_info_nce(vision: Tensor, text: Tensor, temperature: float = 0.2) -> Tensor:
    """Symmetric InfoNCE over the C classes of each sample.

    Args:
        vision: (B, C, D) class embeddings from the volume. text: (B, C, D) class (global prompt) embeddings.

    Returns:
        scalar: mean over samples of ``(CE(v_c -> t, c) + CE(t_c -> v, c)) / 2`` on cosine similarities / T.
    """
    logits = torch.einsum("bcd,bkd->bck", F.normalize(vision, dim=-1), F.normalize(text, dim=-1)) / temperature
    target = torch.arange(vision.shape[1], device=vision.device).expand(vision.shape[0], -1)
    return 0.5 * (F.cross_entropy(logits.flatten(0, 1), target.flatten())
                  + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target.flatten()))


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
