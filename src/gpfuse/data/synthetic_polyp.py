"""A small generated polyp-segmentation folder (``images/``, ``masks/``, ``index.csv``) for tests and demos.

Each image is one made-up polyp on mucosa (the same drawing as the synthetic Colo-Pair folder), its mask
the polyp's outline at 0/255; consecutive images form "video sequences" (``index.csv``: ``id``,
``video_sequence``), so the grouped split can be exercised as on CVC-ClinicDB.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from gpfuse.data.synthetic_marker import mark_generated
from gpfuse.data.synthetic_reid import polyp_scene, random_polyp
from gpfuse.utils.files import atomic_path

__all__ = ["write_synthetic_polyp_folder"]


def write_synthetic_polyp_folder(
    root: str | Path, n_images: int = 24, size: int = 64, per_sequence: int = 4, seed: int = 0
) -> Path:
    """Write ``n_images`` JPEG images and PNG masks (0/255) of side ``size`` into ``root/{images,masks}``
    and ``root/index.csv`` (``per_sequence`` consecutive images share a video sequence); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        image, mask = polyp_scene(rng, size, random_polyp(rng, centre=(0.3, 0.7)))
        name = f"{i + 1:03d}"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(np.where(mask > 0.5, 255, 0).astype(np.uint8)).save(root / "masks" / f"{name}.png")
        rows.append({"id": name, "video_sequence": i // per_sequence + 1})
    with atomic_path(root / "index.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "video_sequence"])
        writer.writeheader()
        writer.writerows(rows)
    mark_generated(root, "polyp images and masks")
    return root
