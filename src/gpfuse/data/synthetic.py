"""Synthetic data in the real layouts, for tests and for the demo when the shared data is absent.

The sentiment is a known function of the inputs (word polarity + one audio direction), so a model that
learns lowers its error: a generated set can test learning, not only shapes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from gpfuse.data.synthetic_marker import mark_generated
from gpfuse.utils.files import atomic_path

__all__ = ["write_synthetic_mosi"]

_POSITIVE = ["great", "good", "love", "wonderful", "fun", "amazing", "best", "nice"]
_NEGATIVE = ["bad", "boring", "hate", "awful", "worst", "terrible", "dull", "poor"]
_NEUTRAL = ["the", "movie", "it", "was", "and", "i", "think", "really", "a", "story", "actor", "um"]


def write_synthetic_mosi(
    root: str | Path, n_videos: int = 30, segments_per_video: int = 8, audio_dim: int = 73, seed: int = 0
) -> Path:
    """Write ``labels.csv``, ``standard_folds.csv``, ``transcripts.csv`` and ``audio_declare_lab.npz`` in the
    shared CMU-MOSI layout (videos split 60/20/20 into train/valid/test)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    direction = rng.normal(size=audio_dim) / np.sqrt(audio_dim)
    label_rows, transcript_rows, audio, vids, segs, folds = [], [], [], [], [], []
    for v in range(n_videos):
        video = f"vid{v:04d}synth"
        split = "train" if v < 0.6 * n_videos else "valid" if v < 0.8 * n_videos else "test"
        folds.append((video, split))
        for s in range(segments_per_video):
            n_pos, n_neg = rng.integers(0, 4), rng.integers(0, 4)
            words = (
                list(rng.choice(_POSITIVE, n_pos))
                + list(rng.choice(_NEGATIVE, n_neg))
                + list(rng.choice(_NEUTRAL, rng.integers(3, 8)))
            )
            rng.shuffle(words)
            a = rng.normal(size=audio_dim)
            score = float(np.clip(0.8 * (n_pos - n_neg) + 0.8 * a @ direction, -3, 3))
            label_rows.append([video, s, 2.0 * s, 2.0 * s + 1.5, f"{score:.4f}", split])
            transcript_rows.append([f"{video}_{s + 1}", video, s + 1, " ".join(words), s])
            audio.append(a)
            vids.append(video)
            segs.append(s)

    def write_csv(name: str, header: list[str], rows: list) -> None:
        with atomic_path(root / name) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    write_csv(
        "labels.csv", ["video_id", "segment_index", "start_s", "end_s", "sentiment", "standard_split"], label_rows
    )
    write_csv("standard_folds.csv", ["video_id", "split"], folds)
    write_csv("transcripts.csv", ["segment_id", "video_id", "clip_id", "text", "segment_index"], transcript_rows)
    with atomic_path(root / "audio_declare_lab.npz") as tmp, tmp.open("wb") as f:
        np.savez(
            f,
            features=np.asarray(audio, dtype=np.float32),
            video_id=np.array(vids),
            segment_index=np.array(segs, dtype=np.int32),
        )
    mark_generated(root, "CMU-MOSI-layout sentiment data")
    return root
