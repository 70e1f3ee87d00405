"""Learning-rate schedules shared by the tasks."""
from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(t: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Learning-rate factor at time ``t`` (epoch or step, 0-based): linear warm-up over ``warmup`` units, then
    cosine from ``lr`` to ``min_lr`` at ``total``."""
    if t < warmup:
        return (t + 1) / warmup
    progress = min(1.0, (t - warmup) / max(1, total - warmup))
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr
