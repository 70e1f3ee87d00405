"""Small synthetic feature pickles in the MMSA and MulT layouts, for tests and demos.

They are written with plain ``pickle.dump`` of dicts of numpy arrays, like the real files, so they
exercise the same restricted-unpickler path. Features are random inside each utterance and zero in the
padding: MMSA pads on the right (with lengths), MulT on the left.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpfuse.data.features import SPLITS

__all__ = ["MMSA_SHAPES", "MULT_SHAPES", "write_mmsa_pickle", "write_mult_pickle"]

# modality -> (sequence length, feature dim); MMSA ones are small, MulT ones are the real file's.
MMSA_SHAPES = {"text": (8, 16), "audio": (12, 5), "vision": (10, 20)}
MULT_SHAPES = {"text": (50, 300), "audio": (50, 74), "vision": (50, 35)}


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """(N,) float32 scores in [-3, 3] on a 0.2 grid (so some are exactly 0, as in CMU-MOSI)."""
    return (np.round(rng.uniform(-3, 3, n) * 5) / 5).astype(np.float32)


def _padded(rng: np.random.Generator, lengths: np.ndarray, seq_len: int, dim: int, left: bool) -> np.ndarray:
    """(N, seq_len, dim) float32 random values in the first (or last, when ``left``) ``lengths[i]`` steps."""
    x = np.zeros((len(lengths), seq_len, dim), np.float32)
    for i, n in enumerate(lengths):
        steps = slice(seq_len - n, seq_len) if left else slice(0, n)
        x[i, steps] = rng.normal(size=(n, dim)) + 0.1  # +0.1: a real step is never all zero
    return x


def _dump(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def write_mmsa_pickle(
    path: str | Path, n_per_split: Sequence[int] = (8, 4, 4), seed: int = 0, lengths: bool = True
) -> Path:
    """Write an MMSA-layout pickle (shapes in :data:`MMSA_SHAPES`) and return its path.

    Per split: ``raw_text`` and ``id`` (N,) object arrays of str (ids like ``"vid0$_$3"``), ``text``,
    ``text_bert`` (N, 3, L) whose mask row marks the real tokens, ``audio``, ``vision``, ``regression_labels``
    (N,) and, when ``lengths``, ``audio_lengths`` / ``vision_lengths`` (N,) int.
    """
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in zip(SPLITS, n_per_split, strict=True):
        item = {
            "raw_text": np.array([f"{split} utterance {i}" for i in range(n)], dtype=object),
            "id": np.array([f"vid{i % 3}$_${i}" for i in range(n)], dtype=object),
            "regression_labels": _labels(rng, n),
        }
        for m, (seq_len, dim) in MMSA_SHAPES.items():
            lens = rng.integers(1, seq_len + 1, n)
            item[m] = _padded(rng, lens, seq_len, dim, left=False)
            if m == "text":
                bert = np.zeros((n, 3, seq_len), np.float32)
                for i, k in enumerate(lens):
                    bert[i, 0, :k] = rng.integers(1000, 30000, k)
                    bert[i, 1, :k] = 1
                item["text_bert"] = bert
            elif lengths:
                item[f"{m}_lengths"] = lens
        data[split] = item
    return _dump(data, path)


def write_mult_pickle(path: str | Path, n_per_split: Sequence[int] = (8, 4, 4), seed: int = 0) -> Path:
    """Write a MulT-layout pickle (shapes in :data:`MULT_SHAPES`, left-padded) and return its path.

    Per split: ``text``, ``audio``, ``vision`` (N, 50, D) float32, ``labels`` (N, 1, 1) float32 and ``id``
    (N, 3) bytes (video id, start, end), like the real ``mosi_data.pkl``.
    """
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in zip(SPLITS, n_per_split, strict=True):
        lens = rng.integers(1, 51, n)  # one word count per utterance, shared by the aligned modalities
        item = {m: _padded(rng, lens, seq_len, dim, left=True) for m, (seq_len, dim) in MULT_SHAPES.items()}
        item["labels"] = _labels(rng, n).reshape(n, 1, 1)
        item["id"] = np.array([[f"vid{i % 3}", f"{i}.0", f"{i + 1}.5"] for i in range(n)], dtype=bytes)
        data[split] = item
    return _dump(data, path)
