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


def test_poly_decay_by_hand_and_the_optimisers():
    import torch

    from gpfuse.tasks.schedules import build_optimizer, lr_lambda, warmup_poly

    assert warmup_poly(0, 0, 10) == pytest.approx(1.0)
    assert warmup_poly(5, 0, 10, 0.9) == pytest.approx(0.5**0.9)
    assert warmup_poly(10, 0, 10) == 0.0 and warmup_poly(15, 0, 10) == 0.0  # clamped after the end
    assert warmup_poly(0, 2, 12) == pytest.approx(0.5) and warmup_poly(2, 2, 12) == pytest.approx(1.0)
    assert warmup_poly(7, 2, 12, 1.0) == pytest.approx(0.5)  # linear with power 1: 5 of 10 decay steps
    assert lr_lambda("poly", 0, 10, 1e-3, 0.0, 0.9)(5) == pytest.approx(0.5**0.9)
    assert lr_lambda("warmup_cosine", 4, 20, 1e-3, 1e-6)(0) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_lambda("step", 0, 10, 1e-3, 0.0)
    sgd = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", 4e-4, 1e-5, momentum=0.9)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 4e-4
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], "lamb", 1e-3, 0.0)
