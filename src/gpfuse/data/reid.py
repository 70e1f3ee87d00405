"""Common parts of the re-identification data: items, splits, image reading, transforms, dataset, sampler.

Layout loaders (:mod:`gpfuse.data.colo_pair`, :mod:`gpfuse.data.market1501`, :mod:`gpfuse.data.cuhk01`)
return a :class:`ReIDSplit` of :class:`ReIDItem` lists, like torchreid's ``(img_path, pid, camid)`` lists.
Transforms use PIL, numpy and torch only (no torchvision); their random draws come from a given
``torch.Generator`` or from torch's global RNG, so Lightning's seeding (and worker seeding) applies.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, Sampler

from gpfuse.data.decoded_files import DecodedFiles
from gpfuse.data.images import IMAGENET_MEAN, IMAGENET_STD, check_image, read_image

__all__ = [
    "ImageTransform",
    "RandomIdentitySampler",
    "ReIDImageDataset",
    "ReIDItem",
    "ReIDSplit",
    "carve_validation",
    "relabel_train",
]

log = logging.getLogger(__name__)


class ReIDItem(NamedTuple):
    """One image: ``path``, identity ``pid``, camera/view ``camid`` (0-based) and ``group`` (the video for
    Colo-Pair, the identity string otherwise; reports are looked up by it)."""

    path: str
    pid: int
    camid: int
    group: str


@dataclass(frozen=True)
class ReIDSplit:
    """Train / query / gallery item lists (+ an optional validation query / gallery carved from training
    identities, never from the test ones).

    Train pids are relabelled ``0..num_train_pids-1`` (see :func:`relabel_train`); query, gallery and
    validation items keep the layout's pids (only equality matters there).
    """

    train: list[ReIDItem]
    query: list[ReIDItem]
    gallery: list[ReIDItem]
    val_query: list[ReIDItem] = field(default_factory=list)
    val_gallery: list[ReIDItem] = field(default_factory=list)
    name: str = "reid"

    def __post_init__(self) -> None:
        pids = sorted({it.pid for it in self.train})
        if pids != list(range(len(pids))):
            raise ValueError(
                f"{self.name}: train pids must be relabelled 0..N-1 (use relabel_train), "
                f"got {pids[:5]}{'...' if len(pids) > 5 else ''}"
            )

    @property
    def num_train_pids(self) -> int:
        return len({it.pid for it in self.train})

    @property
    def has_val(self) -> bool:
        return bool(self.val_query or self.val_gallery)

    def check(self) -> ReIDSplit:
        """Raise ValueError naming the first empty split (validation only when it is used); return self."""
        names = ["train", "query", "gallery"] + (["val_query", "val_gallery"] if self.has_val else [])
        for name in names:
            if not getattr(self, name):
                raise ValueError(f"{self.name}: split {name!r} is empty")
        return self

    def summary(self) -> str:
        """One line per non-empty split: identities and images."""
        parts = []
        for name in ("train", "query", "gallery", "val_query", "val_gallery"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}: {len({it.pid for it in items})} ids / {len(items)} images")
        return f"{self.name}: " + ", ".join(parts)


def relabel_train(items: Sequence[ReIDItem]) -> list[ReIDItem]:
    """Map the pids of ``items`` to ``0..N-1`` in increasing order of the original pid."""
    mapping = {pid: i for i, pid in enumerate(sorted({it.pid for it in items}))}
    return [it._replace(pid=mapping[it.pid]) for it in items]


def carve_validation(
    items: Sequence[ReIDItem], num_ids: int, seed: int | Sequence[int] = 0, what: str = "train"
) -> tuple[list[ReIDItem], list[ReIDItem], list[ReIDItem]]:
    """Move ``num_ids`` identities (seeded choice among those seen by >= 2 cameras) out of ``items``.

    Returns ``(rest, val_query, val_gallery)``: for each chosen identity the images of its lowest camid
    are the queries and its other images the gallery (camera A -> B for CUHK01, view 1 -> 2 for Colo-Pair).
    """
    if num_ids < 0:
        raise ValueError(f"number of validation identities must be >= 0, got {num_ids}")
    if num_ids == 0:
        return list(items), [], []
    cams: dict[int, set[int]] = defaultdict(set)
    for it in items:
        cams[it.pid].add(it.camid)
    eligible = sorted(pid for pid, c in cams.items() if len(c) >= 2)
    if num_ids >= len(cams) or num_ids > len(eligible):
        raise ValueError(
            f"cannot carve {num_ids} validation identities from {what}: it has {len(cams)} "
            f"identities, {len(eligible)} of them seen by >= 2 cameras (at least one must stay)"
        )
    chosen = set(np.random.default_rng(seed).choice(eligible, size=num_ids, replace=False).tolist())
    first_cam = {pid: min(cams[pid]) for pid in chosen}
    rest = [it for it in items if it.pid not in chosen]
    val_query = [it for it in items if it.pid in chosen and it.camid == first_cam[it.pid]]
    val_gallery = [it for it in items if it.pid in chosen and it.camid != first_cam[it.pid]]
    return rest, val_query, val_gallery


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"{what} must be a positive int or (H, W), got {size!r}")
    return pair


class ImageTransform:
    """PIL image -> normalised float tensor of shape 3 x H x W.

    Train: resize to (H, W), zero-pad ``pad`` pixels, random crop back to (H, W), horizontal flip with
    probability ``flip_p``. Eval: resize only. Then scale to [0, 1] and normalise with ``mean``/``std``
    (ImageNet by default). Each train call draws exactly two crop offsets then one flip number, from
    ``generator`` (call argument, else the constructor's, else torch's global RNG). Leave ``generator``
    None under DataLoader workers: each worker would copy one generator and repeat the same draws, while
    torch seeds each worker's global RNG differently (and Lightning's ``seed_everything`` seeds the base).

    Args:
        size: (H, W) or one int; 224 x 224 for Colo-Pair (official), e.g. (256, 128) for people.
    """

    def __init__(
        self,
        size: int | Sequence[int] = (224, 224),
        train: bool = False,
        pad: int = 10,
        flip_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _pair(size, "size")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got mean={mean!r} std={std!r}")
        self.train, self.pad, self.flip_p, self.generator = train, pad, flip_p, generator
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __repr__(self) -> str:
        mode = f"train, pad={self.pad}, flip_p={self.flip_p}" if self.train else "eval"
        return f"ImageTransform(size={self.size}, {mode})"

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = self.size
        image = image.convert("RGB")
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if self.train:
            g = generator if generator is not None else self.generator
            top, left = torch.randint(0, 2 * self.pad + 1, (2,), generator=g).tolist()
            flip = torch.rand((), generator=g).item() < self.flip_p
            if self.pad:
                x = torch.nn.functional.pad(x, (self.pad,) * 4, value=0.0)[:, top : top + h, left : left + w]
            if flip:
                x = x.flip(-1)
        return (x - self.mean) / self.std


class ReIDImageDataset(Dataset):
    """Items -> ``{"image": (3, H, W) float, "pid": long, "camid": long, "index": long, "group": str}``,
    plus ``"report": str`` when ``reports`` (group -> report text) is given.

    Every file is checked once here by decoding it (:func:`check_image`): with ``on_error="raise"`` the first bad file
    raises ValueError; with ``"skip"`` bad files are dropped and a WARNING lists them (``num_skipped``).
    ``index`` and :attr:`pids` refer to the kept items, so give ``dataset.pids`` to the sampler.
    """

    def __init__(
        self,
        items: Sequence[ReIDItem],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        reports: dict[str, str] | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be one of ['raise', 'skip'], got {on_error!r}")
        self.transform = transform if transform is not None else ImageTransform()
        kept, bad = [], []
        with DecodedFiles() as known:
            reasons = [check_image(it.path, known) for it in items]
        for it, reason in zip(items, reasons):
            if reason is None:
                kept.append(it)
            elif on_error == "raise":
                raise ValueError(f"{it.path}: cannot read image ({reason}); use on_error='skip' to drop it")
            else:
                bad.append(f"{it.path} ({reason})")
        if bad:
            log.warning("skipped %d unreadable image(s): %s", len(bad), "; ".join(bad))
        self.items: list[ReIDItem] = kept
        self.num_skipped = len(bad)
        self.reports: list[str] | None = None
        if reports is not None:
            missing = sorted({it.group for it in kept} - set(reports))
            if missing:
                raise ValueError(f"no report for group(s) {missing[:10]}{'...' if len(missing) > 10 else ''}")
            self.reports = [reports[it.group] for it in kept]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def pids(self) -> list[int]:
        return [it.pid for it in self.items]

    def __getitem__(self, index: int) -> dict:
        it = self.items[index]
        out = {
            "image": self.transform(read_image(it.path)),
            "pid": torch.tensor(it.pid, dtype=torch.long),
            "camid": torch.tensor(it.camid, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
            "group": it.group,
        }
        if self.reports is not None:
            out["report"] = self.reports[index]
        return out


class RandomIdentitySampler(DistributedSampler):
    """torchreid's P x K sampler: each run of ``batch_size`` indices holds ``P = batch_size // num_instances``
    identities with ``K = num_instances`` images each (drawn with replacement for identities with fewer than
    K images; leftovers beyond a multiple of K are dropped for the epoch).

    Use with ``DataLoader(batch_size=batch_size, sampler=sampler)``. The order depends only on ``seed`` and
    the epoch given to :meth:`set_epoch` (Lightning calls it each epoch); ``len`` is the exact number of
    indices this epoch yields (a multiple of ``batch_size``).

    Several processes (``num_replicas`` > 1): every process draws the same epoch and takes whole P x K
    batches of it in turn (process ``rank`` the batches ``rank, rank + num_replicas, ...``, all processes
    the same number), as fast-reid's identity samplers do; so ``batch_size`` is per process. It subclasses
    ``DistributedSampler`` only so that Lightning leaves it in place instead of striding its indices (which
    would split each identity's K images over the processes); none of that class's logic is used.
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        Sampler.__init__(self)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas={num_replicas}), got {rank}")
        self.num_replicas, self.rank = num_replicas, rank
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ValueError(
                f"batch_size must be a positive multiple of num_instances, got batch_size={batch_size}, "
                f"num_instances={num_instances}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.batch_size, self.num_instances, self.seed = batch_size, num_instances, seed
        self.num_pids_per_batch = batch_size // num_instances
        index: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(pids):
            index[int(pid)].append(i)
        self._index = dict(sorted(index.items()))
        n = len(self._index)
        if n < max(2, self.num_pids_per_batch):
            raise ValueError(
                f"RandomIdentitySampler needs at least max(2, batch_size // num_instances = "
                f"{self.num_pids_per_batch}) identities, got {n}"
            )
        self.epoch = 0
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        k, p = self.num_instances, self.num_pids_per_batch
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks: dict[int, list[list[int]]] = {}
        for pid, idxs in self._index.items():
            arr = np.asarray(idxs)
            arr = rng.choice(arr, size=k, replace=True) if len(arr) < k else rng.permutation(arr)
            chunks[pid] = [arr[i * k : (i + 1) * k].tolist() for i in range(len(arr) // k)]
        available = list(self._index)
        out: list[int] = []
        while len(available) >= p:
            selected = [available[i] for i in rng.choice(len(available), size=p, replace=False)]
            for pid in selected:
                out.extend(chunks[pid].pop(0))
                if not chunks[pid]:
                    available.remove(pid)
        self._cache = (self.epoch, out)
        return out

    def _mine(self) -> list[int]:
        """This process's share of the epoch: whole batches, the same number on every process."""
        indices, b = self._indices(), self.batch_size
        if self.num_replicas == 1:
            return indices
        batches = len(indices) // b // self.num_replicas
        return [
            i
            for k in range(batches)
            for i in indices[(k * self.num_replicas + self.rank) * b : (k * self.num_replicas + self.rank + 1) * b]
        ]

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())
