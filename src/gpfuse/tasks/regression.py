"""Sentiment regression as a LightningModule: loss, MMSA metrics, gate statistics, optimiser and schedule."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gpfuse.metrics.sentiment import mosi_regression_metrics
from gpfuse.models.outputs import RegressionOutput
from gpfuse.tasks.gather import SampleCollector, gate_moments, pooled_mean_std
from gpfuse.tasks.schedules import warmup_cosine

__all__ = ["RegressionTask"]


class RegressionTask(L.LightningModule):
    """Trains any model returning :class:`RegressionOutput` on ``batch["label"]``.

    Loss: ``loss(score, y) + aux_weight * loss(aux, y)`` (GRF's auxiliary regressor, weight 0.4).
    Validation and test compute the loss and the MMSA metric suite over the whole split (gathered from every
    process, each utterance once), and the mean/std of each fusion step's gate (``gate/step{i}_mean``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str = "l1",
        aux_weight: float = 0.4,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_epochs: int = 5,
        max_epochs: int = 100,
        min_lr: float = 1e-6,
    ) -> None:
        super().__init__()
        if loss not in ("l1", "mse"):
            raise ValueError(f"loss must be one of ['l1', 'mse'], got {loss!r}")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.criterion = F.l1_loss if loss == "l1" else F.mse_loss
        self._collector: SampleCollector | None = None
        #: after a test: ``{"test": {"index", "score", "label"}}``, each (N,) (per-utterance predictions)
        self.test_samples: dict[str, dict[str, np.ndarray]] = {}

    def forward(self, batch: dict[str, Tensor]) -> RegressionOutput:
        return self.model(batch)

    def _loss(self, out: RegressionOutput, label: Tensor) -> Tensor:
        loss = self.criterion(out.score, label)
        if out.aux is not None and self.hparams["aux_weight"] > 0:
            loss = loss + self.hparams["aux_weight"] * self.criterion(out.aux, label)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(self(batch), batch["label"])
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["label"]),
            sync_dist=True,
        )
        return loss

    def _eval_step(self, batch: dict[str, Tensor]) -> None:
        out = self(batch)
        values = {"score": out.score.float(), "label": batch["label"].float()}
        if out.aux is not None:
            values["aux"] = out.aux.float()
        values.update({f"gate{i}": gate_moments(g) for i, g in enumerate(out.gates) if g is not None})
        if self._collector is None:
            self._collector = SampleCollector(values).to(self.device)
        self._collector.update(batch["index"], **values)

    def _eval_epoch_end(self, stage: str) -> None:
        if self._collector is None:
            raise RuntimeError(f"{stage}: no batch was scored (an empty split?)")
        whole = {k: v.cpu() for k, v in self._collector.compute().items()}
        self._collector = None
        if stage == "test":
            self.test_samples = {"test": {k: whole[k].numpy() for k in ("index", "score", "label")}}
        aux = whole.get("aux")
        self.log(f"{stage}/loss", self._loss(RegressionOutput(whole["score"], aux), whole["label"]))
        for key, value in mosi_regression_metrics(whole["score"], whole["label"]).items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "MAE")
        for key in sorted(k for k in whole if k.startswith("gate")):
            mean, std = pooled_mean_std(whole[key])
            self.log(f"gate/{key.replace('gate', 'step')}_mean", mean)
            self.log(f"gate/{key.replace('gate', 'step')}_std", std)

    def on_validation_epoch_start(self) -> None:
        self._collector = None

    def on_test_epoch_start(self) -> None:
        self._collector = None

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("valid")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: warmup_cosine(e, hp["warmup_epochs"], hp["max_epochs"], hp["lr"], hp["min_lr"])
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
