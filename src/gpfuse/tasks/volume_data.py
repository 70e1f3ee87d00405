"""The 3D segmentation DataModule: a Decathlon folder -> checked cases, seeded train/valid/test split, class
prompts from the description CSV, MONAI cached datasets and loaders (random patches for training, whole
volumes for sliding-window evaluation)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from gpfuse.config import VolumeDataConfig
from gpfuse.data.class_text import global_prompt, local_prompts, read_class_descriptions, shipped_descriptions
from gpfuse.data.decathlon import VolumeCase, carve_cases, check_cases, read_decathlon
from gpfuse.data.volume_transforms import draw_from_numpy_global, volume_transforms
from gpfuse.tasks.resume import epoch_sampler
from gpfuse.utils.files import atomic_write_text

__all__ = ["VolumeDataModule", "descriptions_path"]

log = logging.getLogger(__name__)


def descriptions_path(name_or_path: str) -> Path:
    """A shipped description set (``amos22``, ``msd_brain``, ``msd_hippocampus``) or a CSV path."""
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise FileNotFoundError(f"class-description CSV not found: {path}")
        return path
    return shipped_descriptions(name_or_path)


class VolumeDataModule(L.LightningDataModule):
    """Reads and checks ``config.root`` once in :meth:`setup`.

    Args:
        config: the data section (its ``split_seed`` carves the splits and the subset). seed: the run's seed
            (training order and transforms).
        test_only: every usable labelled case of ``config.root`` is the test set (scoring a saved model on
            another labelled set).

    Attributes after setup: ``labels`` ({index: name}), ``num_classes``, ``class_texts`` (per class its global
    prompt, then its concept prompts), ``cases`` (split name -> cases).
    """

    def __init__(self, config: VolumeDataConfig, seed: int = 0, test_only: bool = False) -> None:
        super().__init__()
        self.config, self.seed, self.test_only = config, seed, test_only
        self.cases: dict[str, list[VolumeCase]] = {}
        self.labels: dict[int, str] = {}
        self.class_texts: list[list[str]] = []
        self.skipped = 0

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def setup(self, stage: str | None = None) -> None:
        if self.cases:
            return
        c = self.config
        cases, self.labels = read_decathlon(c.root)
        descriptions = read_class_descriptions(descriptions_path(c.descriptions), self.labels)
        self.class_texts = [[global_prompt(d), *local_prompts(d)] for d in descriptions]
        kept, self.skipped = check_cases(
            cases, self.num_classes, c.on_bad_file, what=str(Path(c.root) / "dataset.json")
        )
        if self.test_only:
            self.cases = {"test": kept}
            return
        train, val, test = carve_cases(kept, (c.val_cases, c.test_cases), c.split_seed)
        if c.subset is not None and len(train) > c.subset:
            order = np.random.default_rng([c.split_seed, 2]).permutation(len(train))
            train = [train[i] for i in np.sort(order[: c.subset])]
        self.cases = {"train": train, "valid": val, "test": test or val}
        log.info(
            "%s: train %d, valid %d, test %d%s",
            c.root,
            len(train),
            len(val),
            len(test),
            "" if test else " (test = valid)",
        )

    def _dataset(self, name: str):
        from monai.data import CacheDataset, Dataset

        c = self.config
        train = name == "train"
        label = "transformed" if train else "original"
        transform = volume_transforms(
            c.roi_size,
            train,
            label=label,
            pixdim=c.pixdim,
            intensity=c.intensity,
            ct_window=c.ct_window,
            crop_foreground=c.crop_foreground,
            samples=c.samples_per_volume,
            flip_axes=c.flip_axes,
            flip_prob=c.flip_prob,
        )
        draw_from_numpy_global(transform)
        items = [{"image": it.image, "index": i, "label": it.label} for i, it in enumerate(self.cases[name])]
        if c.cache_rate == 0:
            return Dataset(items, transform)
        return CacheDataset(items, transform, cache_rate=c.cache_rate, progress=False)

    def _loader(self, name: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        """torch's DataLoader with MONAI's collation (MONAI's own DataLoader would re-seed every transform from
        torch's random state when it is built, away from the NumPy state that checkpoints hold; in worker
        processes Lightning's worker seeding sets NumPy's state, which the transforms draw from)."""
        from monai.data import list_data_collate

        dataset = self._dataset(name)
        sampler = epoch_sampler(dataset, self.trainer, self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.config.num_workers,
            collate_fn=list_data_collate,
        )

    def train_dataloader(self):
        return self._loader("train", self.config.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader("valid", 1)

    def test_dataloader(self):
        return self._loader("test", 1)

    def save_split_lists(self, folder: Path) -> None:
        for name, cases in self.cases.items():
            lines = [f"{it.image}\t{it.label}" for it in cases]
            atomic_write_text(folder / f"{name}.txt", "image\tlabel\n" + "\n".join(lines) + "\n")

    def save_stats(self, path: Path) -> None:
        stats = {
            "cases": {k: len(v) for k, v in self.cases.items()},
            "skipped": self.skipped,
            "labels": self.labels,
            "class_texts": self.class_texts,
        }
        atomic_write_text(path, json.dumps(stats, indent=2))
