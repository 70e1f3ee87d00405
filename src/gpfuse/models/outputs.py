"""Model outputs shared by tasks."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["RegressionOutput", "SegmentationOutput"]


class RegressionOutput(NamedTuple):
    """score: (B,) prediction; aux: (B,) auxiliary prediction or None; gates: per fusion step (B, D) or None."""

    score: Tensor
    aux: Tensor | None = None
    gates: list[Tensor | None] | tuple = ()


class SegmentationOutput(NamedTuple):
    """logits: (B, 1, H, W) at the input size; stages: every stage's logits at its own resolution, deep to
    shallow (deep supervision); gates: per kernel update (B, 2, C): the kept-kernel and taken-region gates;
    attention: (B, S, S) encoder-attention weights over the S stage tokens."""

    logits: Tensor
    stages: list[Tensor]
    gates: list[Tensor]
    attention: Tensor
