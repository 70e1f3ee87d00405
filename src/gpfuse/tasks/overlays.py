"""Segmentation outputs as files: binary masks (PNG 0/255 at each image's own size), overlays (prediction
contour red, ground-truth contour green, on the image) and a picture of a few test predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import binary_erosion

from gpfuse.data.images import read_image
from gpfuse.data.polyp import read_mask
from gpfuse.utils.files import atomic_path

__all__ = ["contour", "overlay", "save_prediction_grid", "write_predictions"]

RED, GREEN = np.array([255, 40, 40], dtype=np.uint8), np.array([40, 220, 40], dtype=np.uint8)


def contour(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The ``width``-pixel inner boundary of a bool mask (H, W)."""
    return mask & ~binary_erosion(mask, iterations=width, border_value=0)


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image with the prediction's contour in red and the ground truth's in green."""
    out = image.copy()
    width = max(1, round(min(image.shape[:2]) / 176))
    if gt is not None:
        out[contour(gt, width)] = GREEN
    out[contour(pred, width)] = RED
    return out


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    total = pred.sum() + gt.sum()
    return 1.0 if total == 0 else float(2 * (pred & gt).sum() / total)


def write_predictions(
    probabilities: list[np.ndarray], items: list, out: Path, threshold: float = 0.5, save_probabilities: bool = False
) -> Path:
    """For each item (a :class:`~gpfuse.data.polyp.SegItem`) and its (H, W) probability map write
    ``out/masks/<name>.png`` (0/255), ``out/overlays/<name>.png``, with ``save_probabilities`` the 8-bit map
    ``out/probabilities/<name>.png`` (``floor(255 p + 0.5)``, what the PraNet toolbox scores), and a row of
    ``out/predictions.csv`` (``name,height,width,foreground_fraction,dice``; dice where the item has a mask)."""
    out = Path(out)
    rows = []
    for prob, it in zip(probabilities, items):
        pred = prob >= threshold
        gt = read_mask(it.mask) if it.mask else None
        _save_png(np.where(pred, 255, 0).astype(np.uint8), out / "masks" / f"{it.name}.png")
        if save_probabilities:
            _save_png(np.floor(prob * 255.0 + 0.5).astype(np.uint8), out / "probabilities" / f"{it.name}.png")
        _save_png(overlay(np.asarray(read_image(it.image)), pred, gt), out / "overlays" / f"{it.name}.png")
        rows.append([it.name, *pred.shape, f"{pred.mean():.5f}", "" if gt is None else f"{_dice(pred, gt):.5f}"])
    with atomic_path(out / "predictions.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "height", "width", "foreground_fraction", "dice"])
        writer.writerows(rows)
    return out


@torch.no_grad()
def save_prediction_grid(model: torch.nn.Module, dataset, path: Path, count: int = 8, threshold: float = 0.5) -> Path:
    """A row of ``count`` overlays (spread over ``dataset``, a :class:`~gpfuse.data.polyp.PolypDataset`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpfuse.inference.segmentation import full_size_probabilities

    model.eval()
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).astype(int)
    fig, axes = plt.subplots(1, len(picks), figsize=(2.2 * len(picks), 2.4), squeeze=False)
    for ax, i in zip(axes[0], picks):
        sample, it = dataset[int(i)], dataset.items[int(i)]
        prob = full_size_probabilities(model({"image": sample["image"][None]}).logits, [sample["size"]])[0]
        gt = read_mask(it.mask) if it.mask else None
        ax.imshow(overlay(np.asarray(read_image(it.image)), prob.numpy() >= threshold, gt))
        ax.set_title(
            f"{it.name[:12]}" + ("" if gt is None else f" Dice {_dice(prob.numpy() >= threshold, gt):.2f}"), fontsize=7
        )
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
