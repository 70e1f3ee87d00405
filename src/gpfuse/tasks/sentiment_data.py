"""The sentiment DataModule: any supported layout -> masked, standardised tensors.

It joins the data leaves (file layouts) and the encoders (text token states, cached on disk).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from gpfuse.config import SentimentDataConfig
from gpfuse.data.features import SPLITS, SplitFeatures, load_features_npz
from gpfuse.data.mosi import load_mosi_folder
from gpfuse.encoders.text import cached_text_states, tokenize
from gpfuse.tasks.resume import epoch_sampler
from gpfuse.utils.files import atomic_write_text

__all__ = ["FeatureDataset", "SentimentDataModule", "read_sentiment_source"]

log = logging.getLogger(__name__)


class _RankZeroOnly(Protocol):
    rank: int  # set on the function by Lightning (at import, from the launcher's environment; then a Trainer)


def read_sentiment_source(cfg: SentimentDataConfig) -> dict[str, SplitFeatures]:
    """The splits of ``cfg.source`` at ``cfg.root`` as read (raw features, texts, labels; nothing encoded)."""
    root = Path(cfg.root)
    if cfg.synthetic_if_missing:
        log.warning(
            "data.synthetic_if_missing is no longer read: generated data comes only from `gpfuse demo`, "
            "never in place of a missing dataset"
        )
    if cfg.source == "mosi":
        if not (root / "labels.csv").is_file():
            raise FileNotFoundError(f"CMU-MOSI not found at {root} (labels.csv missing); set data.root")
        return load_mosi_folder(root, [m for m in cfg.modalities if m in ("text", "audio")])
    if cfg.source == "pickle":
        from gpfuse.data.sentiment_pickles import load_feature_pickle

        return load_feature_pickle(root, layout=cfg.layout, modalities=cfg.modalities)
    return load_features_npz(root)


class FeatureDataset(Dataset):
    """Items ``{m: (L, D) float, f"{m}_mask": (L,) bool, "label": () float, "index": () long}``; text read as
    tokens comes as ``"text_ids"`` (L,) long with ``"text_mask"``."""

    def __init__(self, split: SplitFeatures, modalities: list[str]) -> None:
        self.split = split
        tokens = split.token_ids is not None
        self.features = {
            ("text_ids" if m == "text" and tokens else m): torch.from_numpy(
                np.ascontiguousarray(split.token_ids if m == "text" and tokens else split.features[m])
            )
            for m in modalities
        }
        self.masks = {m: torch.from_numpy(split.masks[m]) for m in modalities}
        self.labels = torch.from_numpy(split.labels.astype(np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {m: x[i] for m, x in self.features.items()}
        item.update({f"{m}_mask": k[i] for m, k in self.masks.items()})
        item["label"], item["index"] = self.labels[i], torch.tensor(i)
        return item


class SentimentDataModule(L.LightningDataModule):
    """Reads ``config`` once in :meth:`setup`: text token states come from the frozen text encoder (cached
    per text set), or, with ``tokenizer`` (a model that runs its own text backbone, e.g. PGF-Net), token ids
    of that backbone's tokenizer, truncated at ``max_len.text`` with the truncations counted and logged;
    sequences are checked against ``max_len`` and cropped to it, and non-text features are standardised with
    train statistics over real steps (kept in :attr:`stats` for prediction)."""

    def __init__(
        self,
        config: SentimentDataConfig,
        stats: dict[str, dict[str, list[float]]] | None = None,
        required_splits: tuple[str, ...] = SPLITS,
        tokenizer: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config, self.seed = config, seed
        self.required_splits = required_splits
        self.stats = stats
        self.tokenizer = tokenizer
        self.truncated: dict[str, list[str]] = {}
        self.splits: dict[str, SplitFeatures] = {}

    # ---- reading ----------------------------------------------------------------------------------
    def _read(self) -> dict[str, SplitFeatures]:
        return read_sentiment_source(self.config)

    def _text_states(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        return cached_text_states(
            texts.tolist(),
            cfg.text_model,
            cfg.max_len.get("text", 50),
            Path(cfg.cache_dir) if cfg.cache_dir else None,
            write=cast(_RankZeroOnly, rank_zero_only).rank == 0,
        )

    def _tokens(self, name: str, split: SplitFeatures, texts: np.ndarray, tokenizer: str) -> None:
        """Token ids of ``texts`` (the split's raw text) with ``tokenizer`` into ``split``."""
        limit = self.config.max_len.get("text", 50)
        ids, mask, lengths = tokenize(texts.tolist(), tokenizer, limit, return_lengths=True)
        self.truncated[name] = split.ids[lengths > limit].tolist()
        if self.truncated[name]:
            worst = int(lengths.argmax())
            log.warning(
                "%s: %d of %d %s transcripts are longer than data.max_len.text=%d tokens and were truncated "
                "(longest: %s, %d tokens)",
                self.config.root,
                len(self.truncated[name]),
                len(split),
                name,
                limit,
                split.ids[worst],
                lengths[worst],
            )
        split.token_ids, split.masks["text"] = ids, mask

    def _add_text(self, splits: dict[str, SplitFeatures]) -> None:
        for name, split in splits.items():
            if self.tokenizer is not None:
                if split.texts is None:
                    raise ValueError(
                        f"split {name!r} of {self.config.root} has no raw text to tokenise for the "
                        f"model's own text backbone"
                    )
                self._tokens(name, split, split.texts, self.tokenizer)
            elif "text" in split.features:
                continue
            elif split.texts is None:
                raise ValueError(f"split {name!r} has neither text features nor raw text")
            else:
                split.features["text"], split.masks["text"] = self._text_states(split.texts)

    # ---- checks and normalisation -----------------------------------------------------------------
    def _check_splits(self, splits: dict[str, SplitFeatures]) -> None:
        for name in self.required_splits:
            if name not in splits or len(splits[name]) == 0:
                raise ValueError(f"split {name!r} is empty or missing in {self.config.root}")

    def _check_and_crop(self, splits: dict[str, SplitFeatures]) -> None:
        for name, split in splits.items():
            for m in self.config.modalities:
                if m == "text" and split.token_ids is not None:
                    continue  # token ids: truncated by the tokenizer, counted in _tokens
                if m not in split.features:
                    raise KeyError(
                        f"modality {m!r} not in split {name!r} of {self.config.root}; found {sorted(split.features)}"
                    )
                limit = self.config.max_len.get(m)
                if limit is None:
                    continue
                lengths = split.masks[m].sum(axis=1)
                too_long = np.flatnonzero(lengths > limit)
                if too_long.size:
                    i = too_long[0]
                    raise ValueError(
                        f"{self.config.root}: {m} of {split.ids[i]!r} ({name}) has {lengths[i]} steps, "
                        f"more than data.max_len.{m}={limit} ({too_long.size} such sequences)"
                    )
                keep = np.nonzero(split.masks[m].any(axis=0))[0]
                end = max(int(keep.max()) + 1 if keep.size else 1, 1)
                split.features[m], split.masks[m] = split.features[m][:, :end], split.masks[m][:, :end]

    def _standardise(self, splits: dict[str, SplitFeatures]) -> None:
        if not self.config.standardize:
            return
        if self.stats is None:
            train = splits["train"]
            self.stats = {}
            for m in self.config.modalities:
                if m == "text":
                    continue
                real = train.features[m][train.masks[m]]
                self.stats[m] = {"mean": real.mean(0).tolist(), "std": (real.std(0) + 1e-6).tolist()}
        for split in splits.values():
            for m, s in self.stats.items():
                mean, std = np.asarray(s["mean"], dtype=np.float32), np.asarray(s["std"], dtype=np.float32)
                x = (split.features[m] - mean) / std
                split.features[m] = np.where(split.masks[m][..., None], x, 0.0).astype(np.float32)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = {k: v for k, v in self._read().items() if len(v) or k in self.required_splits}
        self._check_splits(splits)
        if "text" in self.config.modalities:
            self._add_text(splits)
        self._check_and_crop(splits)
        self._standardise(splits)
        self.splits = splits

    # ---- what a run needs -------------------------------------------------------------------------
    @property
    def input_dims(self) -> dict[str, int]:
        split = next(iter(self.splits.values()))
        return {m: int(split.features[m].shape[-1]) for m in self.config.modalities if m in split.features}

    def save_split_lists(self, folder: Path) -> None:
        for name, split in self.splits.items():
            atomic_write_text(folder / f"{name}.txt", "\n".join(split.ids.tolist()) + "\n")

    def save_stats(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.stats or {}))
        if self.tokenizer is not None:
            report = {
                "tokenizer": self.tokenizer,
                "max_len": self.config.max_len.get("text", 50),
                "truncated": {k: len(v) for k, v in self.truncated.items()},
                "truncated_ids": self.truncated,
            }
            atomic_write_text(path.with_name("text_tokens.json"), json.dumps(report, indent=2))

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = FeatureDataset(self.splits[split], self.config.modalities)
        sampler = epoch_sampler(dataset, self.trainer, self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.config.num_workers,
            # training: fresh workers every epoch, seeded from the main process's random state, which a
            # resumed run restores (resume.py); persistent ones would keep streams a resume cannot rebuild
            persistent_workers=self.config.num_workers > 0 and not shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
