"""Lightning DDP for real: 2 CPU processes (gloo) through the `gpfuse` command, for every task kind on demo-size
data. A 2-process training run writes one run folder; its figures and the same model evaluated in this one process
agree (splits of odd size included, so DistributedSampler pads). For one kind, ``gpfuse eval`` under 2 processes
agrees too and the run resumes under 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import mosi_data, tiny_grf
from gpfuse.config import load_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.data.synthetic_reid import write_synthetic_colo_pair
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.tasks.runner import evaluate, run_dir_for

pytestmark = pytest.mark.slow

DDP = ["--set", "train.accelerator=cpu", "--set", "train.devices=2", "--set", "train.strategy=ddp"]


def _gpfuse(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    proc = subprocess.run(
        [sys.executable, "-m", "gpfuse.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, f"gpfuse {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    raw = {
        **raw,
        "output_dir": str(tmp_path / "runs"),
        "train": {"max_epochs": 1, "warmup_epochs": 0, "seed": 7, **raw["train"]},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def _lines(path: Path, header: bool) -> int:
    return len(path.read_text().strip().splitlines()) - int(header)


def _same(a: dict, b: dict, exact: bool) -> None:
    for stage in ("valid", "test"):
        assert set(a[stage]) == set(b[stage]) and a[stage]
        for key, value in a[stage].items():
            if exact:
                assert value == b[stage][key], (stage, key)
            else:
                assert value == pytest.approx(b[stage][key], abs=1e-6), (stage, key)


def _train_evaluate_resume(config: Path, exact: bool = False, commands: bool = False) -> Path:
    """DDP training's evaluation equals one process's, for every kind; with ``commands``, also ``gpfuse eval``
    under DDP and a DDP ``--resume`` (their code paths do not depend on the kind: one kind runs them)."""
    _gpfuse("train", str(config), *DDP)
    run = run_dir_for(load_config(config))
    assert [p.name for p in run.parent.iterdir() if p.is_dir()] == [run.name]  # one run folder, one writer
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    two = json.loads((run / "metrics.json").read_text())
    one = evaluate(run, ["train.devices=1", "train.strategy=auto"])  # this process (the run's config says 2)
    _same(two, one, exact)
    if not commands:
        return run
    _gpfuse("eval", str(run), *DDP)
    _same(json.loads((run / "metrics.json").read_text()), one, exact)
    _gpfuse("train", str(config), *DDP, "--resume", "--set", "train.max_epochs=2")
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["epochs_run"] == 2 and sorted(p.name for p in (run / "logs").iterdir()) == ["attempt_0", "attempt_1"]
    assert (run / "command.txt").read_text().count("--resume") == 1
    return run


def test_regression(tmp_path):
    root = write_synthetic_mosi(tmp_path / "mosi", n_videos=14, segments_per_video=5)
    config = _write(
        tmp_path,
        {
            "name": "ddp_grf",
            "data": mosi_data(root, tmp_path / "cache", batch_size=4),
            "model": tiny_grf(),
            "train": {},
        },
    )
    run = _train_evaluate_resume(config, commands=True)
    assert _lines(run / "splits" / "valid.txt", header=False) % 2 == 1


def test_retrieval(tmp_path):
    root = write_synthetic_colo_pair(tmp_path / "colo", n_videos=13, frames_per_view=3, size=48)
    config = _write(
        tmp_path,
        {
            "name": "ddp_gpf",
            "data": {
                "source": "colo_pair",
                "root": str(root),
                "image_size": [48, 48],
                "batch_size": 4,
                "num_instances": 2,
                "val_ids": 2,
                "eval_batch_size": 3,
            },
            # ImageNet features and pre-LN fusion: embeddings far apart, so rankings have no near-ties that float
            # rounding (thread count, batch composition) could flip
            "model": {
                "name": "gpf_net",
                "image_encoder": "efficientnet_lite0",
                "image_weights": "imagenet",
                "dim": 32,
                "num_fusion_layers": 1,
                "fusion_heads": 4,
                "fusion_ffn": 64,
                "final_layers": 1,
                "final_ffn": 64,
                "max_text_len": 16,
                "norm_first": True,
            },
            "train": {"monitor": "valid/mAP", "monitor_mode": "max"},
        },
    )
    run = _train_evaluate_resume(config, exact=True)
    sizes = [
        _lines(run / "splits" / f"{name}.txt", header=True) for name in ("val_query", "val_gallery", "query", "gallery")
    ]
    assert any(n % 2 for n in sizes), sizes
    assert "query/mAP" in json.loads((run / "metrics.json").read_text())["test"]


def test_segmentation(tmp_path):
    folder = write_synthetic_polyp_folder(tmp_path / "polyp", n_images=19, size=40, seed=0)
    config = _write(
        tmp_path,
        {
            "name": "ddp_ea_dk",
            "data": {
                "source": "polyp_folders",
                "train": [str(folder)],
                "split": "random",
                "test_fraction": 0.25,
                "val_fraction": 0.3,
                "image_size": 32,
                "batch_size": 4,
                "eval_batch_size": 2,
            },
            "model": {"name": "ea_dk", "encoder": "efficientnet_lite0", "encoder_weights": None, "channels": 16},
            "train": {
                "optimizer": "sgd",
                "lr": 0.01,
                "schedule": "poly",
                "monitor": "valid/Dice",
                "monitor_mode": "max",
            },
        },
    )
    run = _train_evaluate_resume(config)
    sizes = [_lines(run / "splits" / f"{name}.txt", header=True) for name in ("valid", "test_held_out")]
    assert any(n % 2 for n in sizes), sizes


def test_segmentation3d(tmp_path):
    root = write_synthetic_decathlon(tmp_path / "dec", n_cases=6, shape=(32, 64, 32), num_classes=3)
    config = _write(
        tmp_path,
        {
            "name": "ddp_bipvl",
            "data": {
                "source": "decathlon",
                "root": str(root),
                "descriptions": str(root / "descriptions.csv"),
                "val_cases": 1,
                "test_cases": 3,
                "roi_size": [32, 64, 32],
                "samples_per_volume": 1,
                "crop_foreground": False,
                "sw_batch_size": 1,
                "cache_rate": 0.0,
            },
            # vision-only: the gathering is the task's, and the text branch would only add start-up time
            "model": {
                "name": "bipvl_seg",
                "feature_size": 12,
                "depths": [1, 2, 1, 1],
                "text": False,
                "alignment": False,
            },
            "train": {"lr": 1e-3, "monitor": "valid/mean_dice", "monitor_mode": "max"},
        },
    )
    run = _train_evaluate_resume(config)
    assert _lines(run / "splits" / "test.txt", header=True) == 3
