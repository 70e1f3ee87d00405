"""A BERT-family text encoder cut into stages by layer boundaries, so another model can work between stages
(BiPVL-Seg fuses each stage's text with a vision stage).

Stage 0 is the embeddings and layers ``[0, b_0)``; stage ``s`` is layers ``[b_{s-1}, b_s)``. Boundaries are
given for a model of depth ``boundaries[-1]`` (BiPVL-Seg: ``(1, 6, 8, 10, 12)`` for 12-layer BERTs) and scaled
to the backbone's own depth (the shipped 6-layer MiniLM: ``(1, 3, 4, 5, 6)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from gpfuse.encoders.text import load_text_backbone

__all__ = ["StagedTextEncoder", "scale_boundaries"]


def scale_boundaries(boundaries: Sequence[int], depth: int) -> tuple[int, ...]:
    """Boundaries for a model of depth ``boundaries[-1]`` -> the same proportions at ``depth`` (rounded half up,
    at least one layer per stage). ValueError when ``depth`` has fewer layers than there are stages."""
    if len(boundaries) < 1 or list(boundaries) != sorted(set(boundaries)) or boundaries[0] < 1:
        raise ValueError(f"stage boundaries must be increasing layer counts >= 1, got {list(boundaries)}")
    if depth < len(boundaries):
        raise ValueError(f"a {depth}-layer text model cannot be cut into {len(boundaries)} stages")
    scaled, previous = [], 0
    for i, b in enumerate(boundaries):
        value = max(previous + 1, math.floor(b * depth / boundaries[-1] + 0.5))
        value = min(value, depth - (len(boundaries) - 1 - i))  # leave a layer for every later stage
        scaled.append(value)
        previous = value
    return tuple(scaled)


class StagedTextEncoder(nn.Module):
    """Run a local BERT-family encoder stage by stage.

    Args:
        model: ``"minilm"`` (offline default) or a local folder (PubMedBERT / ClinicalBERT are BiPVL-Seg's).
        boundaries: stage boundaries for a model of depth ``boundaries[-1]`` (scaled, see module docstring).
        trainable: fine-tune the encoder (BiPVL-Seg trains it through its alignment losses).

    Use: ``h = enc.stage(0, ids=ids, mask=mask)``, then ``h = enc.stage(s, h, mask)`` for s = 1 ..
    ``num_stages - 1``. Shapes: ``ids`` and ``mask`` (N, L) -> hidden states (N, L, hidden_size).
    """

    def __init__(
        self, model: str = "minilm", boundaries: Sequence[int] = (1, 6, 8, 10, 12), trainable: bool = True
    ) -> None:
        super().__init__()
        from transformers.masking_utils import create_bidirectional_mask

        self._mask_fn = create_bidirectional_mask
        self.model, layers = load_text_backbone(model)
        self.hidden_size = int(self.model.config.hidden_size)
        self.boundaries = scale_boundaries(boundaries, len(layers))
        self.model.requires_grad_(trainable)
        self.trainable = trainable
        self.model.train(trainable)  # from_pretrained returns eval mode: a trained encoder keeps its dropout
        if hasattr(self.model, "pooler"):  # never used: keep every parameter trained
            self.model.pooler = None

    def train(self, mode: bool = True) -> StagedTextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    @property
    def num_stages(self) -> int:
        return len(self.boundaries)

    def _layers(self, stage: int) -> nn.ModuleList:
        start = 0 if stage == 0 else self.boundaries[stage - 1]
        layers = cast(nn.ModuleList, cast(nn.Module, self.model.encoder).layer)  # checked by load_text_backbone
        return layers[start : self.boundaries[stage]]

    def stage(
        self, index: int, hidden: Tensor | None = None, mask: Tensor | None = None, ids: Tensor | None = None
    ) -> Tensor:
        """Stage ``index`` (0 takes token ``ids``, later stages the previous stage's ``hidden``)."""
        if not 0 <= index < self.num_stages:
            raise IndexError(f"stage {index} of a {self.num_stages}-stage text encoder")
        if mask is None:
            raise ValueError(f"stage {index}: the attention mask is required")
        if index == 0:
            hidden = cast(nn.Module, self.model.embeddings)(input_ids=ids)
        elif hidden is None:
            raise ValueError(f"stage {index}: the previous stage's hidden states are required")
        attention = self._mask_fn(config=self.model.config, inputs_embeds=hidden, attention_mask=mask.long())
        for layer in self._layers(index):
            out = layer(hidden, attention)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @torch.no_grad()
    def full(self, ids: Tensor, mask: Tensor) -> Tensor:
        """All stages in a row; equals the plain model's last hidden state (a check that staging loses nothing)."""
        hidden = self.stage(0, mask=mask, ids=ids)
        for index in range(1, self.num_stages):
            hidden = self.stage(index, hidden, mask)
        return hidden
