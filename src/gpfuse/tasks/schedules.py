"""Learning-rate schedules shared by the tasks."""
from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(epoch: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` epochs, then cosine from ``lr`` to ``min_lr``."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    progress = min(1.0, (epoch - warmup) / max(1, total - warmup))
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr
