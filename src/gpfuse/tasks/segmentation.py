"""Binary segmentation as a LightningModule: deep-supervised BCE + Dice, evaluation under both polyp
metric conventions at each image's own resolution, gate statistics, SGD + poly decay (EA-DK's recipe)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import Tensor, nn

from gpfuse.inference.segmentation import full_size_probabilities
from gpfuse.metrics.seg2d import PolypEvaluator, polyp_scores
from gpfuse.tasks.gather import SampleCollector
from gpfuse.tasks.schedules import build_optimizer, per_step_schedule

__all__ = ["SegmentationTask"]


class SegmentationTask(L.LightningModule):
    """Trains a model returning :class:`~gpfuse.models.outputs.SegmentationOutput` on ``batch["mask"]``.

    Loss: MONAI's ``DiceCELoss(sigmoid=True)`` (binary cross-entropy + soft Dice per image) on every stage's
    logits, the mask resized to each stage (nearest), stages weighted equally (``DeepSupervisionLoss``).
    Validation and test score the full-size prediction of each image against its mask file at the mask's own
    resolution with :class:`~gpfuse.metrics.seg2d.PolypEvaluator` and log ``{stage}/{metric}`` (paper style:
    Dice, IoU, Precision, Recall at ``threshold``; PraNet toolbox: mDice, mIoU, wFm, Sm, meanEm, maxEm, MAE);
    each named test set logs ``test/{name}/{metric}``. Per-image records are gathered from every process (each
    image once) before the means. Gates: ``gate/step{i}_kernel`` and ``_region`` means.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: str = "sgd",
        lr: float = 4e-4,
        momentum: float = 0.9,
        weight_decay: float = 1e-5,
        schedule: str = "poly",
        poly_power: float = 0.9,
        warmup_epochs: int = 0,
        max_epochs: int = 80,
        min_lr: float = 0.0,
        threshold: float = 0.5,
        test_names: tuple[str, ...] = ("test",),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.loss = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="same")
        self._collectors: list[SampleCollector] = []
        #: after a test: per test set, ``index`` (N,) and ``record`` (N, 7): each image's Dice, IoU, Precision,
        #: Recall, Sm, wFm, MAE (what :func:`gpfuse.tasks.samples.write_samples` writes)
        self.test_samples: dict[str, dict[str, np.ndarray]] = {}

    def forward(self, batch: dict[str, Tensor]):
        return self.model(batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch).stages, batch["mask"])
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["mask"]),
            sync_dist=True,
        )
        return loss

    # ---- evaluation --------------------------------------------------------------------------------
    def _start(self, count: int) -> None:
        self._collectors = [SampleCollector(["record", "gates"]).to(self.device) for _ in range(count)]

    def _score(self, batch: dict, dataloader_idx: int) -> None:
        out = self(batch)
        evaluator = PolypEvaluator(self.hparams["threshold"])
        for prob, mask in zip(full_size_probabilities(out.logits, batch["size"]), batch["mask_full"]):
            evaluator.update(prob.cpu().numpy(), mask.cpu().numpy())
        # per image: the mean kept-kernel and taken-region gate of each kernel update, (B, steps, 2); none from a
        # deployed ONNX file (gpfuse eval --engine), whose only output is the logits
        steps = getattr(out, "gates", None)
        gates = torch.stack([g.float().mean(2) for g in steps], 1) if steps else torch.zeros(len(out.logits), 0, 2)
        self._collectors[dataloader_idx].update(
            batch["index"], record=torch.from_numpy(evaluator.records), gates=gates.double()
        )

    def _log_whole(self, prefix: str, collector: SampleCollector, gates: bool) -> dict[str, Tensor]:
        whole = collector.compute()
        for key, value in polyp_scores(whole["record"].cpu().numpy()).items():
            self.log(f"{prefix}/{key}", value, prog_bar=key == "Dice" and prefix == "valid")
        if gates:
            for i, (kernel, region) in enumerate(whole["gates"].mean(0).tolist()):
                self.log(f"gate/step{i}_kernel", kernel)
                self.log(f"gate/step{i}_region", region)
        return whole

    def on_validation_epoch_start(self) -> None:
        self._start(1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, 0)

    def on_validation_epoch_end(self) -> None:
        self._log_whole("valid", self._collectors[0], gates=True)

    def on_test_epoch_start(self) -> None:
        self._start(len(self.hparams["test_names"]))

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self.test_samples = {}
        for name, collector in zip(self.hparams["test_names"], self._collectors):
            if collector.update_count:
                whole = self._log_whole(f"test/{name}", collector, gates=False)
                self.test_samples[name] = {
                    "index": whole["index"].cpu().numpy(),
                    "record": whole["record"][:, :7].cpu().numpy(),
                }

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(self.model.parameters(), hp.optimizer, hp.lr, hp.weight_decay, hp.momentum)
        schedule = per_step_schedule(
            optimizer,
            self.trainer.estimated_stepping_batches,
            hp.schedule,
            hp.warmup_epochs,
            hp.max_epochs,
            hp.lr,
            hp.min_lr,
            hp.poly_power,
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
