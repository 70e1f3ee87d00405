"""In-memory container for utterance-level multimodal features, and its safe on-disk form.

Every sentiment data layout (the shared CMU-MOSI folder, MMSA and MulT pickles) is read into one
:class:`SplitFeatures` per split, so datasets, models and tasks never see a file layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from gpfuse.utils.files import atomic_path

__all__ = ["SPLITS", "SplitFeatures", "check_labels", "clean_nonfinite", "load_features_npz", "save_features_npz"]

log = logging.getLogger(__name__)

#: the standard split names of every sentiment layout
SPLITS = ("train", "valid", "test")


@dataclass
class SplitFeatures:
    """Features of one split.

    Attributes:
        ids: (N,) str, one id per utterance (e.g. ``"03bSnISJMiM_11"``).
        labels: (N,) float32 sentiment scores in [-3, 3].
        features: modality name -> (N, L_m, D_m) float32 sequences, zero-padded.
        masks: modality name -> (N, L_m) bool, True where a time step is real (not padding).
        texts: (N,) str raw text when the layout has it, else None.
        token_ids: (N, L) int64 text token ids when a model reads tokens (its mask is ``masks["text"]``),
            else None.
    """

    ids: np.ndarray
    labels: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    texts: np.ndarray | None = None
    token_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.labels) != n:
            raise ValueError(f"labels has {len(self.labels)} rows but ids has {n}")
        for name, x in self.features.items():
            if x.ndim != 3 or x.shape[0] != n:
                raise ValueError(f"feature {name!r} must have shape (N={n}, L, D), got {x.shape}")
            mask = self.masks.get(name)
            if mask is None or mask.shape != x.shape[:2]:
                got = None if mask is None else mask.shape
                raise ValueError(f"mask of {name!r} must have shape {x.shape[:2]}, got {got}")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"texts has {len(self.texts)} rows but ids has {n}")
        if self.token_ids is not None and self.token_ids.shape != self.masks.get("text", np.empty(0)).shape:
            raise ValueError(f"token_ids {self.token_ids.shape} need a text mask of the same shape")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> SplitFeatures:
        """The rows ``index`` (ints or a boolean mask) of every array."""
        return SplitFeatures(
            ids=self.ids[index],
            labels=self.labels[index],
            features={k: v[index] for k, v in self.features.items()},
            masks={k: v[index] for k, v in self.masks.items()},
            texts=None if self.texts is None else self.texts[index],
            token_ids=None if self.token_ids is None else self.token_ids[index],
        )


def check_labels(labels: np.ndarray, ids: np.ndarray | None, where: str) -> np.ndarray:
    """``labels`` as float32, or a ValueError naming ``where`` and the utterances whose label is NaN or inf.

    One rule for every reader: a missing label is never turned into a value (a NaN scored as 0 would be a
    neutral utterance), so the data must be fixed or the rows removed by the user."""
    labels = np.asarray(labels, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(labels))
    if bad.size:
        named = [str(ids[i]) for i in bad[:3]] if ids is not None else [f"row {i}" for i in bad[:3]]
        raise ValueError(
            f"{where}: {bad.size} label(s) are NaN or inf (e.g. {', '.join(named)}); a label is "
            "never replaced by a value: fix or remove those rows"
        )
    return labels


def clean_nonfinite(x: np.ndarray, what: str) -> np.ndarray:
    """Replace NaN/inf by 0 and say how many values were replaced (spec: "replaces ... and says how many")."""
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if count:
        log.warning("%s: replaced %d non-finite values (NaN/inf) with 0", what, count)
        x = np.where(bad, 0.0, x).astype(x.dtype, copy=False)
    return x


def save_features_npz(splits: dict[str, SplitFeatures], path: str | Path) -> Path:
    """Write ``splits`` to one ``.npz`` (no object arrays, so ``allow_pickle=False`` reads it), atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for split, sf in splits.items():
        arrays[f"{split}/ids"] = np.asarray(sf.ids, dtype=str)
        arrays[f"{split}/labels"] = np.asarray(sf.labels, dtype=np.float32)
        if sf.texts is not None:
            arrays[f"{split}/texts"] = np.asarray(sf.texts, dtype=str)
        for name, x in sf.features.items():
            arrays[f"{split}/features/{name}"] = x
            arrays[f"{split}/masks/{name}"] = sf.masks[name]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **cast(dict[str, Any], arrays))  # numpy's stub matches **arrays against allow_pickle: bool
    return path


def load_features_npz(path: str | Path) -> dict[str, SplitFeatures]:
    """Read a file written by :func:`save_features_npz`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile/ValueError: corrupt or not an npz
        raise ValueError(f"{path}: not a readable .npz feature file ({err})") from err
    with data:
        grouped: dict[str, dict] = {}
        for key in data.files:
            split, _, rest = key.partition("/")
            try:
                grouped.setdefault(split, {})[rest] = data[key]
            except ValueError as err:  # an object array: refused without pickle
                raise ValueError(
                    f"{path}: array {key!r} cannot be read without pickle ({err}); gpfuse reads plain "
                    "numeric and string arrays only"
                ) from None
    splits = {}
    for split, items in grouped.items():
        missing = {"ids", "labels"} - items.keys()
        if missing:
            raise ValueError(f"{path}: split {split!r} lacks {sorted(missing)}")
        feats = {}
        for key, value in items.items():
            if key.startswith("features/"):
                if value.dtype.kind not in "fiub":
                    raise ValueError(f"{path}: {split}/{key} holds {value.dtype} values, not numbers")
                feats[key.split("/", 1)[1]] = clean_nonfinite(value.astype(np.float32), f"{path}:{split}/{key}")
        masks = {k.split("/", 1)[1]: v.astype(bool) for k, v in items.items() if k.startswith("masks/")}
        try:
            labels = check_labels(items["labels"], items["ids"], f"{path}:{split}/labels")
            splits[split] = SplitFeatures(items["ids"], labels, feats, masks, items.get("texts"))
        except ValueError as err:
            raise ValueError(f"{path}: split {split!r}: {err}") if str(path) not in str(err) else err from None
    return splits
