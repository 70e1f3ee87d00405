"""3D multi-class segmentation as a LightningModule: MONAI DiceCE, BiPVL-Seg's class-embedding and alignment
losses under homoscedastic uncertainty weighting, sliding-window evaluation with Dice / HD95 / NSD per class."""

from __future__ import annotations

import re
from typing import cast

import lightning as L
import numpy as np
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from torch import Tensor, nn
from torch.nn import functional as F

from gpfuse.inference.volumes import affine_of, original_grid_labels, voxel_spacing
from gpfuse.losses import UncertaintyWeighting, class_info_nce, concept_info_nce, concept_similarity_weights
from gpfuse.metrics.seg3d import EMPTY_RULE, summarise_cases, volume_metrics
from gpfuse.tasks.gather import SampleCollector
from gpfuse.tasks.schedules import build_optimizer, per_step_schedule

__all__ = ["GLOBAL_ALIGNMENTS", "Segmentation3DTask"]

GLOBAL_ALIGNMENTS = ("concept_weighted", "uniform")


class Segmentation3DTask(L.LightningModule):
    """Trains a model returning :class:`~gpfuse.models.bipvl_seg.BiPVLSegOutput` on ``batch["label"]`` (B, 1, ...).

    Loss: MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``; when the model gives alignment outputs also the
    class-embedding CE (targets: argmax of the segmentation logits resized to the bottleneck, detached) and the
    global + local InfoNCE (temperature, ``hard_negatives``), the three combined by learnable uncertainty weights
    (a single loss is used as is). ``global_alignment``: ``"concept_weighted"`` (the paper: each class's global
    term weighted by its concept-to-vision similarity) or ``"uniform"``; ``local_alignment=False`` drops the
    concept-level term (ablations; :mod:`gpfuse.losses.alignment` says what the vision side of both terms is).
    Validation and test: sliding-window inference (``overlap_val`` /
    ``overlap_test``), the prediction taken back to the grid of the label file (:func:`original_grid_labels`;
    the loader's ``label`` is the file as stored), per-volume Dice / HD95 / NSD (2 mm) at the file's voxel
    spacing, gathered from every process (each volume once) and averaged over volumes, logged as
    ``{stage}/mean_dice`` ... and ``{stage}/dice/<class>``; :data:`EMPTY_RULE` applies to empty structures.
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: tuple[str, ...],
        roi_size: tuple[int, int, int] = (96, 96, 96),
        sw_batch_size: int = 4,
        overlap_val: float = 0.5,
        overlap_test: float = 0.75,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        warmup_epochs: int = 0,
        max_epochs: int = 100,
        min_lr: float = 1e-6,
        temperature: float = 0.2,
        hard_negatives: int = 3,
        global_alignment: str = "concept_weighted",
        local_alignment: bool = True,
    ) -> None:
        super().__init__()
        if global_alignment not in GLOBAL_ALIGNMENTS:
            raise ValueError(f"global_alignment must be one of {list(GLOBAL_ALIGNMENTS)}, got {global_alignment!r}")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.weighting = UncertaintyWeighting(3) if getattr(model, "alignment", False) else None
        self._cases: SampleCollector | None = None
        #: after a test: ``{"test": {"index": (N,), "case": (N, 3 (C - 1) + 3)}}``: each volume's Dice, HD95 and
        #: NSD per foreground class, then its mean Dice, HD95, NSD
        self.test_samples: dict[str, dict[str, np.ndarray]] = {}

    def forward(self, batch: dict[str, Tensor]):
        return self.model(batch)

    def _alignment_loss(self, out) -> Tensor:
        """Global (class-level) InfoNCE, weighted as ``global_alignment`` says, plus the local (concept) term."""
        hp = self.hparams
        weights = None
        if hp["global_alignment"] == "concept_weighted":
            weights = concept_similarity_weights(out.vision_classes, out.text_concepts, hp["temperature"])
        loss = class_info_nce(out.vision_classes, out.text_classes, hp["temperature"], weights)
        if hp["local_alignment"]:
            loss = loss + concept_info_nce(
                out.vision_classes, out.text_concepts, hp["temperature"], hp["hard_negatives"]
            )
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out, label = self(batch), batch["label"]
        losses = {"seg": self.seg_loss(out.logits, label)}
        if out.class_logits is not None:
            grid = [s // 32 for s in batch["image"].shape[2:]]  # Swin UNETR's bottleneck: stride 32
            target = F.interpolate(out.logits.detach().float(), size=grid, mode="trilinear").argmax(1).flatten(1)
            losses["class"] = F.cross_entropy(out.class_logits.transpose(1, 2), target)
            losses["align"] = self._alignment_loss(out)
        loss = self.weighting(list(losses.values())) if self.weighting is not None else losses["seg"]
        n = len(label)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True, batch_size=n, sync_dist=True
        )
        if self.weighting is not None:
            self.log_dict(
                {f"weight/{k}": w for k, w in zip(losses, self.weighting.weights)},
                on_step=False,
                on_epoch=True,
                sync_dist=True,
            )
        return loss

    # ---- evaluation --------------------------------------------------------------------------------
    def _score(self, batch: dict[str, Tensor], stage: str) -> None:
        hp = self.hparams
        loaders = self.trainer.val_dataloaders if stage == "valid" else self.trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None:
            raise RuntimeError(f"{stage}: the trainer has no {stage} loader")
        overlap = hp["overlap_val"] if stage == "valid" else hp["overlap_test"]
        pred = original_grid_labels(
            self.model, batch, loader.dataset.transform, hp["roi_size"], hp["sw_batch_size"], overlap
        )
        label = batch["label"][0, 0]
        if pred.shape != label.shape or not torch.allclose(affine_of(pred), affine_of(batch["label"]), atol=1e-3):
            name = cast(MetaTensor, batch["label"]).meta["filename_or_obj"][0]
            raise ValueError(
                f"{name}: the label file's grid (shape {tuple(label.shape)}, affine "
                f"{affine_of(batch['label']).tolist()}) is not its image's (shape {tuple(pred.shape)}, "
                f"affine {affine_of(pred).tolist()}): image and label must share one voxel grid"
            )
        case = volume_metrics(pred, label, len(hp["class_names"]), voxel_spacing(batch["label"]))
        row = torch.tensor(
            [*case["dice"], *case["hd95"], *case["nsd"], case["mean_dice"], case["mean_hd95"], case["mean_nsd"]],
            dtype=torch.float64,
        )
        if self._cases is None:
            self._cases = SampleCollector(["case"]).to(self.device)
        self._cases.update(batch["index"], case=row[None])

    def _log_cases(self, stage: str) -> None:
        if self._cases is None:
            raise RuntimeError(f"{stage}: no volume was scored (an empty split?)")
        whole = self._cases.compute()
        rows = whole["case"].cpu().numpy()
        self._cases = None
        if stage == "test":
            index = whole["index"].cpu().numpy().reshape(-1)  # one case: the gathered index comes back 0-d
            self.test_samples = {"test": {"index": index, "case": rows.reshape(len(index), -1)}}
        k = len(self.hparams["class_names"]) - 1
        cases = [
            {
                "dice": r[:k],
                "hd95": r[k : 2 * k],
                "nsd": r[2 * k : 3 * k],
                "mean_dice": r[-3],
                "mean_hd95": r[-2],
                "mean_nsd": r[-1],
            }
            for r in rows
        ]
        summary = summarise_cases(cases)
        for key in ("mean_dice", "mean_hd95", "mean_nsd"):
            self.log(f"{stage}/{key}", summary[key], prog_bar=key == "mean_dice")
        for metric in ("dice", "hd95", "nsd"):
            for name, value in zip(self.hparams["class_names"][1:], summary[metric]):
                self.log(f"{stage}/{metric}/{re.sub(r'[^A-Za-z0-9]+', '_', name)}", value)

    def on_validation_epoch_start(self) -> None:
        self._cases = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        self._log_cases("valid")

    def on_test_epoch_start(self) -> None:
        self._cases = None
        self.print(f"3D metrics over volumes; {EMPTY_RULE}")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_cases("test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(
            [p for p in self.parameters() if p.requires_grad], "adamw", hp["lr"], hp["weight_decay"]
        )
        schedule = per_step_schedule(
            optimizer,
            self.trainer.estimated_stepping_batches,
            "warmup_cosine",
            hp["warmup_epochs"],
            hp["max_epochs"],
            hp["lr"],
            hp["min_lr"],
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
