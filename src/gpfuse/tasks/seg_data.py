"""The segmentation DataModule: image/mask folders -> a checked, seeded split -> augmented training batches
and full-resolution evaluation loaders (one per named test set)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from gpfuse.config import SegDataConfig
from gpfuse.data.images import IMAGENET_MEAN, IMAGENET_STD
from gpfuse.data.polyp import PolypDataset, SegItem, check_items, list_folder, make_split, seg_collate
from gpfuse.data.seg_transforms import SegTransform
from gpfuse.tasks.resume import epoch_sampler
from gpfuse.utils.files import atomic_write_text

__all__ = ["SegDataModule"]

log = logging.getLogger(__name__)


class SegDataModule(L.LightningDataModule):
    """Lists and splits the folders of ``config`` once in :meth:`setup`, then checks the files of each part
    (after ``subset``: a quick run decodes only the images it reads).

    Args:
        config: the data section (its ``split_seed`` draws the held-out splits and subsets). seed: the run's seed
            (training order). mean, std: the image encoder's normalisation.
        test_only: read the ``test`` folders only (scoring a saved model on another labelled set).
    """

    def __init__(
        self,
        config: SegDataConfig,
        seed: int = 0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        test_only: bool = False,
    ) -> None:
        super().__init__()
        self.config, self.seed, self.test_only = config, seed, test_only
        self.mean, self.std = mean, std
        self.items: dict[str, list[SegItem]] = {}
        self.counts: dict[str, dict[str, int]] = {}

    @property
    def test_names(self) -> tuple[str, ...]:
        return tuple(k[len("test_") :] for k in self.items if k.startswith("test_"))

    def _list(self, folders: list[str]) -> list[SegItem]:
        return [it for folder in folders for it in list_folder(folder, group_column=self.config.group_column)]

    def _checked(self, items: list[SegItem], what: str) -> list[SegItem]:
        kept, counts = check_items(items, self.config.on_bad_file, self.config.nonbinary_mask, what)
        self.counts[what] = counts
        return kept

    def _subset(self, items: list[SegItem], index: int) -> list[SegItem]:
        n = self.config.subset
        if n is None or len(items) <= n:
            return items
        keep = np.sort(np.random.default_rng([self.config.split_seed, 2, index]).permutation(len(items))[:n])
        return [items[i] for i in keep]

    def setup(self, stage: str | None = None) -> None:
        if self.items:
            return
        c = self.config
        # Listed first, checked (decoded) after the split and ``subset``: only the files the run reads.
        test = {name: self._list([folder]) for name, folder in c.test.items()}
        if self.test_only:
            self.items = {f"test_{k}": self._checked(v, f"test[{k}]") for k, v in test.items()}
            return
        split = make_split(
            self._list(c.train),
            self._list(c.val) if c.val else [],
            test,
            c.split,
            c.test_fraction,
            c.val_fraction,
            c.split_seed,
        )
        parts = {"train": split.train, "valid": split.val, **{f"test_{k}": v for k, v in split.test.items()}}
        self.items = {
            name: self._checked(self._subset(items, i), f"test[{name[5:]}]" if name.startswith("test_") else name)
            for i, (name, items) in enumerate(parts.items())
        }
        log.info(", ".join(f"{k} {len(v)}" for k, v in self.items.items()))

    def _dataset(self, name: str) -> PolypDataset:
        c = self.config
        train = name == "train" and c.augment
        transform = SegTransform(
            c.image_size,
            train=train,
            flip_p=c.flip_p,
            rotate=c.rotate,
            scale=c.scale,
            jitter=c.jitter,
            mean=self.mean,
            std=self.std,
        )
        return PolypDataset(self.items[name], transform, full_masks=name != "train")

    def _loader(self, name: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        c = self.config
        dataset = self._dataset(name)
        sampler = epoch_sampler(dataset, self.trainer, self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=c.num_workers,
            collate_fn=seg_collate,
            drop_last=shuffle and len(self.items[name]) > batch_size,
            # training: fresh workers every epoch, seeded from the main process's random state, which a
            # resumed run restores (resume.py); persistent ones would keep streams a resume cannot rebuild
            persistent_workers=c.num_workers > 0 and not shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.config.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.config.eval_batch_size)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(f"test_{name}", self.config.eval_batch_size) for name in self.test_names]

    def save_split_lists(self, folder: Path) -> None:
        for name, items in self.items.items():
            lines = [f"{it.image}\t{it.mask}\t{it.group}" for it in items]
            atomic_write_text(folder / f"{name}.txt", "image\tmask\tgroup\n" + "\n".join(lines) + "\n")

    def save_stats(self, path: Path) -> None:
        stats = {"images": {k: len(v) for k, v in self.items.items()}, "checks": self.counts}
        atomic_write_text(path, json.dumps(stats, indent=2))
