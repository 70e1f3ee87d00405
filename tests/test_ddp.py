"""Lightning DDP for real: 2 CPU processes (gloo) through the `gpfuse` command, for every task kind on demo-size
data. A 2-process training run writes one run folder; its figures and the same model evaluated in this one process
agree (splits of odd size included, so DistributedSampler pads). For one kind, ``gpfuse eval`` under 2 processes
agrees too and the run resumes under 2 processes.

Two ways of starting the processes are both used: Lightning's own launcher (``gpfuse train ... devices=2``, which
starts rank 1 as a new Python process) for the first run, and processes started from outside as torchrun or SLURM
start them (each with its rank in its environment, so Lightning launches nothing) for the others. Those are forked
from this test process, so they skip the 10-12 s of imports a new process pays here (issue 24)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from conftest import mosi_data, tiny_bipvl_model, tiny_grf
from gpfuse import cli
from gpfuse.config import load_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.data.synthetic_reid import write_synthetic_colo_pair
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.tasks.runner import evaluate, run_dir_for

pytestmark = pytest.mark.slow

DDP = ["--set", "train.accelerator=cpu", "--set", "train.devices=2", "--set", "train.strategy=ddp"]


def _gpfuse(*args: str) -> None:
    """``gpfuse ARGS`` in a new process: with ``DDP``, Lightning's launcher starts the second one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    proc = subprocess.run(
        [sys.executable, "-m", "gpfuse.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, f"gpfuse {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gpfuse_ranks(tmp_path: Path, *args: str, world: int = 2) -> None:
    """``gpfuse ARGS`` as ``world`` processes started from outside, as ``torchrun --nproc-per-node 2 -m gpfuse.cli
    ARGS`` starts them (torchelastic's environment: each process has its rank, and Lightning launches nothing),
    forked from this process: each rank's output goes to ``tmp_path/rank_<r>.log``."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world)}
    env |= {"LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0", "TORCHELASTIC_RUN_ID": "gpfuse-test"}
    pids = []
    for rank in range(world):
        log = tmp_path / f"rank_{rank}.log"
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
                torch.set_num_threads(1)
                rank_zero_only.rank = rank  # what Lightning reads from the environment at import in a new process
                sys.argv = ["gpfuse", *args]
                try:
                    cli.main()
                    code = 0
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    logs = "\n".join(f"--- rank {r}:\n{(tmp_path / f'rank_{r}.log').read_text()[-3000:]}" for r in range(world))
    assert codes == [0] * world, f"gpfuse {' '.join(args)} exited {codes}:\n{logs}"


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
    under DDP and a DDP ``--resume`` (their code paths do not depend on the kind: one kind runs them). The training
    is started by Lightning's launcher with ``commands``, else from outside."""
    if commands:
        _gpfuse("train", str(config), *DDP)
    else:
        _gpfuse_ranks(config.parent, "train", str(config), *DDP)
    run = run_dir_for(load_config(config))
    assert [p.name for p in run.parent.iterdir() if p.is_dir()] == [run.name]  # one run folder, one writer
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    two = json.loads((run / "metrics.json").read_text())
    one = evaluate(run, ["train.devices=1", "train.strategy=auto"])  # this process (the run's config says 2)
    _same(two, one, exact)
    if not commands:
        return run
    _gpfuse_ranks(config.parent, "eval", str(run), *DDP)
    _same(json.loads((run / "metrics.json").read_text()), one, exact)
    first_model = (run / "model" / "model.safetensors").read_bytes()
    _gpfuse_ranks(config.parent, "train", str(config), *DDP, "--resume", "--set", "train.max_epochs=2")
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["epochs_run"] == 2 and sorted(p.name for p in (run / "logs").iterdir()) == ["attempt_0", "attempt_1"]
    assert (run / "command.txt").read_text().count("--resume") == 1
    # the second epoch only, trained from the first one's state, and reported as its model evaluates
    with (run / "logs" / "attempt_1" / "metrics.csv").open() as f:
        trained = {row["epoch"] for row in csv.DictReader(f) if any(row[k] for k in row if k.startswith("train/"))}
    assert trained == {"1"}
    assert (run / "model" / "model.safetensors").read_bytes() != first_model
    _same(resumed, evaluate(run, ["train.devices=1", "train.strategy=auto"]), exact)
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
            "model": tiny_bipvl_model(text=False, alignment=False),
            "train": {"lr": 1e-3, "monitor": "valid/mean_dice", "monitor_mode": "max"},
        },
    )
    run = _train_evaluate_resume(config)
    assert _lines(run / "splits" / "test.txt", header=True) == 3
