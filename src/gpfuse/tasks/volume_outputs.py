"""3D segmentation outputs as files: the label map in the input's own space (MONAI ``Invertd`` undoes the
evaluation transforms) saved as NIfTI with the input's affine, and a PNG of the three mid slices with the
prediction (and the label, when given) drawn over the image."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from gpfuse.utils.files import atomic_path
from gpfuse.utils.progress import counter

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

__all__ = ["original_image", "save_mid_slices", "write_volume_predictions"]

_COLOURS = (
    np.array(
        [[0, 0, 0], [230, 60, 60], [60, 200, 60], [60, 120, 240], [240, 200, 40], [200, 80, 220], [40, 210, 210]],
        dtype=float,
    )
    / 255
)


def save_mid_slices(
    image: np.ndarray, pred: np.ndarray, path: Path, label: np.ndarray | None = None, title: str = ""
) -> Path:
    """Axial, coronal and sagittal mid slices of ``image`` (X, Y, Z) with ``pred`` filled in colour (and ``label``
    contoured in a second row when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("prediction", pred)] + ([("label", label)] if label is not None else [])
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.2 * len(rows)), squeeze=False)
    centre = [s // 2 for s in image.shape]
    for r, (name, seg) in enumerate(rows):
        for a, axis in enumerate(range(3)):
            cut = [slice(None)] * 3
            cut[axis] = centre[axis]
            ax = axes[r][a]
            ax.imshow(np.rot90(image[tuple(cut)]), cmap="gray")
            colours = _COLOURS[np.rot90(seg[tuple(cut)]).astype(int) % len(_COLOURS)]
            ax.imshow(np.concatenate([colours, (np.rot90(seg[tuple(cut)]) > 0)[..., None] * 0.45], axis=-1))
            ax.set_title(f"{name}, axis {axis}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def original_image(path: str) -> np.ndarray:
    """The first channel of a NIfTI volume as stored, (X, Y, Z) float32."""
    import nibabel as nib

    image = np.asarray(cast("SpatialImage", nib.load(path)).dataobj, dtype=np.float32)  # a NIfTI image
    return image[..., 0] if image.ndim == 4 else image


def write_volume_predictions(predictor, files: list[Path], out: Path) -> Path:
    """For every NIfTI file: ``out/<name>_seg.nii.gz`` (uint8 labels on the file's grid: its affine and shape,
    from :class:`~gpfuse.inference.volumes.VolumePredictor`) and ``out/<name>_slices.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with counter(f"predicting {out.name}: volumes", len(files)) as advance:
        for path in files:
            _write_one(predictor, path, out)
            advance(1)
    return out


def _write_one(predictor, path: Path, out: Path) -> None:
    """The label volume and the slices PNG of one NIfTI file."""
    import nibabel as nib

    name = path.name.split(".nii")[0]
    pred = predictor.predict(path)
    source = cast("SpatialImage", nib.load(path))  # a NIfTI image
    header = source.header.copy()
    header.set_data_dtype(np.uint8)
    with atomic_path(out / f"{name}_seg.nii.gz") as tmp:
        tmp.write_bytes(gzip.compress(nib.Nifti1Image(pred, source.affine, header).to_bytes()))
    save_mid_slices(original_image(str(path)), pred, out / f"{name}_slices.png", title=name)
