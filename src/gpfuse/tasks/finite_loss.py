"""Stopping a run whose training loss is no longer a number, instead of training on to NaN metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["FiniteLoss", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


class FiniteLoss(Callback):
    """Raises :class:`NonFiniteLossError` naming the epoch and batch as soon as a training loss is NaN or inf
    on any process (decided together, so no process waits for the others); the checkpoints of the epochs
    before stay in the run folder."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            value = (
                float(loss.detach().float().mean())
                if bad and isinstance(loss, torch.Tensor)
                else "NaN or inf on another process"
            )
            raise NonFiniteLossError(
                f"the training loss is {value} at epoch {trainer.current_epoch}, batch "
                f"{batch_idx}: training stopped (check the data for NaN or extreme values, "
                "or lower train.lr); the last checkpoint is kept"
            )
