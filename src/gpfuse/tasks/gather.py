"""Per-sample evaluation outputs from every process, each sample once: what exact distributed metrics need.

Under DDP each process evaluates its shard of a split (Lightning's ``DistributedSampler``), and the sampler
pads the shards to equal length by repeating samples. :class:`SampleCollector` is a torchmetrics ``Metric``
whose list states are concatenated across processes on ``compute()`` (``dist_reduce_fx="cat"``, torchmetrics
pads and trims tensors of different lengths), and it then drops the padding duplicates by sample index and
orders the samples by index: every process gets the whole split, as one process would have seen it, and so
computes and logs the same value.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["SampleCollector", "first_occurrences", "gate_moments", "pooled_mean_std"]

# Evaluation figures are computed from the gathered split, so every process logs the same value and
# Lightning's advice to average them across processes (sync_dist=True) does not apply to them.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self.log\('(valid|test|gate)/", category=PossibleUserWarning
)
# ... and the padding DistributedSampler adds to evaluation shards is dropped here by sample index.
warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders\. During `trainer\.")


def first_occurrences(index: Tensor) -> Tensor:
    """Positions of the first occurrence of each distinct value of ``index`` (N,), ordered by that value.

    >>> first_occurrences(torch.tensor([4, 0, 2, 0, 4]))
    tensor([1, 2, 0])
    """
    values, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(len(index), device=index.device)
    first = torch.full((len(values),), len(index), dtype=torch.long, device=index.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


class SampleCollector(Metric):
    """Collects per-sample tensors with their dataset index.

    Args:
        keys: names of the values :meth:`update` takes; each is a tensor whose first dimension is the batch.

    Example::

        collector = SampleCollector(["score", "label"])
        collector.update(batch["index"], score=out.score, label=batch["label"])   # every eval step
        whole = collector.compute()   # {"index": (N,), "score": (N,), "label": (N,)}, every sample once
    """

    full_state_update = False
    index: list[Tensor]  # a state (add_state): the batches' indices; one Tensor only while synced, in compute()
    _shapes: dict[str, torch.Size]  # of the last compute(), before torchmetrics squeezes one-element results

    def __init__(self, keys: Iterable[str]) -> None:
        super().__init__()
        self.keys = tuple(keys)
        if not self.keys or len(set(self.keys)) != len(self.keys) or "index" in self.keys:
            raise ValueError(f"keys must be distinct names other than 'index', got {list(self.keys)}")
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for key in self.keys:
            self.add_state(f"value_{key}", default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, **values: Tensor) -> None:
        """Add a batch: ``index`` (B,) dataset indices, ``values[key]`` (B, ...) for every key."""
        if set(values) != set(self.keys):
            raise KeyError(f"SampleCollector expects values {sorted(self.keys)}, got {sorted(values)}")
        index = torch.as_tensor(index).reshape(-1).long().to(self.device)
        for key, value in values.items():
            if len(value) != len(index):
                raise ValueError(f"{key}: {len(value)} rows for {len(index)} indices")
            getattr(self, f"value_{key}").append(value.detach().to(self.device))
        self.index.append(index)

    def compute(self) -> dict[str, Tensor]:
        """``{"index": (N,), key: (N, ...)}`` over all processes, padding duplicates dropped, ordered by index."""
        if isinstance(self.index, list) and not self.index:
            raise ValueError("SampleCollector.compute() before any update()")
        index = dim_zero_cat(self.index).long()
        keep = first_occurrences(index)
        out = {"index": index[keep]}
        for key in self.keys:
            out[key] = dim_zero_cat(getattr(self, f"value_{key}"))[keep]
        self._shapes = {key: value.shape for key, value in out.items()}
        return out

    def _wrap_compute(self, compute: Callable) -> Callable:
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def keep_sample_axis(*args: Any, **kwargs: Any) -> dict[str, Tensor]:
            # torchmetrics squeezes one-element results to 0-d: a split of one sample keeps its (1, ...) shapes
            return {key: value.reshape(self._shapes[key]) for key, value in wrapped(*args, **kwargs).items()}

        return keep_sample_axis


def gate_moments(gate: Tensor) -> Tensor:
    """Per sample (B, 3): the sum, the sum of squares and the number of a gate tensor's (B, ...) values
    (float64), so that gate statistics over a gathered split are exact."""
    flat = gate.detach().double().reshape(len(gate), -1)
    return torch.stack([flat.sum(1), flat.square().sum(1), torch.full_like(flat[:, 0], flat.shape[1])], dim=1)


def pooled_mean_std(moments: Tensor) -> tuple[float, float]:
    """Mean and (unbiased) standard deviation of all values summarised by ``gate_moments`` rows (N, 3)."""
    total, squares, count = moments.double().sum(0).tolist()
    mean = total / count
    var = (squares - count * mean * mean) / max(count - 1, 1)
    return mean, max(var, 0.0) ** 0.5
