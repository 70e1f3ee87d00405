"""A small generated 3D segmentation dataset in the Medical Segmentation Decathlon layout, with class texts.

``write_synthetic_decathlon(root)`` writes::

    root/dataset.json                  Decathlon keys; labels {"0": "background", "1": "smooth organ", ...}
    root/imagesTr/case_001.nii.gz      float32 image, affine diag(spacing, 1)
    root/labelsTr/case_001.nii.gz      uint8 labels 0 .. num_classes - 1
    root/descriptions.csv              one row per class (background included), matched by Title
                                       (see :mod:`gpfuse.data.class_text`)

Every foreground class is one ellipsoid "organ" per case with its own intensity and texture (see
:data:`ORGANS`): class ``k`` lies in the ``k``-th of ``num_classes - 1`` equal slabs along the first axis
(random centre and radii inside it), so organs never overlap and every case holds every class. Gaussian noise
(sd 0.1) covers the whole image, whose background is 0 on average.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

from gpfuse.data.class_text import CONCEPTS, TITLE
from gpfuse.data.synthetic_marker import mark_generated
from gpfuse.utils.files import atomic_path, atomic_write_text

__all__ = ["BACKGROUND", "ORGANS", "Organ", "write_synthetic_decathlon"]

_NOISE = 0.1


class Organ(NamedTuple):
    """A synthetic class: its label name (also the CSV Title) and its five concept descriptions."""

    name: str
    concepts: tuple[str, str, str, str, str]


BACKGROUND = Organ(
    "background",
    (
        "No single shape; it is everything outside the ellipsoid organs.",
        "Fills the rest of the volume around the organs.",
        "Dark, with intensity about 0 plus Gaussian noise.",
        "Has no contour of its own; its inner border is the surface of the organs.",
        "Only noise, without structure.",
    ),
)

ORGANS = (
    Organ(
        "smooth organ",
        (
            "An ellipsoid with random radii.",
            "The organ nearest the start of the first image axis, before every other organ.",
            "Bright, with intensity about 1, the brightest object in the image.",
            "Smooth, sharp ellipsoidal outline, symmetric about its centre.",
            "Homogeneous, with only the image noise.",
        ),
    ),
    Organ(
        "striped organ",
        (
            "An ellipsoid with random radii.",
            "Follows the smooth organ along the first image axis.",
            "Intermediate, with intensity about 0.5, between the background and the smooth organ.",
            "Smooth, sharp ellipsoidal outline, symmetric about its centre.",
            "Regular stripes across the last image axis: brighter and darker bands alternating every two voxels.",
        ),
    ),
    Organ(
        "spotted organ",
        (
            "An ellipsoid with random radii.",
            "Follows the striped organ along the first image axis.",
            "Darker than the background, with intensity about -0.5.",
            "Smooth, sharp ellipsoidal outline, symmetric about its centre.",
            "Scattered bright spots, about one voxel in ten, on a dark base.",
        ),
    ),
    Organ(
        "ring organ",
        (
            "An ellipsoid with random radii.",
            "The organ nearest the end of the first image axis, after the spotted organ.",
            "Bright rim of intensity about 0.8 around a dimmer core of about 0.2.",
            "Sharp ellipsoidal outline emphasised by the bright rim, symmetric about its centre.",
            "Two zones, a uniform bright shell around a uniform dim centre.",
        ),
    ),
)


def _ellipsoid(rng: np.random.Generator, shape: Sequence[int], lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask, normalised radius r in [0, 1] inside the mask) of a random ellipsoid inside the slab
    ``lo <= x0 < hi`` of the first axis; the voxel nearest its centre always belongs to it."""
    width = [hi - lo, *shape[1:]]
    radii = np.array([rng.uniform(max(1.0, 0.25 * w), max(1.0, 0.45 * w)) for w in width])
    bounds = [(lo, hi), *((0.0, float(n)) for n in shape[1:])]
    centre = np.array([rng.uniform(a - 0.5 + r, max(a - 0.5 + r, b - 0.5 - r)) for (a, b), r in zip(bounds, radii)])
    grid = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    dist = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)))
    nearest = tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, shape))
    mask = dist <= 1.0
    mask[nearest] = True
    return mask, np.minimum(dist, 1.0)


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, dist: np.ndarray, k: int) -> None:
    if k == 1:
        image[mask] = 1.0
    elif k == 2:
        stripes = (np.arange(image.shape[-1]) // 2) % 2  # bands of two voxels across the last axis
        image[mask] = np.broadcast_to(0.5 + 0.25 * (2 * stripes - 1), image.shape)[mask]
    elif k == 3:
        image[mask] = np.where(rng.random(int(mask.sum())) < 0.1, 0.6, -0.5)
    else:
        image[mask] = np.where(dist[mask] > 0.6, 0.8, 0.2)


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    with atomic_path(path) as tmp:  # the temporary name has no .nii.gz, so gzip the bytes ourselves
        tmp.write_bytes(gzip.compress(img.to_bytes(), mtime=0))


def write_synthetic_decathlon(
    root: str | Path,
    n_cases: int = 8,
    shape: Sequence[int] = (32, 32, 32),
    num_classes: int = 3,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
) -> Path:
    """Write ``n_cases`` image/label volumes of ``shape`` (3 sizes) and voxel ``spacing`` (mm), with
    ``num_classes`` classes (background + up to 4 organs of :data:`ORGANS`), plus ``dataset.json`` and
    ``descriptions.csv`` into ``root``; every file is written atomically and the output depends only on the
    arguments. Returns ``root``."""
    root = Path(root)
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if not 2 <= num_classes <= len(ORGANS) + 1:
        raise ValueError(f"num_classes must be 2 to {len(ORGANS) + 1} (background + organs), got {num_classes}")
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing need 3 values each, got {shape} and {spacing}")
    if min(shape) < 4 or shape[0] < 3 * (num_classes - 1):
        raise ValueError(
            f"shape {shape} is too small for {num_classes - 1} organs (each side >= 4 and the first "
            f">= {3 * (num_classes - 1)})"
        )
    if min(spacing) <= 0 or n_cases < 1:
        raise ValueError(f"spacing must be positive and n_cases >= 1, got {spacing} and {n_cases}")
    classes = (BACKGROUND, *ORGANS[: num_classes - 1])
    affine = np.diag([*spacing, 1.0])
    rng = np.random.default_rng(seed)
    slabs = np.linspace(0.0, shape[0], num_classes)
    training = []
    for i in range(n_cases):
        image = np.zeros(shape, np.float64)
        label = np.zeros(shape, np.uint8)
        for k in range(1, num_classes):
            mask, dist = _ellipsoid(rng, shape, slabs[k - 1], slabs[k])
            _paint(rng, image, mask, dist, k)
            label[mask] = k
        image += rng.normal(0.0, _NOISE, shape)
        name = f"case_{i + 1:03d}.nii.gz"
        _save_nifti(root / "imagesTr" / name, image.astype(np.float32), affine)
        _save_nifti(root / "labelsTr" / name, label, affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset = {
        "name": "SyntheticOrgans",
        "description": f"gpfuse synthetic ellipsoid organs (seed {seed}), for tests and demos",
        "tensorImageSize": "3D",
        "modality": {"0": "synthetic"},
        "labels": {str(k): c.name for k, c in enumerate(classes)},
        "numTraining": n_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    atomic_write_text(root / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    with atomic_path(root / "descriptions.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([TITLE, *CONCEPTS])
        writer.writerows([c.name, *c.concepts] for c in classes)
    mark_generated(root, "Decathlon-layout volumes")
    return root
