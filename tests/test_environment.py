"""Defaults that follow the machine: ``train.precision: auto`` on both CPU branches (native bf16 faked) and on
CUDA (faked), ``environment.json`` in every run folder, files that honour the umask, and progress lines where
the output is not a terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml

from conftest import mosi_data, run_gpfuse, tiny_grf
from gpfuse.config import validate_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.inference.saved_run import SavedRun
from gpfuse.models import MODELS
from gpfuse.tasks.progress import EpochBar, PlainProgress, progress_callback
from gpfuse.tasks.runner import _with_precision, run_dir_for, train
from gpfuse.utils import precision as precision_module
from gpfuse.utils.environment import describe, summary_line
from gpfuse.utils.files import atomic_write_text
from gpfuse.utils.precision import resolve_precision, warn_if_emulated
from gpfuse.utils.progress import counter, duration


@pytest.fixture
def cpu_bf16(monkeypatch):
    """``set(native)``: fake whether the CPU computes bf16 natively; CUDA is absent."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def set_native(native: bool) -> None:
        monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda: native)

    return set_native


# ---- resolving `auto` ------------------------------------------------------------------------------------


def test_auto_on_a_cpu_without_native_bf16_is_fp32_for_every_system(cpu_bf16):
    cpu_bf16(False)
    assert {name: resolve_precision("auto", name) for name in MODELS} == dict.fromkeys(MODELS, "32-true")
    assert resolve_precision("bf16-mixed", "pgf_net") == "bf16-mixed"  # an explicit value is honoured


def test_auto_on_a_cpu_with_native_bf16_is_bf16_only_where_it_measured_faster(cpu_bf16):
    cpu_bf16(True)
    chosen = {name: resolve_precision("auto", name, "cpu") for name in MODELS}
    assert chosen == {name: "bf16-mixed" if name == "pgf_net" else "32-true" for name in MODELS}
    assert resolve_precision("32-true", "pgf_net") == "32-true"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_cuda_is_bf16_where_the_gpu_has_it_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda: False)
    assert resolve_precision("auto", "grf") == expected
    assert resolve_precision("auto", "grf", "cpu") == "32-true"  # accelerator cpu: the CPU's branch


def test_emulated_bf16_is_said_once_loudly(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING):
        warn_if_emulated("bf16-mixed")
        warn_if_emulated("32-true")
    assert len(caplog.records) == 1 and "no native bf16" in caplog.text and "40x" in caplog.text


# ---- a run records where it ran and the precision it resolved ---------------------------------------------


@pytest.fixture(scope="module")
def mosi_synth(tmp_path_factory) -> Path:
    return write_synthetic_mosi(tmp_path_factory.mktemp("data") / "mosi", n_videos=10, segments_per_video=4)


def _config(tmp_path, root, **train):
    return validate_config(
        {
            "name": "tiny",
            "output_dir": str(tmp_path / "runs"),
            "data": mosi_data(root, tmp_path / "cache", text_len=8),
            "model": tiny_grf(),
            "train": {"max_epochs": 2, "warmup_epochs": 0, "accelerator": "cpu", **train},
        },
        "test",
    )


def test_a_run_keeps_the_precision_auto_chose_and_evaluates_and_predicts_with_it(
    tmp_path, mosi_synth, cpu_bf16, monkeypatch
):
    cpu_bf16(True)
    monkeypatch.setattr(precision_module, "CPU_BF16_FASTER", frozenset({"grf"}))  # the bf16 branch, on a tiny GRF
    cfg = _config(tmp_path, mosi_synth)
    assert cfg.train.precision == "auto"  # the default
    train(cfg)
    run = run_dir_for(cfg)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["precision"] == "bf16-mixed"
    assert yaml.safe_load((run / "model" / "gpfuse_run.yaml").read_text())["train"]["precision"] == "bf16-mixed"
    env = json.loads((run / "environment.json").read_text())
    assert env["precision"] == "bf16-mixed" and env["precision_requested"] == "auto"
    assert env["cpu"] and set(env["cpu_flags"]) >= {"avx2", "avx512_bf16"} and env["threads"] >= 1
    assert env["versions"]["torch"] == torch.__version__
    # the predictor scores in the run's precision, as eval does
    autocast = SavedRun.read(run).autocast()
    assert isinstance(autocast, torch.autocast) and autocast.fast_dtype == torch.bfloat16
    # the machine changes (no native bf16 now): a resume keeps bf16, a new run of the same config is fp32
    cpu_bf16(False)
    assert _with_precision(cfg, run, resume=True).train.precision == "bf16-mixed"
    assert _with_precision(cfg, run_dir_for(cfg, seed=7), resume=False).train.precision == "32-true"


def test_a_run_on_a_cpu_without_native_bf16_trains_in_fp32_and_its_files_are_readable(tmp_path, mosi_synth, cpu_bf16):
    cpu_bf16(False)
    previous = os.umask(0o022)
    try:
        cfg = _config(tmp_path, mosi_synth, max_epochs=1)
        train(cfg)
    finally:
        os.umask(previous)
    run = run_dir_for(cfg)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["precision"] == "32-true"
    assert json.loads((run / "environment.json").read_text())["precision"] == "32-true"
    assert SavedRun.read(run).autocast().__class__.__name__ == "nullcontext"
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    assert {"metrics.json", "config.yaml", "environment.json", "model/model.safetensors"} <= set(modes)
    unreadable = sorted(name for name, mode in modes.items() if mode != 0o644)
    assert not unreadable, f"not 0644 under umask 0022: {unreadable}"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_info_and_the_environment_line_name_the_cpu_and_what_auto_chooses(cpu_bf16):
    cpu_bf16(False)
    code, out = run_gpfuse("info")
    assert code == 0, out
    assert "train.precision auto here:" in out and "pgf_net 32-true" in out
    env = describe("32-true", "auto")
    line = summary_line(env)
    assert line.startswith(env["cpu"]) and f"{env['threads']} threads" in line and "precision 32-true (auto)" in line


# ---- progress where the output is not a terminal ------------------------------------------------------


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("valid/loss", self.layer(batch[0]).pow(2).mean())

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self.layer(batch[0]).pow(2).mean())

    def on_train_end(self) -> None:
        self.print("a task's own message")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_plain_progress_prints_epoch_step_elapsed_eta_and_loss(tmp_path):
    stream = io.StringIO()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 4)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[PlainProgress(interval=0.0, stream=stream)],
        default_root_dir=tmp_path,
    )
    trainer.fit(_Tiny(), loader, loader)
    lines = stream.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("train epoch")]
    assert len(steps) == 3 * 3 + 3  # every step (interval 0) and each epoch's end
    assert steps[0].startswith("train epoch 1/3 step 1/3 (33%) elapsed") and " eta " in steps[0]
    assert " loss " in steps[0]
    assert steps[-1].startswith("train epoch 3/3 step 3/3 (100%)") and "epoch loss" in steps[-1]  # not "2/2"
    assert "eta 0s" in steps[-1]
    assert any(line.startswith("validation step 3/3") for line in lines)
    assert sum(line.startswith("validation done") for line in lines) == 3  # no line for the sanity check
    assert "a task's own message" in lines
    stream.truncate(0)
    stream.seek(0)
    trainer.test(_Tiny(), loader, verbose=False)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("test step 1/3 elapsed") and lines[-1].startswith("test done in")


def test_a_terminal_gets_the_rich_bar_counting_epochs_from_one():
    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = progress_callback(log := io.StringIO())
    assert isinstance(plain, PlainProgress) and plain.stream is log  # its lines go where it was asked to print
    bar = progress_callback(_Tty())
    assert isinstance(bar, EpochBar)
    bar._trainer = SimpleNamespace(max_epochs=5)
    assert bar._get_train_description(4).strip() == "Epoch 5/5"


def test_counter_prints_lines_and_a_last_one_off_a_terminal():
    stream = io.StringIO()
    with counter("predicting images", 4, stream=stream, interval=0.0) as advance:
        advance(1)
        advance(3)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("predicting images 1/4 elapsed") and " eta " in lines[0]
    assert lines[-1].startswith("predicting images 4/4") and lines[-1].endswith("(done)")
    assert [duration(4.2), duration(65), duration(3725)] == ["4s", "1m05s", "1h02m05s"]
