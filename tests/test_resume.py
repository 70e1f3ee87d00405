"""kill -9 and resume: a run killed mid-epoch (SIGKILL, nothing saved at the kill) and resumed with `gpfuse train
--resume` ends with the metrics.json of the run that was never interrupted, bit for bit; so does a run killed
before its first checkpoint, which `--resume` starts again from epoch 0 (and a plain rerun is refused with that
advice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from conftest import mosi_data, polyp_folder_data, run_gpfuse, tiny_grf
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder

pytestmark = pytest.mark.slow

KILL = textwrap.dedent("""
    import os, signal, sys
    from lightning.pytorch.callbacks import Callback
    from gpfuse.config import load_config
    from gpfuse.tasks.runner import train

    class KillAt(Callback):  # SIGKILL: no handler, no checkpoint, no cleanup
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (trainer.current_epoch, batch_idx) == (int(sys.argv[2]), int(sys.argv[3])):
                os.kill(os.getpid(), signal.SIGKILL)

    train(load_config(sys.argv[1]), callbacks=[KillAt()])
""")


def _run(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == expect, f"{args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("resume")
    root = write_synthetic_mosi(tmp / "mosi", n_videos=10, segments_per_video=4)
    paths = {}
    for name in ("whole", "killed", "early"):
        raw = {
            "name": "tiny",
            "output_dir": str(tmp / name),
            "data": mosi_data(root, tmp / "cache"),
            "model": tiny_grf(dropout=0.2),  # dropout: the random stream matters
            "train": {"max_epochs": 4, "warmup_epochs": 1, "accelerator": "cpu", "seed": 5},
        }
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(raw))
    _gpfuse("train", paths["whole"])
    return paths


def _gpfuse(*args: str | Path) -> None:
    """``gpfuse ARGS`` in this process on one thread, as the killed runs in theirs: the whole run and the resumes
    need no fresh imports (a new process is what a kill needs, not what a resume needs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, output = run_gpfuse(*args)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, output


def _metrics(config: Path) -> dict:
    return json.loads((config.parent / config.stem / "tiny" / "seed_5" / "metrics.json").read_text())


def test_a_run_killed_mid_epoch_resumes_to_the_same_metrics(configs):
    _run("-c", KILL, str(configs["killed"]), "2", "1", expect=-9)  # killed in epoch 2, after its 2nd batch
    run = configs["killed"].parent / "killed" / "tiny" / "seed_5"
    assert not (run / "metrics.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    _gpfuse("train", configs["killed"], "--resume")
    assert _metrics(configs["killed"]) == _metrics(configs["whole"])


def test_a_run_killed_before_its_first_checkpoint_starts_again(configs):
    _run("-c", KILL, str(configs["early"]), "0", "1", expect=-9)
    run = configs["early"].parent / "early" / "tiny" / "seed_5"
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.ckpt").exists()
    code, refused = run_gpfuse("train", configs["early"])  # in this process: a refusal needs no fresh imports
    assert code == 2 and "stopped before its first checkpoint: pass --resume" in " ".join(refused.split())
    _gpfuse("train", configs["early"], "--resume")
    assert _metrics(configs["early"]) == _metrics(configs["whole"])


def test_a_segmentation_run_with_loader_workers_resumes_to_the_same_metrics(tmp_path):
    """Augmentation runs in 2 loader worker processes: a resumed epoch's workers draw what they would have drawn."""
    folder = write_synthetic_polyp_folder(tmp_path / "polyps", n_images=16, size=40, seed=0)
    paths = {}
    for name in ("whole", "killed"):
        raw = {
            "name": "tiny",
            "output_dir": str(tmp_path / name),
            "data": {**polyp_folder_data(folder), "num_workers": 2},
            "model": {"name": "ea_dk", "encoder": "efficientnet_lite0", "encoder_weights": None, "channels": 8},
            "train": {"max_epochs": 3, "warmup_epochs": 1, "accelerator": "cpu", "seed": 5, "optimizer": "adamw"},
        }
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(raw))
    _gpfuse("train", paths["whole"])
    _run("-c", KILL, str(paths["killed"]), "1", "1", expect=-9)  # in epoch 1, after its 2nd batch
    _gpfuse("train", paths["killed"], "--resume")
    assert _metrics(paths["killed"]) == _metrics(paths["whole"])
