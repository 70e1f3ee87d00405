"""Market-1501 layout (also DukeMTMC-reID): ``bounding_box_train/``, ``query/``, ``bounding_box_test/``.

File names start with ``<pid>_c<camera>`` (``0002_c1s1_000451_03.jpg``; Duke: ``0001_c2_f0046182.jpg``);
camid is the camera number minus 1. pid -1 (junk) is ignored everywhere and pid 0 (distractors) is kept
in the gallery only. Same-pid same-camera gallery images are removed by the evaluation, not here.
There is no report text: models run image-only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from gpfuse.data.images import IMAGE_SUFFIXES
from gpfuse.data.reid import ReIDItem, ReIDSplit, carve_validation, relabel_train

__all__ = ["MARKET_FOLDERS", "load_market1501", "parse_market_name"]

log = logging.getLogger(__name__)

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME = re.compile(r"^(-1|\d+)_c(\d+)")


def parse_market_name(name: str) -> tuple[int, int]:
    """``(pid, camid)`` of a Market/Duke file name; ValueError naming it when it does not parse."""
    m = _NAME.match(name)
    if m is None or int(m.group(2)) < 1:
        raise ValueError(f"{name}: not a Market-1501 name <pid>_c<camera>... (e.g. 0002_c1s1_000451_03.jpg)")
    return int(m.group(1)), int(m.group(2)) - 1


def _read_folder(folder: Path, keep_distractors: bool, strict: bool) -> list[ReIDItem]:
    if not folder.is_dir():
        raise FileNotFoundError(f"Market-1501 folder not found: {folder}")
    items, bad = [], []
    for path in sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ):
        try:
            pid, camid = parse_market_name(path.name)
        except ValueError:
            if strict:
                raise ValueError(
                    f"{path}: not a Market-1501 name <pid>_c<camera>... "
                    f"(e.g. 0002_c1s1_000451_03.jpg); strict=False skips it"
                ) from None
            bad.append(path.name)
            continue
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        items.append(ReIDItem(str(path), pid, camid, f"{pid:04d}"))
    if bad:
        log.warning("%s: skipped %d file(s) whose names do not parse: %s", folder, len(bad), ", ".join(bad))
    return items


def load_market1501(root: str | Path, strict: bool = True, val_ids: int = 0, seed: int = 0) -> ReIDSplit:
    """Read a Market-1501 (or DukeMTMC-reID) folder.

    Args:
        strict: names that do not parse raise ValueError naming the file; False skips them with a WARNING
            giving the count and the names.
        val_ids: training identities moved (seeded) to a validation query (their lowest camera) / gallery
            (other cameras) for model selection; 0 (default) keeps the standard 751-id training set.
    """
    root = Path(root)
    train = _read_folder(root / MARKET_FOLDERS["train"], False, strict)
    query = _read_folder(root / MARKET_FOLDERS["query"], False, strict)
    gallery = _read_folder(root / MARKET_FOLDERS["gallery"], True, strict)
    train, val_query, val_gallery = carve_validation(train, val_ids, seed, what=f"{root / MARKET_FOLDERS['train']}")
    return ReIDSplit(
        relabel_train(train), query, gallery, val_query, val_gallery, name=f"Market-1501 {root.name}"
    ).check()
