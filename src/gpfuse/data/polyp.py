"""Polyp segmentation data in the image/mask folder layout (Kvasir-SEG, CVC-ClinicDB, PraNet's folders).

A dataset folder holds an image folder (``images`` or ``image``) and a mask folder (``masks`` or ``mask``)
whose files pair by file stem (``cju0qkwl35piu0993l0dewei2.jpg`` <-> ``.png``; jpg/png/tif/bmp). An optional
``index.csv`` in the folder or its parent (``id`` = stem, plus a group column such as CVC-ClinicDB's
``video_sequence``)
names groups, so a split can keep every frame of a video on one side.

Masks are read as grayscale and binarised at 128 (a 0/1 mask, max <= 1, is read as ``> 0``). Every pair is
checked once (:func:`check_items`): a missing mask, an unreadable file or a mask of another size than its
image is named and raises, or is skipped with a count (``on_bad_file``); a mask with values other than
0/255 is binarised with a warning that counts them, raised, or skipped (``nonbinary_mask``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gpfuse.data.decoded_files import DecodedFiles
from gpfuse.data.images import IMAGE_SUFFIXES, check_image, read_image

__all__ = [
    "IMAGE_DIRS",
    "MASK_DIRS",
    "PolypDataset",
    "SegItem",
    "SegSplit",
    "check_items",
    "hold_out",
    "list_folder",
    "make_split",
    "read_mask",
    "seg_collate",
]

log = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "image")
MASK_DIRS = ("masks", "mask")
_SHOW = 5  # problems named in a message before "... and N more"


class SegItem(NamedTuple):
    """One image: its path, its mask's path (None when the folder has no mask for it), the file stem, and
    its group (video sequence, patient; ``""`` when unknown)."""

    image: str
    mask: str | None
    name: str
    group: str = ""


@dataclass
class SegSplit:
    """Train / validation items and named test sets (each evaluated and reported on its own)."""

    train: list[SegItem]
    val: list[SegItem]
    test: dict[str, list[SegItem]] = field(default_factory=dict)

    def summary(self) -> str:
        tests = ", ".join(f"test[{k}] {len(v)}" for k, v in self.test.items())
        return f"train {len(self.train)}, valid {len(self.val)}" + (f", {tests}" if tests else "")


def _subfolder(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _groups(root: Path, column: str) -> dict[str, str]:
    index = next((p for p in (root / "index.csv", root.parent / "index.csv") if p.is_file()), None)
    if index is None:
        return {}
    with index.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and ("id" not in rows[0] or column not in rows[0]):
        raise ValueError(f"{index}: needs the columns 'id' and {column!r}, has {list(rows[0])}")
    return {r["id"]: r[column] for r in rows}


def list_folder(root: str | Path, masks: bool = True, group_column: str = "video_sequence") -> list[SegItem]:
    """Every image of ``root`` (its ``images``/``image`` subfolder, or ``root`` itself when it has none and
    ``masks`` is False), paired by stem with the mask folder's files; groups from ``index.csv`` in ``root``
    or its parent (missing ids: no group)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    image_dir = _subfolder(root, IMAGE_DIRS) or (None if masks else root)
    if image_dir is None:
        raise FileNotFoundError(f"{root}: no image folder (one of {list(IMAGE_DIRS)})")
    mask_dir = _subfolder(root, MASK_DIRS)
    if masks and mask_dir is None:
        raise FileNotFoundError(f"{root}: no mask folder (one of {list(MASK_DIRS)})")
    files = _files(image_dir)
    if not files:
        raise ValueError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    by_stem = {p.stem: p for p in _files(mask_dir)} if mask_dir is not None else {}
    orphans = sorted(set(by_stem) - {p.stem for p in files})
    if orphans:
        log.warning("%s: %d masks without an image ignored: %s", mask_dir, len(orphans), orphans[:_SHOW])
    groups = _groups(root, group_column)
    return [
        SegItem(str(p), str(by_stem[p.stem]) if p.stem in by_stem else None, p.stem, groups.get(p.stem, ""))
        for p in files
    ]


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as an (H, W) bool array: grayscale >= 128 (a 0/1 mask, max <= 1: > 0)."""
    with Image.open(path) as img:
        values = np.asarray(img.convert("L"))
    return values > 0 if values.max(initial=0) <= 1 else values >= 128


def _problem(item: SegItem, known: DecodedFiles) -> tuple[str | None, bool]:
    """(why the pair cannot be used or None, whether the mask has values other than 0 and 255/1)."""
    if item.mask is None:
        return f"{item.image}: image without a mask", False
    for path, what in ((item.image, "image"), (item.mask, "mask")):
        reason = check_image(path, known)
        if reason:
            return f"{path}: unreadable {what} ({reason})", False
    with Image.open(item.image) as img:
        image_size = img.size
    with Image.open(item.mask) as img:
        values = np.asarray(img.convert("L"))
    if values.shape[::-1] != image_size:
        return (
            f"{item.mask}: mask size {values.shape[1]}x{values.shape[0]} differs from its image's "
            f"{image_size[0]}x{image_size[1]} ({item.image})"
        ), False
    top = 1 if values.max(initial=0) <= 1 else 255
    return None, bool(np.any((values != 0) & (values != top)))


def _listing(lines: list[str]) -> str:
    more = f"\n  ... and {len(lines) - _SHOW} more" if len(lines) > _SHOW else ""
    return "\n  " + "\n  ".join(lines[:_SHOW]) + more


def check_items(
    items: Sequence[SegItem], on_bad_file: str = "raise", nonbinary_mask: str = "binarize", what: str = "data"
) -> tuple[list[SegItem], dict[str, int]]:
    """Check every image/mask pair once (decoding the pixels: see :func:`check_image`); returns the usable items
    and counts ``{"skipped", "binarized"}``.

    Args:
        on_bad_file: ``"raise"`` (ValueError naming every bad file) or ``"skip"`` (a warning naming them).
        nonbinary_mask: ``"binarize"`` (threshold at 128, warn with a count), ``"raise"`` or ``"skip"``.
    """
    if on_bad_file not in ("raise", "skip") or nonbinary_mask not in ("binarize", "raise", "skip"):
        raise ValueError(
            f"on_bad_file must be 'raise' or 'skip' and nonbinary_mask 'binarize', 'raise' or "
            f"'skip', got {on_bad_file!r}, {nonbinary_mask!r}"
        )
    kept, bad, nonbinary = [], [], []
    with DecodedFiles() as known:
        problems = [_problem(item, known) for item in items]
    for item, (reason, soft) in zip(items, problems):
        if reason:
            bad.append(reason)
        elif soft and nonbinary_mask != "binarize":
            nonbinary.append(f"{item.mask}: mask values other than 0 and 255")
        else:
            kept.append(item)
            if soft and item.mask is not None:  # soft: a mask was read
                nonbinary.append(item.mask)
    if bad and on_bad_file == "raise":
        raise ValueError(
            f"{what}: {len(bad)} unusable image/mask pairs (data.on_bad_file=skip skips them):" + _listing(bad)
        )
    if nonbinary and nonbinary_mask == "raise":
        raise ValueError(
            f"{what}: {len(nonbinary)} non-binary masks (data.nonbinary_mask=binarize thresholds "
            "them at 128):" + _listing(nonbinary)
        )
    if bad:
        log.warning("%s: skipped %d unusable pairs:%s", what, len(bad), _listing(bad))
    if nonbinary:
        action = "skipped" if nonbinary_mask == "skip" else "binarised at 128"
        log.warning(
            "%s: %d masks with values other than 0/255 %s:%s", what, len(nonbinary), action, _listing(nonbinary)
        )
    skipped = len(bad) + (len(nonbinary) if nonbinary_mask == "skip" else 0)
    if not kept:
        raise ValueError(f"{what}: no usable image/mask pair left")
    return kept, {"skipped": skipped, "binarized": len(nonbinary) if nonbinary_mask == "binarize" else 0}


def hold_out(
    items: Sequence[SegItem], fraction: float, seed: int | Sequence[int], by_group: bool, what: str = "data"
) -> tuple[list[SegItem], list[SegItem]]:
    """Split ``items`` into (rest, held-out ``fraction``), seeded; with ``by_group`` whole groups move, so
    no group is on both sides (``round(fraction * groups)`` groups, at least one)."""
    if not 0 < fraction < 1:
        raise ValueError(f"a held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if by_group:
        groups = sorted({it.group for it in items})
        if "" in groups:
            raise ValueError(
                f"{what}: a grouped split needs a group for every image (index.csv); "
                f"{sum(not it.group for it in items)} images have none"
            )
        chosen = set(rng.permutation(groups)[: max(1, round(fraction * len(groups)))].tolist())
        held = [it for it in items if it.group in chosen]
    else:
        order = rng.permutation(len(items))[: max(1, round(fraction * len(items)))]
        held = [items[i] for i in sorted(order)]
    names = {it.image for it in held}
    rest = [it for it in items if it.image not in names]
    if not rest:
        raise ValueError(f"{what}: holding out {fraction} leaves nothing ({len(items)} images)")
    return rest, held


def make_split(
    train: Sequence[SegItem],
    val: Sequence[SegItem],
    test: dict[str, list[SegItem]],
    split: str,
    test_fraction: float,
    val_fraction: float,
    seed: int,
) -> SegSplit:
    """The run's split: ``"given"`` keeps the test folders; ``"random"`` (the EA-DK paper's 80/20) and
    ``"group"`` (whole groups, e.g. CVC-ClinicDB videos) hold ``test_fraction`` of the training folders out
    as the test set ``"held_out"``. Validation (model selection) is the given ``val`` items, else
    ``val_fraction`` of what remains for training, held out the same way; it never overlaps a test set."""
    if split not in ("given", "random", "group"):
        raise ValueError(f"split must be one of ['given', 'random', 'group'], got {split!r}")
    by_group = split == "group"
    train, test = list(train), dict(test)
    if split != "given":
        train, test["held_out"] = hold_out(train, test_fraction, [seed, 0], by_group, "training folders")
    if not test:
        raise ValueError("no test set: give data.test folders or use split 'random'/'group'")
    if val:
        val = list(val)
    else:
        train, val = hold_out(train, val_fraction, [seed, 1], by_group, "training images")
    return SegSplit(train, val, test)


class PolypDataset(Dataset):
    """Items -> ``{"image": (3, S, S) float, "mask": (1, S, S) float {0, 1}, "name": str, "index": long}``,
    plus ``"mask_full"`` (H, W) bool at the mask file's own size with ``full_masks`` (evaluation at the
    original resolution) and ``"size"`` (H, W) of the image file. Items without a mask (prediction folders)
    have an all-zero ``mask``.

    Args:
        transform: ``(PIL image, (H, W) bool mask) -> (image tensor, mask tensor)``.
    """

    def __init__(self, items: Sequence[SegItem], transform: Callable, full_masks: bool = False) -> None:
        self.items, self.transform, self.full_masks = list(items), transform, full_masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        it = self.items[index]
        image = read_image(it.image)
        mask = read_mask(it.mask) if it.mask else np.zeros(image.size[::-1], dtype=bool)
        x, y = self.transform(image, mask)
        out = {"image": x, "mask": y, "name": it.name, "index": torch.tensor(index), "size": image.size[::-1]}
        if self.full_masks:
            out["mask_full"] = torch.from_numpy(mask)
        return out


def seg_collate(items: list[dict]) -> dict:
    """Stack images and masks; names, original sizes and full-size masks stay lists (sizes may differ)."""
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "index": torch.stack([it["index"] for it in items]),
        "name": [it["name"] for it in items],
        "size": [it["size"] for it in items],
    }
    if "mask_full" in items[0]:
        batch["mask_full"] = [it["mask_full"] for it in items]
    return batch
