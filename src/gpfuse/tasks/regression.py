"""Sentiment regression as a LightningModule: loss, MMSA metrics, gate statistics, optimiser and schedule."""
from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gpfuse.metrics.sentiment import mosi_regression_metrics
from gpfuse.models.outputs import RegressionOutput
from gpfuse.tasks.schedules import warmup_cosine

__all__ = ["RegressionTask"]


class RegressionTask(L.LightningModule):
    """Trains any model returning :class:`RegressionOutput` on ``batch["label"]``.

    Loss: ``loss(score, y) + aux_weight * loss(aux, y)`` (GRF's auxiliary regressor, weight 0.4).
    Validation and test compute the MMSA metric suite over the whole split, and the mean/std of each
    fusion step's gate (logged as ``gate/step{i}_mean``).
    """

    def __init__(self, model: nn.Module, loss: str = "l1", aux_weight: float = 0.4, lr: float = 1e-3,
                 weight_decay: float = 0.01, warmup_epochs: int = 5, max_epochs: int = 100,
                 min_lr: float = 1e-6) -> None:
        super().__init__()
        if loss not in ("l1", "mse"):
            raise ValueError(f"loss must be one of ['l1', 'mse'], got {loss!r}")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.criterion = F.l1_loss if loss == "l1" else F.mse_loss
        self._outputs: list[tuple[Tensor, Tensor, list[Tensor | None]]] = []

    def forward(self, batch: dict[str, Tensor]) -> RegressionOutput:
        return self.model(batch)

    def _loss(self, out: RegressionOutput, label: Tensor) -> Tensor:
        loss = self.criterion(out.score, label)
        if out.aux is not None and self.hparams.aux_weight > 0:
            loss = loss + self.hparams.aux_weight * self.criterion(out.aux, label)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(self(batch), batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        out = self(batch)
        self.log(f"{stage}/loss", self._loss(out, batch["label"]), on_epoch=True, batch_size=len(batch["label"]))
        self._outputs.append((out.score.detach(), batch["label"], [g if g is None else g.detach() for g in out.gates]))

    def _eval_epoch_end(self, stage: str) -> None:
        preds = torch.cat([o[0] for o in self._outputs]).float().cpu()
        labels = torch.cat([o[1] for o in self._outputs]).float().cpu()
        for key, value in mosi_regression_metrics(preds, labels).items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "MAE")
        steps = len(self._outputs[0][2])
        for i in range(steps):
            gates = [o[2][i] for o in self._outputs if o[2][i] is not None]
            if gates:
                g = torch.cat([x.reshape(-1) for x in gates])
                self.log(f"gate/step{i}_mean", g.mean())
                self.log(f"gate/step{i}_std", g.std())
        self._outputs.clear()

    def on_validation_epoch_start(self) -> None:
        self._outputs.clear()

    def on_test_epoch_start(self) -> None:
        self._outputs.clear()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("valid")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch).score

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: warmup_cosine(e, hp.warmup_epochs, hp.max_epochs, hp.lr, hp.min_lr))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
