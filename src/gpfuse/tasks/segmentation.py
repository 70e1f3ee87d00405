"""Binary segmentation as a LightningModule: deep-supervised BCE + Dice, evaluation under both polyp
metric conventions at each image's own resolution, gate statistics, SGD + poly decay (EA-DK's recipe)."""
from __future__ import annotations

import lightning as L
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import Tensor, nn
from torch.nn import functional as F

from gpfuse.metrics.seg2d import PolypEvaluator
from gpfuse.tasks.schedules import build_optimizer, lr_lambda

__all__ = ["SegmentationTask", "full_size_probabilities"]


def full_size_probabilities(logits: Tensor, sizes: list[tuple[int, int]]) -> list[Tensor]:
    """(B, 1, h, w) logits -> per image (H_i, W_i) probabilities, resized bilinearly to its own size."""
    return [torch.sigmoid(F.interpolate(logits[i:i + 1].float(), size=tuple(size), mode="bilinear",
                                        align_corners=False))[0, 0] for i, size in enumerate(sizes)]


class SegmentationTask(L.LightningModule):
    """Trains a model returning :class:`~gpfuse.models.outputs.SegmentationOutput` on ``batch["mask"]``.

    Loss: MONAI's ``DiceCELoss(sigmoid=True)`` (binary cross-entropy + soft Dice per image) on every stage's
    logits, the mask resized to each stage (nearest), stages weighted equally (``DeepSupervisionLoss``).
    Validation and test score the full-size prediction of each image against its mask file at the mask's own
    resolution with :class:`~gpfuse.metrics.seg2d.PolypEvaluator` and log ``{stage}/{metric}`` (paper style:
    Dice, IoU, Precision, Recall at ``threshold``; PraNet toolbox: mDice, mIoU, wFm, Sm, meanEm, maxEm, MAE);
    each named test set logs ``test/{name}/{metric}``. Gates: ``gate/step{i}_kernel`` and ``_region`` means.
    """

    def __init__(self, model: nn.Module, optimizer: str = "sgd", lr: float = 4e-4, momentum: float = 0.9,
                 weight_decay: float = 1e-5, schedule: str = "poly", poly_power: float = 0.9, warmup_epochs: int = 0,
                 max_epochs: int = 80, min_lr: float = 0.0, threshold: float = 0.5,
                 test_names: tuple[str, ...] = ("test",)) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.loss = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="same")
        self._evaluators: list[PolypEvaluator] = []
        self._gates: list[list[Tensor]] = []

    def forward(self, batch: dict[str, Tensor]):
        return self.model(batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch).stages, batch["mask"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["mask"]))
        return loss

    # ---- evaluation --------------------------------------------------------------------------------
    def _start(self, count: int) -> None:
        self._evaluators = [PolypEvaluator(self.hparams.threshold) for _ in range(count)]
        self._gates = []

    def _score(self, batch: dict, dataloader_idx: int) -> None:
        out = self(batch)
        for prob, mask in zip(full_size_probabilities(out.logits, batch["size"]), batch["mask_full"]):
            self._evaluators[dataloader_idx].update(prob.cpu().numpy(), mask.cpu().numpy())
        if out.gates:
            self._gates.append([g.float().mean(0) for g in out.gates])  # (2, C) per kernel update

    def _log_gates(self) -> None:
        for i in range(len(self._gates[0]) if self._gates else 0):
            g = torch.stack([step[i] for step in self._gates]).mean(0)
            self.log(f"gate/step{i}_kernel", g[0].mean())
            self.log(f"gate/step{i}_region", g[1].mean())

    def on_validation_epoch_start(self) -> None:
        self._start(1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, 0)

    def on_validation_epoch_end(self) -> None:
        for key, value in self._evaluators[0].compute().items():
            self.log(f"valid/{key}", value, prog_bar=key == "Dice")
        self._log_gates()

    def on_test_epoch_start(self) -> None:
        self._start(len(self.hparams.test_names))

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        for name, evaluator in zip(self.hparams.test_names, self._evaluators):
            if evaluator.num_images:
                for key, value in evaluator.compute().items():
                    self.log(f"test/{name}/{key}", value)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[Tensor]:
        return full_size_probabilities(self(batch).logits, batch["size"])

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(self.model.parameters(), hp.optimizer, hp.lr, hp.weight_decay, hp.momentum)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = hp.warmup_epochs * total // max(1, hp.max_epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(hp.schedule, warmup, total, hp.lr, hp.min_lr, hp.poly_power))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
