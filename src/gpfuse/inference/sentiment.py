"""Sentiment from a saved run: transcripts (+ audio / visual features) -> scores in [-3, 3], with the run's text
encoder or tokenizer and its feature standardisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from gpfuse.config import SentimentDataConfig
from gpfuse.data.features import clean_nonfinite
from gpfuse.encoders.text import cached_text_states, tokenize
from gpfuse.inference.saved_run import SavedRun
from gpfuse.models import MODELS

__all__ = ["SentimentPredictor"]

Features = np.ndarray | Sequence[np.ndarray]


def _masked(x: Features, mask: np.ndarray, name: str, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """An (N, L, D) array with its (N, L) mask of real steps, padding left where it is stored (MulT pickles pad
    on the left; positions count from the first stored step), padding zeroed."""
    x, mask = np.asarray(x, dtype=np.float32), np.asarray(mask)
    if x.ndim != 3 or x.shape[0] != n or x.shape[2] != dim or mask.shape != x.shape[:2] or mask.dtype != bool:
        raise ValueError(
            f"{name}: with a mask, features must be (N={n}, L, {dim}) and the mask (N, L) bool, got "
            f"{x.shape} and {mask.shape} {mask.dtype}"
        )
    if not mask.any(axis=1).all():
        raise ValueError(f"{name}: row {int(np.argmin(mask.any(axis=1)))} has no real step in its mask")
    return clean_nonfinite(np.where(mask[..., None], x, np.float32(0)), name), mask


def _sequences(x: Features, name: str, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, D) float32 zero-padded and (N, L) bool mask from (N, D) (one step each), (N, L, D), or a list of
    (L_i, D) arrays, each step real."""
    if isinstance(x, np.ndarray) and x.ndim == 2:
        x = x[:, None, :]
    items = list(x)
    if len(items) != n:
        raise ValueError(f"{name}: {len(items)} rows for {n} texts")
    arrays = [np.asarray(a, dtype=np.float32) for a in items]
    bad = [a.shape for a in arrays if a.ndim != 2 or a.shape[1] != dim or len(a) == 0]
    if bad:
        raise ValueError(f"{name}: every row must be (L >= 1, {dim}) features (the model's {name} size), got {bad[0]}")
    length = max(len(a) for a in arrays)
    out, mask = np.zeros((n, length, dim), np.float32), np.zeros((n, length), bool)
    for i, a in enumerate(arrays):
        out[i, : len(a)], mask[i, : len(a)] = a, True
    return clean_nonfinite(out, name), mask


class SentimentPredictor:
    """A sentiment run's model with its preprocessing (``gpfuse.load`` builds it): GRF reads the frozen text
    encoder's token states (cached), PGF-Net its own backbone's tokens; other modalities are standardised with
    the training statistics of the run.

    Example::

        sentiment = gpfuse.load("runs/pgf_net_mosi/seed_1111")
        scores = sentiment.predict(["what a great film", "boring"], audio=audio)   # audio: (2, 73) or (2, L, 73)
    """

    def __init__(self, run: SavedRun, batch_size: int | None = None) -> None:
        self.run = run
        d, m = run.config.data_as(SentimentDataConfig), run.config.model
        self.modalities = list(d.modalities)
        self.reads_tokens = getattr(MODELS[m["name"]], "text_input", "states") == "tokens"
        self.text_model = m["backbone"] if self.reads_tokens else d.text_model
        self.max_text = d.max_len.get("text", 50)
        options = run.model_config["options"]
        self.input_dims = dict(options.get("input_dims") or {})
        self.max_len = dict(d.max_len)
        self.batch_size = batch_size or d.batch_size
        unscaled = [m for m in self.modalities if m != "text" and not isinstance(run.stats.get(m), dict)]
        if d.standardize and unscaled:
            raise FileNotFoundError(
                f"{run.folder}: no training statistics for {unscaled} (data_stats.json missing or incomplete): "
                "the run standardised these features with them (data.standardize), so predictions without them "
                "would not be the model's"
            )

    def _features(
        self, texts: list[str], extra: dict[str, Features | None], masks: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        n, arrays = len(texts), {}
        unused = [k for k, v in extra.items() if v is not None and k not in self.modalities]
        if extra.get("text") is not None and self.reads_tokens:
            unused.append("text_features (this model tokenises transcripts)")
        if unused:
            raise ValueError(f"this model reads {self.modalities}, not {unused}")
        for m in self.modalities:
            if m == "text":
                continue
            features = extra.get(m)
            if features is None:
                raise ValueError(f"this model needs {m!r} features: predict(texts, {m}=...)")
            x, mask = self._arrays(features, masks, m, n)
            limit, longest = self.max_len.get(m), int(mask.sum(1).max())
            if limit is not None and longest > limit:
                raise ValueError(f"{m}: sequences of {longest} steps, the run read at most {limit} (data.max_len.{m})")
            stats = self.run.stats.get(m) if isinstance(self.run.stats.get(m), dict) else None
            if stats is not None:
                x = np.where(mask[..., None], (x - np.float32(stats["mean"])) / np.float32(stats["std"]), 0.0)
            arrays[m], arrays[f"{m}_mask"] = x.astype(np.float32), mask
        if "text" in self.modalities:
            text_features = extra.get("text")
            if text_features is not None:  # the run read text features, not transcripts
                arrays["text"], arrays["text_mask"] = self._arrays(text_features, masks, "text", n)
            elif self.reads_tokens:
                ids, mask = tokenize(texts, self.text_model, self.max_text)
                arrays["text_ids"], arrays["text_mask"] = ids, mask
            else:
                arrays["text"], arrays["text_mask"] = cached_text_states(texts, self.text_model, self.max_text)
        return arrays

    def _arrays(self, x: Features, masks: Mapping[str, np.ndarray], m: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Modality ``m``'s (N, L, D) features and (N, L) mask: as stored with its mask when one is given."""
        if m in masks:
            return _masked(x, masks[m], m, n, self.input_dims[m])
        return _sequences(x, m, n, self.input_dims[m])

    @torch.no_grad()
    def predict(
        self,
        texts: Sequence[str] | None,
        audio: Features | None = None,
        vision: Features | None = None,
        text_features: Features | None = None,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """(N,) float32 sentiment scores for ``texts`` (and their ``audio`` / ``vision`` features when the model
        reads them: (N, D), (N, L, D) or a list of (L_i, D) arrays, raw as in the run's data). A run trained on
        text features of a feature file (no transcripts) takes them as ``text_features`` instead of ``texts``.

        ``masks``: per modality (``"text"`` for ``text_features``) the (N, L) bool mask of the real steps of an
        (N, L, D) array whose padding stays where the data stores it (MulT pickles pad on the left, and a model
        with positions, such as GRF, scores a packed copy differently); without one every step is real."""
        unknown = sorted(set(masks or {}) - {"text", "audio", "vision"})
        if unknown:
            raise ValueError(f"masks for unknown modalities {unknown}: use 'text', 'audio', 'vision'")
        if text_features is not None:
            texts = [""] * len(list(text_features))
        elif texts is None or not list(texts) or any(not str(t).strip() for t in texts):
            raise ValueError("every text must be a non-empty transcript (or give text_features)")
        texts = [str(t) for t in texts]
        arrays = self._features(texts, {"audio": audio, "vision": vision, "text": text_features}, masks or {})
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = {
                k: torch.from_numpy(np.ascontiguousarray(v[start : start + self.batch_size])).to(self.run.device)
                for k, v in arrays.items()
            }
            with self.run.autocast():
                scores.append(self.run.model(batch).score.float().cpu())
        return torch.cat(scores).numpy()
