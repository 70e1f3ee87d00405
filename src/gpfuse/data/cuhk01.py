"""CUHK01 (CUHK Campus): ``<root>/campus/PPPPIII.png``, identity ``PPPP`` 0001..0971, image ``III`` 001..004.

Images 001-002 are camera A (camid 0), 003-004 camera B (camid 1), as in torchreid. Protocol: 10 random
identity splits, 485 training / 486 test identities; queries are the camera-A images of the test
identities, the gallery their camera-B images. Research use only: never copy the images anywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from gpfuse.data.images import IMAGE_SUFFIXES
from gpfuse.data.reid import ReIDItem, ReIDSplit, carve_validation, relabel_train

__all__ = ["CUHK01_NUM_SPLITS", "list_cuhk01", "load_cuhk01", "parse_cuhk01_name"]

CUHK01_NUM_SPLITS = 10
_NAME = re.compile(r"^(\d{4})(\d{3})\.png$", re.IGNORECASE)


def parse_cuhk01_name(name: str) -> tuple[int, int]:
    """``(pid, camid)`` of ``PPPPIII.png``; ValueError naming the file otherwise."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"{name}: not a CUHK01 name PPPPIII.png (identity 0001.., image 001..004)")
    pid, img = int(m.group(1)), int(m.group(2))
    if pid < 1 or not 1 <= img <= 4:
        raise ValueError(f"{name}: CUHK01 identity must be >= 0001 and image in 001..004, got {pid:04d}/{img:03d}")
    return pid, 0 if img <= 2 else 1


def list_cuhk01(root: str | Path) -> list[ReIDItem]:
    """Every image of ``root/campus`` (or of ``root`` itself when it is the campus folder), sorted."""
    root = Path(root)
    campus = root / "campus" if (root / "campus").is_dir() else root
    if not campus.is_dir():
        raise FileNotFoundError(f"CUHK01 folder not found: {root / 'campus'}")
    items = []
    for path in sorted(
        p for p in campus.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ):
        try:
            pid, camid = parse_cuhk01_name(path.name)
        except ValueError as err:
            raise ValueError(f"{campus}/{err}") from None
        items.append(ReIDItem(str(path), pid, camid, f"{pid:04d}"))
    if not items:
        raise ValueError(f"{campus}: no CUHK01 images (PPPPIII.png)")
    return items


def load_cuhk01(
    root: str | Path, split_index: int, num_train_ids: int = 485, val_ids: int = 50, seed: int = 0
) -> ReIDSplit:
    """One of the 10 random CUHK01 identity splits.

    Args:
        root: folder holding ``campus/`` (or the campus folder).
        split_index: 0..9; split ``i`` permutes the sorted identities with ``np.random.default_rng([seed, i])``
            and trains on the first ``num_train_ids`` (485 -> 486 test identities for the 971 of CUHK01).
        val_ids: of the training identities, this many (default 50, seeded) become a validation query
            (camera A) / gallery (camera B) for model selection, so it never sees test identities; the
            model then trains on ``num_train_ids - val_ids`` identities. 0 for none.
    """
    if not 0 <= split_index < CUHK01_NUM_SPLITS:
        raise ValueError(f"split_index must be in [0, {CUHK01_NUM_SPLITS - 1}], got {split_index}")
    items = list_cuhk01(root)
    pids = np.array(sorted({it.pid for it in items}))
    if not 1 <= num_train_ids < len(pids):
        raise ValueError(
            f"num_train_ids must be in [1, {len(pids) - 1}] for {len(pids)} identities, got {num_train_ids}"
        )
    rng = np.random.default_rng([seed, split_index])
    train_pids = set(rng.permutation(pids)[:num_train_ids].tolist())
    train = [it for it in items if it.pid in train_pids]
    test = [it for it in items if it.pid not in train_pids]
    train, val_query, val_gallery = carve_validation(
        train, val_ids, [seed, split_index, 1], what=f"the {num_train_ids} CUHK01 training identities"
    )
    return ReIDSplit(
        relabel_train(train),
        [it for it in test if it.camid == 0],
        [it for it in test if it.camid == 1],
        val_query,
        val_gallery,
        name=f"CUHK01 split {split_index}",
    ).check()
