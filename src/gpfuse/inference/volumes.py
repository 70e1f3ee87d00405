"""3D segmentation from a saved run: a NIfTI file or an array -> a label volume on the input's own grid, with
the run's orientation, resampling, intensity normalisation and sliding window (as in evaluation)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor, nn

from gpfuse.config import VolumeDataConfig
from gpfuse.inference.saved_run import SavedRun

if TYPE_CHECKING:
    from monai.data import MetaTensor


__all__ = ["VolumePredictor", "affine_of", "original_grid_labels", "sliding_window_logits", "voxel_spacing"]


def affine_of(volume: Tensor) -> Tensor:
    """The (4, 4) float64 affine of a MetaTensor (the first one of a batch)."""
    affine = torch.as_tensor(cast("MetaTensor", volume).affine)
    return (affine[0] if affine.dim() == 3 else affine).double().cpu()


def voxel_spacing(volume: Tensor) -> tuple[float, float, float]:
    """Spacing in mm of the first volume of a MONAI batch, from its affine's column norms."""
    return tuple(float(v) for v in torch.linalg.norm(affine_of(volume)[:3, :3], dim=0))  # type: ignore[return-value]


def sliding_window_logits(
    model: nn.Module, image: Tensor, roi_size: Sequence[int], sw_batch_size: int, overlap: float
) -> Tensor:
    """MONAI sliding-window inference of ``model``'s logits over a whole volume:
    (B, C_in, X, Y, Z) -> (B, C, X, Y, Z)."""
    from monai.inferers import sliding_window_inference

    logits = sliding_window_inference(
        image, tuple(roi_size), sw_batch_size, lambda x: model({"image": x}).logits, overlap=overlap, mode="gaussian"
    )
    return cast(Tensor, logits)  # the predictor returns a tensor, so the stitched result is one


@torch.no_grad()
def original_grid_labels(
    model: nn.Module, batch: dict[str, Tensor], transform, roi_size: Sequence[int], sw_batch_size: int, overlap: float
) -> Tensor:
    """The (X, Y, Z) label map (a MetaTensor with the file's affine) of the first volume of a MONAI batch on
    the grid of its file.

    Sliding-window logits on the transformed (reoriented, resampled, cropped) image, softmax, then MONAI's
    ``Invertd`` undoes ``transform`` (the dataset's, which recorded what it did in the image's
    ``applied_operations``) on the class probabilities, bilinearly as in MONAI's tutorials, and the argmax
    is taken on the file's grid: what a user scores a saved prediction against.
    """
    from monai.data import MetaTensor, decollate_batch
    from monai.transforms import Invertd

    logits = sliding_window_logits(model, batch["image"], roi_size, sw_batch_size, overlap)
    with torch.autocast(logits.device.type, enabled=False):  # resampling in fp32 under mixed precision too
        item = decollate_batch({"image": batch["image"], "pred": torch.softmax(logits.float(), 1)})[0]
        inverted = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)(item)
    pred = inverted["pred"]
    return MetaTensor(pred.as_tensor().argmax(0), affine=pred.affine)


class VolumePredictor:
    """A 3D segmentation run's model with its preprocessing (``gpfuse.load`` builds it).

    Example::

        seg3d = gpfuse.load("runs/bipvl_seg_hippocampus/seed_1")
        labels = seg3d.predict("hippocampus_001.nii.gz")       # (X, Y, Z) uint8 on the file's grid
        labels = seg3d.predict(volume, spacing=(1.0, 1.0, 1.0))  # an (X, Y, Z) or (C, X, Y, Z) array
        seg3d.class_names                                      # ["background", "Anterior", "Posterior"]
    """

    def __init__(self, run: SavedRun) -> None:
        from gpfuse.data.volume_transforms import volume_transforms

        self.run = run
        d = run.config.data_as(VolumeDataConfig)
        self.transform = volume_transforms(
            d.roi_size,
            train=False,
            label="none",
            pixdim=d.pixdim,
            intensity=d.intensity,
            ct_window=d.ct_window,
            crop_foreground=d.crop_foreground,
        )
        labels = run.stats.get("labels", {})
        self.class_names = [labels[str(i)] for i in range(len(labels))] if labels else []
        self.in_channels = int(run.model_option("in_channels"))

    @torch.no_grad()
    def predict(self, volume: str | Path | np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """(X, Y, Z) uint8 labels on the input's grid. ``volume``: a NIfTI path, or an (X, Y, Z) or
        (C, X, Y, Z) array with its voxel ``spacing`` in mm (default 1 mm; an array is taken as RAS-oriented)."""
        if isinstance(volume, np.ndarray):
            return self._predict_array(volume, spacing)
        path = Path(volume)
        if not path.is_file():
            raise FileNotFoundError(f"volume not found: {path}")
        if spacing is not None:
            raise ValueError(f"{path}: a file carries its own spacing; give spacing only with an array")
        from monai.data import list_data_collate

        try:
            item = self.transform({"image": str(path)})
        except Exception as err:  # MONAI wraps the reader's error
            raise ValueError(
                f"{path}: not a readable volume ({type(err).__name__}: {str(err).splitlines()[0]})"
            ) from None
        channels = item["image"].shape[0]
        if channels != self.in_channels:
            raise ValueError(f"{path}: {channels} channel(s), the model takes {self.in_channels}")
        batch = list_data_collate([item])
        batch["image"] = batch["image"].to(self.run.device)
        d = self.run.config.data_as(VolumeDataConfig)
        with self.run.autocast():
            labels = original_grid_labels(
                self.run.model, batch, self.transform, d.roi_size, d.sw_batch_size, d.overlap_test
            )
        return labels.cpu().numpy().astype(np.uint8)

    def _predict_array(self, volume: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
        import nibabel as nib

        if volume.ndim not in (3, 4) or not np.issubdtype(volume.dtype, np.number):
            raise ValueError(
                f"a volume array must be numeric (X, Y, Z) or (C, X, Y, Z), got shape {volume.shape} {volume.dtype}"
            )
        sp = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
        if len(sp) != 3 or min(sp) <= 0:
            raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}")
        data = np.moveaxis(volume, 0, -1) if volume.ndim == 4 else volume  # NIfTI keeps channels last
        # MONAI's transforms start from a file: the array goes through a temporary NIfTI with its spacing
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "volume.nii.gz"
            nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([*sp, 1.0])), str(path))
            return self.predict(path)
