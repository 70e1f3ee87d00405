"""Sentiment from a saved run: transcripts (+ audio / visual features) -> scores in [-3, 3], with the run's text
encoder or tokenizer and its feature standardisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from gpfuse.data.features import clean_nonfinite
from gpfuse.encoders.text import cached_text_states, tokenize
from gpfuse.inference.saved_run import SavedRun
from gpfuse.models import MODELS

if TYPE_CHECKING:
    from gpfuse.config import SentimentDataConfig
    from gpfuse.models.io import PretrainedMixin

__all__ = ["SentimentPredictor"]

Features = np.ndarray | Sequence[np.ndarray]


def _sequences(x: Features, name: str, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, D) float32 zero-padded and (N, L) bool mask from (N, D) (one step each), (N, L, D), or a list of
    (L_i, D) arrays."""
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
        d, m = cast("SentimentDataConfig", run.config.data), run.config.model  # gpfuse.load: a sentiment run
        self.modalities = list(d.modalities)
        self.reads_tokens = getattr(MODELS[m["name"]], "text_input", "states") == "tokens"
        self.text_model = m.get("backbone", "minilm") if self.reads_tokens else d.text_model
        self.max_text = d.max_len.get("text", 50)
        options = cast("PretrainedMixin", run.model).gpfuse_config["options"]  # a model built by create_model
        self.input_dims = dict(options.get("input_dims") or {})
        self.max_len = dict(d.max_len)
        self.batch_size = batch_size or d.batch_size

    def _features(self, texts: list[str], extra: dict[str, Features | None]) -> dict[str, np.ndarray]:
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
            x, mask = _sequences(features, m, n, self.input_dims[m])
            limit = self.max_len.get(m)
            if limit is not None and x.shape[1] > limit:
                raise ValueError(
                    f"{m}: sequences of {x.shape[1]} steps, the run read at most {limit} (data.max_len.{m})"
                )
            stats = self.run.stats.get(m) if isinstance(self.run.stats.get(m), dict) else None
            if stats is not None:
                x = np.where(mask[..., None], (x - np.float32(stats["mean"])) / np.float32(stats["std"]), 0.0)
            arrays[m], arrays[f"{m}_mask"] = x.astype(np.float32), mask
        if "text" in self.modalities:
            text_features = extra.get("text")
            if text_features is not None:  # the run read text features, not transcripts
                arrays["text"], arrays["text_mask"] = _sequences(text_features, "text", n, self.input_dims["text"])
            elif self.reads_tokens:
                ids, mask = tokenize(texts, self.text_model, self.max_text)
                arrays["text_ids"], arrays["text_mask"] = ids, mask
            else:
                arrays["text"], arrays["text_mask"] = cached_text_states(texts, self.text_model, self.max_text)
        return arrays

    @torch.no_grad()
    def predict(
        self,
        texts: Sequence[str] | None,
        audio: Features | None = None,
        vision: Features | None = None,
        text_features: Features | None = None,
    ) -> np.ndarray:
        """(N,) float32 sentiment scores for ``texts`` (and their ``audio`` / ``vision`` features when the model
        reads them: (N, D), (N, L, D) or a list of (L_i, D) arrays, raw as in the run's data). A run trained on
        text features of a feature file (no transcripts) takes them as ``text_features`` instead of ``texts``."""
        if text_features is not None:
            texts = [""] * len(list(text_features))
        elif texts is None or not list(texts) or any(not str(t).strip() for t in texts):
            raise ValueError("every text must be a non-empty transcript (or give text_features)")
        texts = [str(t) for t in texts]
        arrays = self._features(texts, {"audio": audio, "vision": vision, "text": text_features})
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = {
                k: torch.from_numpy(np.ascontiguousarray(v[start : start + self.batch_size])).to(self.run.device)
                for k, v in arrays.items()
            }
            with self.run.autocast():
                scores.append(self.run.model(batch).score.float().cpu())
        return torch.cat(scores).numpy()
