"""CMU-MOSI in the shared folder layout (``labels.csv``, ``audio_declare_lab.npz``, ``transcripts.csv``).

See ``shared/data/README.md`` section 3 and 8. Splits are the CMU-MultimodalSDK standard folds
(1284 train / 229 valid / 686 test segments). Audio is one 73-d openSMILE vector per segment, given to
models as a length-1 sequence; text is the raw transcript (a task turns it into token states).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpfuse.data.features import SPLITS, SplitFeatures, check_labels, clean_nonfinite

__all__ = ["load_mosi_folder"]

log = logging.getLogger(__name__)

_LABEL_COLUMNS = ("video_id", "segment_index", "sentiment", "standard_split")
_TRANSCRIPT_COLUMNS = ("segment_id", "video_id", "segment_index", "text")


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"CMU-MOSI file not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        return list(reader)


def _parse(path: Path, row_number: int, column: str, value: str, kind: type):
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{path}, row {row_number}: bad {column} value {value!r}") from None


def _load_audio(path: Path, videos: np.ndarray, segments: np.ndarray) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"CMU-MOSI audio features not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            feats, vid, seg = data["features"], data["video_id"], data["segment_index"]
    except KeyError as err:
        raise ValueError(f"{path}: missing array {err}") from None
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npz ({err})") from err
    if feats.ndim != 2 or len(feats) != len(videos):
        raise ValueError(f"{path}: features must be (N={len(videos)}, D), got {feats.shape}")
    if not (np.array_equal(vid.astype(str), videos) and np.array_equal(seg.astype(int), segments)):
        raise ValueError(f"{path}: rows are not in labels.csv order (video_id, segment_index)")
    return clean_nonfinite(feats.astype(np.float32), f"{path}:features")


def load_mosi_folder(root: str | Path, modalities: Sequence[str] = ("text", "audio")) -> dict[str, SplitFeatures]:
    """Read the shared CMU-MOSI folder into one :class:`SplitFeatures` per standard split.

    Args:
        root: folder holding ``labels.csv`` (+ ``audio_declare_lab.npz`` for audio, ``transcripts.csv``
            for text).
        modalities: any of ``"text"`` and ``"audio"`` (this copy has no visual features).

    Returns:
        ``{"train", "valid", "test"}`` -> features: ``audio`` (N, 1, 73); ``texts`` (N,) when text is asked.
        Ids are ``<video_id>_<clip_id>`` as in MMSA. Segments with a missing or empty transcript are
        dropped when text is asked (4 in the shared copy), and the log says which.
    """
    root = Path(root)
    unknown = set(modalities) - {"text", "audio"}
    if unknown:
        raise ValueError(f"{root}: CMU-MOSI here has text and audio only, not {sorted(unknown)}")
    labels_path = root / "labels.csv"
    rows = _read_csv(labels_path, _LABEL_COLUMNS)
    if not rows:
        raise ValueError(f"{labels_path}: no rows")
    videos = np.array([r["video_id"] for r in rows])
    segments = np.array(
        [_parse(labels_path, i, "segment_index", r["segment_index"], int) for i, r in enumerate(rows, 2)]
    )
    labels = np.array(
        [_parse(labels_path, i, "sentiment", r["sentiment"], float) for i, r in enumerate(rows, 2)], dtype=np.float32
    )
    splits = np.array([r["standard_split"] for r in rows])
    bad = sorted(set(splits) - set(SPLITS))
    if bad:
        raise ValueError(f"{labels_path}: unknown standard_split value(s) {bad}; expected {list(SPLITS)}")

    keys = list(zip(videos.tolist(), segments.tolist()))
    transcripts_path = root / "transcripts.csv"
    transcripts: dict[tuple[str, int], tuple[str, str]] = {}
    if "text" in modalities or transcripts_path.is_file():
        for i, r in enumerate(_read_csv(transcripts_path, _TRANSCRIPT_COLUMNS), 2):
            key = (r["video_id"], _parse(transcripts_path, i, "segment_index", r["segment_index"], int))
            transcripts[key] = (r["segment_id"], (r["text"] or "").strip())
    ids = np.array([transcripts[k][0] if k in transcripts else f"{k[0]}_seg{k[1]}" for k in keys])
    labels = check_labels(labels, ids, f"{labels_path}, column sentiment")
    features, masks = {}, {}
    if "audio" in modalities:
        audio = _load_audio(root / "audio_declare_lab.npz", videos, segments)
        features["audio"], masks["audio"] = audio[:, None, :], np.ones((len(audio), 1), dtype=bool)
    texts = None
    keep = np.ones(len(rows), dtype=bool)
    if "text" in modalities:
        texts = np.array([transcripts.get(k, ("", ""))[1] for k in keys])
        keep = texts != ""
        if not keep.all():
            log.warning(
                "%s: %d segment(s) without a transcript dropped: %s",
                transcripts_path,
                (~keep).sum(),
                ", ".join(ids[~keep]),
            )
    everything = SplitFeatures(ids, labels, features, masks, texts)
    return {s: everything.subset(keep & (splits == s)) for s in SPLITS}
