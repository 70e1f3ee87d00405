"""The re-identification DataModule: a layout's split -> P x K training batches and query/gallery loaders,
with each report tokenised once (real pad id + attention mask) and attached to its images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from gpfuse.config import ReIDDataConfig
from gpfuse.data.colo_pair import load_colo_pair
from gpfuse.data.cuhk01 import load_cuhk01
from gpfuse.data.images import IMAGENET_MEAN, IMAGENET_STD
from gpfuse.data.market1501 import load_market1501
from gpfuse.data.reid import ImageTransform, RandomIdentitySampler, ReIDImageDataset, ReIDSplit
from gpfuse.encoders.text import tokenize
from gpfuse.utils.files import atomic_write_text

__all__ = ["ReIDDataModule", "ReportCollate"]

log = logging.getLogger(__name__)


class ReportCollate:
    """Default collation, plus ``text_ids`` (B, L) and ``text_mask`` (B, L) looked up from each item's
    report in a table tokenised once; an empty report has an all-False mask (image-only for that sample)."""

    def __init__(self, tokens: dict[str, tuple[np.ndarray, np.ndarray]] | None) -> None:
        self.tokens = tokens

    def __call__(self, items: list[dict]) -> dict:
        reports = [it.pop("report", None) for it in items]
        batch = default_collate(items)
        if self.tokens is not None and reports[0] is not None:
            ids, masks = zip(*(self.tokens[r] for r in reports))
            batch["text_ids"] = torch.from_numpy(np.stack(ids))
            batch["text_mask"] = torch.from_numpy(np.stack(masks))
        return batch


class ReIDDataModule(L.LightningDataModule):
    """Reads the layout named by ``config.source`` once in :meth:`setup`.

    Args:
        config: the data section. text_model: tokenizer to use for reports (the model's text encoder);
            None ignores reports (image-only). max_text_len: report tokens kept. seed: P x K sampler seed
            (the splits follow ``config.split_seed``).
        mean, std: input normalisation on [0, 1] pixels: the image encoder's own (ImageNet statistics for
            ResNet-50, (x - 127) / 128 for the TF-converted EfficientNet-Lite0).

    Validation is carved from training identities (``config.val_ids`` videos or identities) and is what
    checkpoints are selected on; the test query/gallery are only used by ``trainer.test``.
    """

    def __init__(
        self,
        config: ReIDDataConfig,
        text_model: str | None = None,
        max_text_len: int = 64,
        seed: int = 0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.config, self.text_model, self.max_text_len, self.seed = config, text_model, max_text_len, seed
        self.mean, self.std = mean, std
        self.split: ReIDSplit | None = None
        self.reports: dict[str, str] | None = None
        self.datasets: dict[str, ReIDImageDataset] = {}

    def _read(self) -> tuple[ReIDSplit, dict[str, str] | None]:
        c = self.config
        if c.source == "colo_pair":
            return load_colo_pair(
                c.root,
                c.fold,
                c.num_folds,
                val_videos=c.val_ids,
                report_table=c.report_table,
                seed=c.split_seed,
                missing_report=c.missing_report,
            )
        if c.source == "cuhk01":
            return load_cuhk01(c.root, split_index=c.fold, val_ids=c.val_ids, seed=c.split_seed), None
        return load_market1501(c.root, val_ids=c.val_ids, seed=c.split_seed), None

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        split, reports = self._read()
        split.check()
        if not split.has_val:
            raise ValueError(
                f"{self.config.root}: data.val_ids must be >= 1: checkpoints are selected on a "
                "validation split carved from training identities, never on the test split"
            )
        self.split = split
        self.reports = reports if self.text_model else None
        tokens = None
        if self.reports is not None and self.text_model is not None:  # reports are kept only with a text model
            texts = sorted(set(self.reports.values()))
            ids, masks = tokenize(texts, self.text_model, self.max_text_len)
            masks[[i for i, t in enumerate(texts) if not t.strip()]] = False  # empty report: image-only
            tokens = {t: (ids[i], masks[i]) for i, t in enumerate(texts)}
        self.collate = ReportCollate(tokens)
        size, c = tuple(self.config.image_size), self.config
        train_tf = ImageTransform(size, train=True, pad=c.pad, mean=self.mean, std=self.std)
        eval_tf = ImageTransform(size, mean=self.mean, std=self.std)
        for name in ("train", "val_query", "val_gallery", "query", "gallery"):
            self.datasets[name] = ReIDImageDataset(
                getattr(split, name),
                train_tf if name == "train" else eval_tf,
                reports=self.reports,
                on_error=c.on_bad_image,
            )
        log.info(split.summary())

    @property
    def num_classes(self) -> int:
        if self.split is None:
            raise AttributeError("ReIDDataModule.num_classes is known after setup()")
        return self.split.num_train_pids

    def save_split_lists(self, folder: Path) -> None:
        for name, dataset in self.datasets.items():
            lines = [f"{it.path}\t{it.pid}\t{it.camid}\t{it.group}" for it in dataset.items]
            atomic_write_text(folder / f"{name}.txt", "path\tpid\tcamid\tgroup\n" + "\n".join(lines) + "\n")

    def save_stats(self, path: Path) -> None:
        summary = {
            name: {"images": len(d), "ids": len(set(d.pids)), "skipped": d.num_skipped}
            for name, d in self.datasets.items()
        }
        atomic_write_text(path, json.dumps({"num_classes": self.num_classes, "splits": summary}, indent=2))

    def _loader(self, name: str) -> DataLoader:
        c = self.config
        return DataLoader(
            self.datasets[name],
            batch_size=c.eval_batch_size,
            shuffle=False,
            num_workers=c.num_workers,
            collate_fn=self.collate,
            persistent_workers=c.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        c, dataset = self.config, self.datasets["train"]
        trainer = self.trainer  # set when Lightning runs this module; its processes share out the P x K batches
        sampler = RandomIdentitySampler(
            dataset.pids,
            c.batch_size,
            c.num_instances,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )
        sampler.set_epoch(trainer.current_epoch if trainer else 0)  # a resumed run's first epoch too (resume.py)
        return DataLoader(
            dataset,
            batch_size=c.batch_size,
            sampler=sampler,
            num_workers=c.num_workers,
            collate_fn=self.collate,
            drop_last=True,
            # training: fresh workers every epoch, seeded from the main process's random state, which a
            # resumed run restores (resume.py); persistent ones would keep streams a resume cannot rebuild
            persistent_workers=False,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader("val_query"), self._loader("val_gallery")]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader("query"), self._loader("gallery")]
