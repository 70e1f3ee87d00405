"""Model outputs shared by tasks."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["RegressionOutput"]


class RegressionOutput(NamedTuple):
    """score: (B,) prediction; aux: (B,) auxiliary prediction or None; gates: per fusion step (B, D) or None."""

    score: Tensor
    aux: Tensor | None = None
    gates: list[Tensor | None] | tuple = ()
