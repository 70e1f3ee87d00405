"""Readers for the two common CMU-MOSI/MOSEI feature pickles (MMSA and MulT layouts).

Both are dicts ``{"train": {...}, "valid": {...}, "test": {...}}`` of numpy arrays; each split becomes
one :class:`~gpfuse.data.features.SplitFeatures` with modalities ``text``, ``audio`` and ``vision``.
Files are always read through the restricted unpickler (:func:`~gpfuse.data.safe_pickle.safe_load_pickle`)
because a downloaded pickle is untrusted input; :func:`convert_feature_pickle` writes the safe npz form once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpfuse.data.features import SPLITS, SplitFeatures, check_labels, clean_nonfinite, save_features_npz
from gpfuse.data.safe_pickle import safe_load_pickle

__all__ = [
    "LAYOUTS",
    "MODALITIES",
    "SPLITS",
    "convert_feature_pickle",
    "load_feature_pickle",
    "load_mmsa_pickle",
    "load_mult_pickle",
]

MODALITIES = ("text", "audio", "vision")
LAYOUTS = ("auto", "mmsa", "mult")


class _Split:
    """Validated access to the arrays of one split; every error names ``file:split/key``."""

    def __init__(self, path: Path, split: str, items: Any, label_key: str) -> None:
        self.where = f"{path}:{split}"
        if not isinstance(items, dict):
            raise ValueError(f"{self.where}: expected a dict of arrays, got {type(items).__name__}")
        self.items = items
        labels = self._numeric(label_key)
        if labels.ndim == 0 or labels.size != labels.shape[0]:
            raise ValueError(
                f"{self.where}/{label_key}: expected one value per row, e.g. (N,) or (N, 1, 1), "
                f"got shape {labels.shape}"
            )
        self.n = labels.shape[0]
        self.label_key = label_key
        self.labels = check_labels(labels.reshape(-1), None, f"{self.where}/{label_key}")

    def _array(self, key: str) -> np.ndarray:
        if key not in self.items:
            raise ValueError(f"{self.where}: missing key {key!r} (keys found: {sorted(map(str, self.items))})")
        try:
            return np.asarray(self.items[key])
        except ValueError as err:  # ragged nested lists
            raise ValueError(f"{self.where}/{key}: not a rectangular array ({err})") from err

    def _numeric(self, key: str) -> np.ndarray:
        arr = self._array(key)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{self.where}/{key}: expected numbers, got dtype {arr.dtype}")
        return arr

    def _rows(self, arr: np.ndarray, key: str, ndims: Sequence[int]) -> np.ndarray:
        if arr.ndim not in ndims:
            raise ValueError(
                f"{self.where}/{key}: expected {' or '.join(map(str, ndims))} dimensions, got shape {arr.shape}"
            )
        if arr.shape[0] != self.n:
            raise ValueError(f"{self.where}/{key}: has {arr.shape[0]} rows but {self.label_key} has {self.n}")
        return arr

    def has(self, key: str) -> bool:
        return key in self.items

    def features(self, key: str) -> np.ndarray:
        """(N, L, D) float32 with NaN/inf replaced by 0 (and counted in the log)."""
        arr = self._rows(self._numeric(key), key, (3,))
        with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, then 0 below
            x = arr.astype(np.float32)
        return clean_nonfinite(x, f"{self.where}/{key}")

    def numeric_rows(self, key: str, ndims: Sequence[int]) -> np.ndarray:
        return self._rows(self._numeric(key), key, ndims)

    def strings(self, key: str) -> np.ndarray:
        """(N,) str; bytes are decoded as UTF-8 and the cells of 2-D rows joined with ``_``."""
        arr = self._rows(self._array(key), key, (1, 2))
        try:
            out = [_to_str(v) for v in arr] if arr.ndim == 1 else ["_".join(_to_str(v) for v in row) for row in arr]
        except UnicodeDecodeError as err:
            raise ValueError(f"{self.where}/{key}: bytes that are not UTF-8 ({err})") from err
        return np.asarray(out, dtype=str).reshape(self.n)


def _to_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _nonzero_rows(x: np.ndarray) -> np.ndarray:
    """(N, L) bool: time steps whose feature vector is not all zero."""
    return np.any(x != 0, axis=-1)


def _length_mask(sp: _Split, key: str, modality: str, seq_len: int) -> np.ndarray:
    """(N, L) bool with ``mask[i, :lengths[i]] = True`` from the (N,) lengths under ``key``."""
    raw = sp.numeric_rows(key, (1,))
    finite = np.isfinite(raw)
    with np.errstate(invalid="ignore"):  # out-of-range values are caught by ``lengths != raw``
        lengths = np.where(finite, raw, -1).astype(np.int64)
    bad = np.flatnonzero(~finite | (lengths != raw) | (lengths < 0) | (lengths > seq_len))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{sp.where}/{key}: {modality} length {raw[i].item()} at index {i} is not an integer "
            f"in [0, {seq_len}] (the {modality} sequence length)"
        )
    return np.arange(seq_len)[None, :] < lengths[:, None]


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    mods = tuple(modalities)
    if any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
        raise ValueError(f"modalities must be distinct names from {MODALITIES}, got {mods}")
    return mods


def _read_splits(path: Path) -> dict[str, Any]:
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict with splits {SPLITS}, got {type(data).__name__}")
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise ValueError(f"{path}: missing split(s) {missing} (keys found: {sorted(map(str, data))})")
    return {s: data[s] for s in SPLITS}


def _parse_mmsa(path: Path, data: dict[str, Any], modalities: tuple[str, ...]) -> dict[str, SplitFeatures]:
    out = {}
    for split, items in data.items():
        sp = _Split(path, split, items, "regression_labels")
        feats, masks = {}, {}
        for m in modalities:
            x = sp.features(m)
            if m == "text" and sp.has("text_bert"):
                bert = sp.numeric_rows("text_bert", (3,))
                if bert.shape[1] != 3 or bert.shape[2] != x.shape[1]:
                    raise ValueError(
                        f"{sp.where}/text_bert: expected (N, 3, {x.shape[1]}) (ids, mask, segments "
                        f"matching text), got {bert.shape}"
                    )
                masks[m] = bert[:, 1, :] != 0
            elif m != "text" and sp.has(f"{m}_lengths"):
                masks[m] = _length_mask(sp, f"{m}_lengths", m, x.shape[1])
            else:
                masks[m] = _nonzero_rows(x)
            feats[m] = x
        out[split] = SplitFeatures(sp.strings("id"), sp.labels, feats, masks, texts=sp.strings("raw_text"))
    return out


def _parse_mult(path: Path, data: dict[str, Any], modalities: tuple[str, ...]) -> dict[str, SplitFeatures]:
    out = {}
    for split, items in data.items():
        sp = _Split(path, split, items, "labels")
        feats = {m: sp.features(m) for m in modalities}
        masks = {m: _nonzero_rows(x) for m, x in feats.items()}  # MulT pads on the left with zeros
        out[split] = SplitFeatures(sp.strings("id"), sp.labels, feats, masks, texts=None)
    return out


def load_mmsa_pickle(path: str | Path, modalities: Sequence[str] = MODALITIES) -> dict[str, SplitFeatures]:
    """Read an MMSA ``aligned_50.pkl`` / ``unaligned_50.pkl``.

    Per split: ``raw_text`` (N,), ``text`` (N, L, Dt), optional ``text_bert`` (N, 3, L) (ids, mask, segments),
    ``audio`` (N, La, Da), ``vision`` (N, Lv, Dv), optional ``audio_lengths`` / ``vision_lengths`` (N,),
    ``regression_labels`` (N,), ``id`` (N,). Masks: text from ``text_bert[:, 1]`` when present; audio/vision
    from their lengths when present (a length above the sequence length is an error); otherwise time steps
    that are not all zero. ``raw_text`` becomes ``texts``.

    Returns:
        ``{"train", "valid", "test"}`` -> SplitFeatures with float32 features (NaN/inf replaced by 0).
    """
    path = Path(path)
    return _parse_mmsa(path, _read_splits(path), _check_modalities(modalities))


def load_mult_pickle(path: str | Path, modalities: Sequence[str] = MODALITIES) -> dict[str, SplitFeatures]:
    """Read a MulT ``mosi_data.pkl`` / ``mosei_senti_data.pkl``.

    Per split: ``text`` (N, 50, 300), ``audio`` (N, 50, 74), ``vision`` (N, 50, 35), ``labels`` (N, 1, 1),
    ``id`` (N,) or (N, k) str/bytes (2-D rows joined with ``_``). Masks mark time steps that are not all
    zero (MulT pads on the left). ``texts`` is None.

    Returns:
        ``{"train", "valid", "test"}`` -> SplitFeatures with float32 features (NaN/inf replaced by 0).
    """
    path = Path(path)
    return _parse_mult(path, _read_splits(path), _check_modalities(modalities))


def load_feature_pickle(
    path: str | Path, layout: str = "auto", modalities: Sequence[str] = MODALITIES
) -> dict[str, SplitFeatures]:
    """Read an MMSA or MulT pickle; ``layout="auto"`` detects it from the keys of the ``train`` split.

    ``regression_labels`` means MMSA, ``labels`` means MulT; anything else is a ValueError listing the keys.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = Path(path)
    mods = _check_modalities(modalities)
    data = _read_splits(path)
    if layout == "auto":
        keys = sorted(map(str, data["train"])) if isinstance(data["train"], dict) else []
        if "regression_labels" in keys:
            layout = "mmsa"
        elif "labels" in keys:
            layout = "mult"
        else:
            raise ValueError(
                f"{path}: cannot detect the layout: split 'train' has neither 'regression_labels' "
                f"(MMSA) nor 'labels' (MulT); keys found: {keys}"
            )
    parse = _parse_mmsa if layout == "mmsa" else _parse_mult
    return parse(path, data, mods)


def convert_feature_pickle(src: str | Path, dst_npz: str | Path, layout: str = "auto") -> Path:
    """Convert a feature pickle (all modalities) once to the safe npz read by ``load_features_npz``; ``dst_npz``
    must be another file than ``src`` (never replaced by its own conversion)."""
    if Path(dst_npz).resolve() == Path(src).resolve():
        raise ValueError(f"{dst_npz}: the output would replace the pickle it is converted from; give another path")
    if Path(dst_npz).is_dir():
        raise ValueError(f"{dst_npz} is a folder: give the .npz file to write")
    return save_features_npz(load_feature_pickle(src, layout), dst_npz)
