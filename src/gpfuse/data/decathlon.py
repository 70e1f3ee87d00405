"""Medical Segmentation Decathlon layout: ``dataset.json`` (``labels``, ``training`` list of ``{image, label}``)
with NIfTI volumes, read through MONAI's ``load_decathlon_datalist``.

Every case is checked once (:func:`check_cases`): a file listed in ``dataset.json`` but absent, an image and
label of different shapes or affines (from the NIfTI headers), and a label value outside the dataset's
classes are named, then raised or skipped with a count (``on_bad_file``). Validation and test cases are
carved from the training list with a seeded shuffle (:func:`carve_cases`), since the public sets hide
their test labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np

from gpfuse.data.decoded_files import DecodedFiles

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

__all__ = ["VolumeCase", "carve_cases", "check_cases", "read_decathlon"]

log = logging.getLogger(__name__)
_SHOW = 5


class VolumeCase(NamedTuple):
    """One case: image path, label path (None for prediction inputs), and a name (the image file's stem)."""

    image: str
    label: str | None
    name: str


def _stem(path: str) -> str:
    name = Path(path).name
    return name[:-7] if name.endswith(".nii.gz") else Path(name).stem


def read_decathlon(root: str | Path, key: str = "training") -> tuple[list[VolumeCase], dict[int, str]]:
    """The cases of ``root/dataset.json`` under ``key`` and its label names ``{index: name}``."""
    from monai.data import load_decathlon_datalist

    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"Decathlon dataset.json not found: {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: not a Decathlon dataset.json with a 'labels' mapping ({err})") from err
    if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
        raise ValueError(f"{path}: labels must be numbered 0..C-1 with C >= 2, got {sorted(labels)}")
    try:
        entries = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key, base_dir=str(root))
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: no usable {key!r} list ({err})") from err
    if not entries:
        raise ValueError(f"{path}: the {key!r} list is empty")
    return [VolumeCase(e["image"], e.get("label"), _stem(e["image"])) for e in entries], labels


def _decode(path: str, known: DecodedFiles) -> str | None:
    """Why the voxels of ``path`` cannot be read, or None. The whole file is decompressed (a truncated
    ``.nii.gz`` has a readable header), unless ``known`` says it decoded before and has not changed."""
    import nibabel as nib

    if known.contains(path):
        return None
    try:
        np.asarray(cast("SpatialImage", nib.load(path)).dataobj)  # a NIfTI file: a spatial image
    except Exception as err:  # nibabel, gzip and zlib raise several types for a damaged file
        return f"{path}: unreadable NIfTI ({type(err).__name__}: {err})"
    known.add(path)
    return None


def _problem(case: VolumeCase, num_classes: int, known: DecodedFiles) -> str | None:
    import nibabel as nib

    for path in (case.image, case.label):
        if path is not None and not Path(path).is_file():
            return f"{path}: listed in dataset.json but not found"
    for path in (case.image, case.label):
        reason = _decode(path, known) if path is not None else None
        if reason:
            return reason
    if case.label is None:
        return None
    image, label = cast("SpatialImage", nib.load(case.image)), cast("SpatialImage", nib.load(case.label))
    if image.shape[:3] != label.shape[:3]:
        return f"{case.label}: label shape {label.shape[:3]} differs from its image's {image.shape[:3]} ({case.image})"
    if not np.allclose(image.affine, label.affine, atol=1e-3):
        return f"{case.label}: label affine differs from its image's ({case.image})"
    values = np.unique(np.asarray(label.dataobj))
    bad = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
    if bad.size:
        return f"{case.label}: label values {bad[:8].tolist()} outside the classes 0..{num_classes - 1}"
    return None


def check_cases(
    cases: Sequence[VolumeCase], num_classes: int, on_bad_file: str = "raise", what: str = "data"
) -> tuple[list[VolumeCase], int]:
    """The usable cases and how many were skipped; ``on_bad_file="raise"`` raises ValueError (FileNotFoundError
    when every problem is a missing file) naming every bad case instead."""
    if on_bad_file not in ("raise", "skip"):
        raise ValueError(f"on_bad_file must be 'raise' or 'skip', got {on_bad_file!r}")
    kept, bad = [], []
    with DecodedFiles() as known:
        for case in cases:
            reason = _problem(case, num_classes, known)
            (bad.append(reason) if reason else kept.append(case))
    listing = "\n  " + "\n  ".join(bad[:_SHOW]) + (f"\n  ... and {len(bad) - _SHOW} more" if len(bad) > _SHOW else "")
    if bad and on_bad_file == "raise":
        kind = FileNotFoundError if all("not found" in b for b in bad) else ValueError
        raise kind(f"{what}: {len(bad)} unusable cases (data.on_bad_file=skip skips them):{listing}")
    if bad:
        log.warning("%s: skipped %d unusable cases:%s", what, len(bad), listing)
    if not kept:
        raise ValueError(f"{what}: no usable case left")
    return kept, len(bad)


def carve_cases(cases: Sequence[VolumeCase], counts: Sequence[int], seed: int) -> list[list[VolumeCase]]:
    """Split ``cases`` by a seeded shuffle into ``len(counts) + 1`` parts: the rest first, then ``counts[i]``
    cases each (e.g. ``counts=(val, test)`` -> ``[train, val, test]``), each part in the original order."""
    if any(c < 0 for c in counts) or sum(counts) >= len(cases):
        raise ValueError(f"cannot carve {list(counts)} cases from {len(cases)}: at least one must stay for training")
    order = np.random.default_rng(seed).permutation(len(cases))
    parts, start = [], 0
    for c in counts:
        parts.append(sorted(order[start : start + c].tolist()))
        start += c
    rest = sorted(order[start:].tolist())
    return [[cases[i] for i in part] for part in (rest, *parts)]
