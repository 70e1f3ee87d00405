"""Learning-rate schedule: warm-up then cosine, values by hand."""
from __future__ import annotations

import math

import pytest

from gpfuse.tasks.schedules import warmup_cosine


def test_warmup_then_cosine_by_hand():
    lr, min_lr = 1e-3, 1e-6
    assert warmup_cosine(0, 4, 20, lr, min_lr) == pytest.approx(0.25)  # (0 + 1) / 4
    assert warmup_cosine(3, 4, 20, lr, min_lr) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20, lr, min_lr) == pytest.approx(1.0)  # cosine starts at lr
    mid = (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * 0.5))) / lr  # halfway through 16 units
    assert warmup_cosine(12, 4, 20, lr, min_lr) == pytest.approx(mid)
    assert warmup_cosine(20, 4, 20, lr, min_lr) == pytest.approx(min_lr / lr)
    assert warmup_cosine(50, 4, 20, lr, min_lr) == pytest.approx(min_lr / lr)  # clamped after the end
    assert warmup_cosine(0, 0, 10, lr, min_lr) == pytest.approx(1.0)  # no warm-up


def test_retrieval_task_warms_up_per_step():
    import torch

    from gpfuse.tasks.retrieval import RetrievalTask

    task = RetrievalTask(torch.nn.Linear(2, 2), lr=1e-3, max_epochs=10, warmup_epochs=2)
    task.trainer = type("T", (), {"estimated_stepping_batches": 100})()  # 10 steps per epoch
    config = task.configure_optimizers()
    schedule = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    assert schedule.get_last_lr()[0] == pytest.approx(1e-3 / 20)  # step 0 of a 20-step warm-up
