"""What a checkpoint carries for a faithful resume, unit by unit and without training: the random states, the
early-stopping decision, each epoch's validation figures, the epoch's data order under several processes, and
the checks on a checkpoint before Lightning is handed it (tests/test_resume.py resumes real runs)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DistributedSampler

from gpfuse.models.io import CheckpointMismatchError
from gpfuse.tasks import resume
from gpfuse.tasks.resume import (
    RandomStateCheckpoint,
    ResumableEarlyStopping,
    ValidationHistory,
    check_checkpoint,
    epoch_sampler,
)


def _trainer(fn=TrainerFn.FITTING, **fields) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(fn=fn), sanity_checking=False, should_stop=False, **fields)


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), [random.random() for _ in range(3)]


def test_random_states_come_back_from_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # NumPy's cached second Gaussian is part of its state
    torch.save({"states": resume._collect()}, tmp_path / "c.pt")
    first = _draws()
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    resume._restore(torch.load(tmp_path / "c.pt", weights_only=True)["states"])
    assert _draws() == first


def test_the_random_state_callback_saves_always_and_restores_only_when_a_fit_resumes():
    callback, checkpoint = RandomStateCheckpoint(), {}
    torch.manual_seed(5)
    callback.on_save_checkpoint(_trainer(), None, checkpoint)
    expected = torch.rand(2)
    callback.on_load_checkpoint(_trainer(TrainerFn.VALIDATING), None, checkpoint)  # eval/test: left alone
    assert not torch.equal(torch.rand(2), expected)
    callback.on_load_checkpoint(_trainer(), None, {})  # a checkpoint without them: left alone
    callback.on_load_checkpoint(_trainer(), None, checkpoint)
    assert torch.equal(torch.rand(2), expected)


@pytest.mark.parametrize(("wait", "stops"), [(0, False), (1, False), (2, True), (3, True)])
def test_early_stopping_restored_at_its_patience_stops_the_resumed_fit(wait, stops):
    stopper = ResumableEarlyStopping(monitor="valid/loss", patience=2)
    stopper.wait_count = wait
    trainer = _trainer()
    stopper.on_train_start(trainer, None)
    assert trainer.should_stop is stops


def test_validation_history_keeps_each_fitted_epochs_figures_across_a_checkpoint(tmp_path):
    history = ValidationHistory()
    metrics = {"valid/Dice": torch.tensor(0.25), "valid/mAP/dataloader_idx_1": torch.tensor(0.5), "train/loss": 1.0}
    history.on_validation_end(_trainer(current_epoch=0, callback_metrics=metrics), None)
    history.on_validation_end(_trainer(current_epoch=1, callback_metrics={"valid/Dice": torch.tensor(0.75)}), None)
    sanity = _trainer(current_epoch=2, callback_metrics={"valid/Dice": torch.tensor(0.0)})
    sanity.sanity_checking = True
    history.on_validation_end(sanity, None)
    history.on_validation_end(_trainer(TrainerFn.VALIDATING, current_epoch=3, callback_metrics=metrics), None)
    assert history.figures(0) == {"valid/Dice": 0.25, "valid/mAP/dataloader_idx_1": 0.5}  # as logged
    assert history.figures(1) == {"valid/Dice": 0.75}
    assert history.figures(2) is None and history.figures(3) is None
    torch.save({"history": history.state_dict()}, tmp_path / "c.pt")
    restored = ValidationHistory()
    restored.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["history"])
    assert restored.epochs == history.epochs


def test_the_epoch_sampler_is_the_shard_of_the_current_epoch_under_several_processes():
    data = list(range(10))
    assert epoch_sampler(data, None, 0) is None and epoch_sampler(data, _trainer(world_size=1), 0) is None
    sampler = epoch_sampler(data, _trainer(world_size=2, global_rank=1, current_epoch=3), seed=7)
    reference = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=7)
    reference.set_epoch(3)
    assert list(sampler) == list(reference) and len(sampler) == 5
    reference.set_epoch(0)
    assert list(sampler) != list(reference)
    other_rank = epoch_sampler(data, _trainer(world_size=2, global_rank=0, current_epoch=3), seed=7)
    assert sorted([*sampler, *other_rank]) == data


def test_a_checkpoint_is_checked_before_it_is_resumed(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, good)
    check_checkpoint(good, model)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match=r"text\.ckpt: not a readable checkpoint \(RuntimeError: mmap"):
        check_checkpoint(tmp_path / "text.ckpt", model)
    for name, content in (("list", [1, 2]), ("weights", {"state_dict": {}}), ("epoch", {"epoch": 0})):
        torch.save(content, tmp_path / f"{name}.ckpt")
        with pytest.raises(CheckpointMismatchError, match=rf"{name}\.ckpt: not a Lightning checkpoint"):
            check_checkpoint(tmp_path / f"{name}.ckpt", model)
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2))
    state = {k: v for k, v in other.state_dict().items() if k != "1.bias"}
    torch.save({"state_dict": state, "epoch": 0}, tmp_path / "other.ckpt")
    expected = (
        r"other\.ckpt holds another model's weights: 1 missing \(e\.g\. \['1\.bias'\]\), 2 unexpected "
        r"\(e\.g\. \['2\.bias', '2\.weight'\]\), 3 of another shape \(e\.g\. \['0\.bias', '0\.weight'\]\)"
    )
    with pytest.raises(CheckpointMismatchError, match=expected):
        check_checkpoint(tmp_path / "other.ckpt", model)


def test_the_cuda_generator_is_saved_and_restored_for_this_process_device_only(monkeypatch):
    """On a (faked) machine with 2 GPUs, this process on device 1: one state saved; restored onto device 1, also
    from a checkpoint that held every device's state, and on a machine with fewer GPUs than were saved."""
    states = {0: torch.tensor([10], dtype=torch.uint8), 1: torch.tensor([11], dtype=torch.uint8)}
    restored: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[1])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(int(state[0])))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every device's state was read"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("every device's state was set"))
    saved = resume._collect()
    assert [int(s[0]) for s in saved["cuda"]] == [11]
    resume._restore(saved)
    resume._restore({**saved, "cuda": [states[0], states[1]]})  # an older checkpoint: every device's state
    resume._restore({**saved, "cuda": [states[0]]})  # saved on device 0 (rank 0's): onto this device
    assert restored == [11, 11, 10]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)  # a device beyond those saved: rank 0's state
    resume._restore({**saved, "cuda": [states[0], states[1]]})
    resume._restore({**saved, "cuda": []})  # saved on a machine without GPUs: the GPU generator is left alone
    assert restored == [11, 11, 10, 10]
