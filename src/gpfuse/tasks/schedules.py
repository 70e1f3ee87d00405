"""Optimisers and learning-rate schedules shared by the tasks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial

import torch

__all__ = ["build_optimizer", "lr_lambda", "per_step_schedule", "warmup_cosine", "warmup_poly"]


def warmup_cosine(t: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Learning-rate factor at time ``t`` (epoch or step, 0-based): linear warm-up over ``warmup`` units, then
    cosine from ``lr`` to ``min_lr`` at ``total``."""
    if t < warmup:
        return (t + 1) / warmup
    progress = min(1.0, (t - warmup) / max(1, total - warmup))
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr


def warmup_poly(t: int, warmup: int, total: int, power: float = 0.9) -> float:
    """Factor at ``t``: linear warm-up over ``warmup`` units, then the "poly" decay ``(1 - t' / T') ** power``
    (DeepLab; EA-DK and PraNet-family polyp models, power 0.9), reaching 0 at ``total``."""
    if t < warmup:
        return (t + 1) / warmup
    return max(0.0, 1 - (t - warmup) / max(1, total - warmup)) ** power


def lr_lambda(
    schedule: str, warmup: int, total: int, lr: float, min_lr: float, power: float = 0.9
) -> Callable[[int], float]:
    """The factor function of ``schedule`` (``"warmup_cosine"`` or ``"poly"``) for ``LambdaLR``."""
    if schedule == "warmup_cosine":
        return partial(warmup_cosine, warmup=warmup, total=total, lr=lr, min_lr=min_lr)
    if schedule == "poly":
        return partial(warmup_poly, warmup=warmup, total=total, power=power)
    raise ValueError(f"schedule must be one of ['warmup_cosine', 'poly'], got {schedule!r}")


def per_step_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: float,
    schedule: str,
    warmup_epochs: int,
    max_epochs: int,
    lr: float,
    min_lr: float,
    power: float = 0.9,
) -> dict:
    """Lightning's ``lr_scheduler`` entry for ``schedule`` stepped every optimiser step over ``total_steps``
    (``trainer.estimated_stepping_batches``), its warm-up the first ``warmup_epochs / max_epochs`` of them.

    Per step, not per epoch: a warm-up of whole epochs jumps to the full rate after one epoch, which lets
    GPF-Net's post-LN fusion stack collapse every embedding onto one point within the first epoch.
    """
    total = max(1, int(total_steps))
    warmup = warmup_epochs * total // max(1, max_epochs)
    factor = lr_lambda(schedule, warmup, total, lr, min_lr, power)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def build_optimizer(
    params: Iterable, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``"adamw"`` or ``"sgd"`` (with ``momentum``) over ``params`` (tensors or parameter groups)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of ['adamw', 'sgd'], got {name!r}")
