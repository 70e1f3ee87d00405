"""Resuming a run where it stopped: the random streams in the checkpoint, the epoch's data order, and a
checkpoint checked before Lightning is handed it.

An interrupted run resumed from ``last.ckpt`` (written at the end of every epoch) must end with the metrics of
the run that was never interrupted. Lightning restores the weights, the optimiser, the schedule and the loop
counters, but not the global random states, so a resumed run re-seeded from ``train.seed`` would replay the
random stream of epoch 0 (dropout, augmentation, shuffling). :class:`RandomStateCheckpoint` stores them in
every checkpoint and puts them back during the restore, before anything of the resumed epoch draws. The data
order of samplers that take an epoch (``DistributedSampler``, the P x K identity sampler) is set by the data
modules when they build the loader (:func:`epoch_sampler`), because Lightning 2.6 creates the first resumed
epoch's iterator before it sets the sampler's epoch (Lightning issue #21938).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import Dataset, DistributedSampler

from gpfuse.models.io import CheckpointMismatchError

__all__ = ["RandomStateCheckpoint", "ResumableEarlyStopping", "ValidationHistory", "check_checkpoint", "epoch_sampler"]

KEY = "gpfuse_random_states"


def _collect() -> dict[str, Any]:
    """The global random states as tensors and plain numbers (loadable with ``weights_only=True``)."""
    # the legacy tuple (a dict only for a bit generator other than the global RandomState's MT19937)
    legacy = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    kind, keys, pos, has_gauss, gauss = legacy
    version, state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # the current device's generator only: a run may resume on a machine with fewer GPUs
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, torch.tensor(state, dtype=torch.int64), python_gauss],
    }


def _restore(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        # onto this process's device; a checkpoint of before holds every visible device's state: this device's
        saved, device = states["cuda"], torch.cuda.current_device()
        torch.cuda.set_rng_state(saved[device] if len(saved) > 1 and device < len(saved) else saved[0])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, python_gauss = states["python"]
    random.setstate((version, tuple(state.tolist()), python_gauss))


class ResumableEarlyStopping(EarlyStopping):
    """Early stopping whose decision survives a resume. Lightning restores its counters from the checkpoint but
    not the trainer's ``should_stop``: a run that had stopped early and was killed before its end (testing,
    writing its files) trained one more epoch when resumed. Restored with a wait count at the patience, it stops
    the resumed fit before that epoch."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.wait_count >= self.patience:
            trainer.should_stop = True


class RandomStateCheckpoint(Callback):
    """Saves the process's global random states (torch, the current CUDA device's, NumPy, Python; MONAI's
    transforms draw from NumPy's, see ``tasks/volume_data.py``) in every checkpoint, and restores them when
    ``trainer.fit`` resumes from one. Under DDP the states of rank 0 are saved and restored on every rank, the
    CUDA one onto each rank's own device (the ranks draw the same numbers: same seed, same code path)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = _collect()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING and KEY in checkpoint:
            _restore(checkpoint[KEY])


class ValidationHistory(Callback):
    """Every validated epoch's ``valid/`` figures as logged (the names ``trainer.validate`` returns), kept in
    every checkpoint so that a resumed run has them too: the run reports the best epoch's figures from here
    instead of validating the best checkpoint again after the fit (a second pass over the validation set that
    gives the same numbers: same weights, same data). ``figures(epoch)`` is None for an epoch it did not see (a
    checkpoint written before it existed): the caller then validates the best checkpoint as before."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.epochs[trainer.current_epoch] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")
        }

    def figures(self, epoch: int) -> dict[str, float] | None:
        return self.epochs.get(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": {str(e): m for e, m in self.epochs.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = {int(e): dict(m) for e, m in state_dict["epochs"].items()}


def epoch_sampler(dataset: Dataset, trainer: L.Trainer | None, seed: int) -> DistributedSampler | None:
    """The training sampler under several processes: a shuffling ``DistributedSampler`` (seeded by the run's
    seed) already at the trainer's current epoch, so a resumed run's first epoch has its own order (Lightning
    leaves a DistributedSampler in place). None for one process: the loader shuffles from torch's global
    random state, which :class:`RandomStateCheckpoint` restores."""
    if trainer is None or trainer.world_size == 1:
        return None
    sampler: DistributedSampler = DistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(trainer.current_epoch)
    return sampler


def check_checkpoint(path: Path, task: L.LightningModule) -> None:
    """Refuse a checkpoint that cannot be resumed into ``task``: unreadable, not a Lightning checkpoint, or the
    weights of another model. Read with ``weights_only=True`` (no code in a checkpoint is run)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated, not a torch file, or a pickle that asks for code
        raise CheckpointMismatchError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "epoch" not in checkpoint:
        raise CheckpointMismatchError(f"{path}: not a Lightning checkpoint (no state_dict / epoch)")
    expected = {k: tuple(v.shape) for k, v in task.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    if expected != found:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        raise CheckpointMismatchError(
            f"{path} holds another model's weights: {len(missing)} missing (e.g. "
            f"{missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}), {len(shapes)} "
            f"of another shape (e.g. {shapes[:2]})"
        )
