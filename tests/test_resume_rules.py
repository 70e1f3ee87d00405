"""What ``gpfuse train --resume`` accepts (issue 25): a finished run is left as it is, byte for byte, and said so
(several seeds after one crashed included); a setting that changes what the run's files describe is refused,
naming its dotted key, except where it runs and more epochs; the run folder keeps one config; and a run that
stopped early stays stopped when it is resumed after a crash that came before its end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from conftest import run_gpfuse, tiny_grf_run
from gpfuse.config import dump_config, validate_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.inference.saved_run import RUN_CONFIG
from gpfuse.tasks.runner import _finished, evaluate, load_run_config, run_dir_for, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mosi(tmp_path_factory) -> Path:
    return write_synthetic_mosi(tmp_path_factory.mktemp("data") / "mosi", n_videos=10, segments_per_video=4)


def _raw(tmp_path: Path, mosi: Path, **train) -> dict:
    return tiny_grf_run(tmp_path, mosi, **{"max_epochs": 2, "seed": 1, **train})


def _yaml(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


class _CrashAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class _CountValidations(Callback):
    """How many validation passes ran outside the fit (``trainer.validate``)."""

    def __init__(self) -> None:
        self.after_fit = 0

    def on_validation_start(self, trainer, pl_module):
        self.after_fit += trainer.state.fn == TrainerFn.VALIDATING


def test_the_best_epochs_validation_figures_come_from_the_fit_and_equal_an_evaluation(tmp_path, mosi, recwarn):
    cfg = validate_config(_raw(tmp_path, mosi), "test")
    counter = _CountValidations()
    metrics = train(cfg, callbacks=[counter])
    # fewer batches than Lightning's step logging interval, which nothing of gpfuse uses: no warning about it
    assert not [w for w in recwarn if "logging interval" in str(w.message)]
    run = run_dir_for(cfg)
    assert counter.after_fit == 0  # the best checkpoint is not validated a second time
    history = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["ValidationHistory"]
    assert sorted(history["epochs"]) == ["0", "1"]
    best = history["epochs"][str(metrics["best_epoch"])]
    assert metrics["valid"] == {k.removeprefix("valid/"): v for k, v in best.items()}
    assert evaluate(run)["valid"] == pytest.approx(metrics["valid"], abs=1e-6)  # the saved model, validated anew

    # a checkpoint written before the history existed: the best checkpoint is validated after the fit, as before
    for name in ("last", "best"):
        checkpoint = torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=True)
        del checkpoint["callbacks"]["ValidationHistory"]
        torch.save(checkpoint, run / "checkpoints" / f"{name}.ckpt")
    (run / "metrics.json").unlink()
    counter = _CountValidations()
    resumed = train(cfg, resume=True, callbacks=[counter])
    assert counter.after_fit == 1
    assert resumed["valid"] == pytest.approx(metrics["valid"], abs=1e-6)


def test_a_finished_run_is_left_as_it_is_and_said_so(tmp_path, mosi, caplog):
    config = _yaml(tmp_path, _raw(tmp_path, mosi))
    code, out = run_gpfuse("train", config)
    assert code == 0, out
    run = tmp_path / "runs" / "tiny" / "seed_1"
    before = _files(run)
    code, out = run_gpfuse("train", config, "--resume")
    assert code == 0, out
    assert f"{run} is finished (metrics.json; nothing to add): left as it is" in caplog.text
    assert _files(run) == before


def test_seeds_resumed_after_one_crashed_leave_the_finished_ones_alone(tmp_path, mosi):
    raw = _raw(tmp_path, mosi)
    config = _yaml(tmp_path, raw)
    code, out = run_gpfuse("train", config, "--seeds", "1")
    assert code == 0, out
    with pytest.raises(RuntimeError, match="simulated crash"):  # seed 2 dies in its second epoch
        train(validate_config({**raw, "train": {**raw["train"], "seed": 2}}, "test"), callbacks=[_CrashAtEpoch(1)])
    first = _files(tmp_path / "runs" / "tiny" / "seed_1")
    code, out = run_gpfuse("train", config, "--seeds", "1,2", "--resume")
    assert code == 0, out
    assert _files(tmp_path / "runs" / "tiny" / "seed_1") == first
    second = json.loads((tmp_path / "runs" / "tiny" / "seed_2" / "metrics.json").read_text())
    assert second["epochs_run"] == 2
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2]


@pytest.mark.parametrize(
    ("option", "key"),
    [
        ("train.lr=0.5", "train.lr"),
        ("train.threshold=0.4", "train.threshold"),
        ("train.monitor=valid/Corr", "train.monitor"),
        ("train.patience=3", "train.patience"),
        ("train.max_epochs=1", "train.max_epochs"),  # fewer than it ran
        ("data.batch_size=4", "data.batch_size"),
        ("model.d_model=32", "model.d_model"),
    ],
)
def test_a_changed_setting_is_refused_by_its_key(tmp_path, mosi, option, key):
    cfg = validate_config(_raw(tmp_path, mosi), "test")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=[_CrashAtEpoch(1)])
    config = _yaml(tmp_path, _raw(tmp_path, mosi))
    before = _files(run_dir_for(cfg))
    code, out = run_gpfuse("train", config, "--resume", "--set", option)
    assert code == 2 and key in out and "--resume" in out, out
    assert _files(run_dir_for(cfg)) == before


def test_more_epochs_and_another_place_to_run_are_accepted_and_the_run_keeps_one_config(tmp_path, mosi):
    cfg = validate_config(_raw(tmp_path, mosi), "test")
    first = train(cfg)
    run = run_dir_for(cfg)
    assert first["stopped_early"] is False
    longer = validate_config(_raw(tmp_path, mosi, max_epochs=3, devices=1), "test")
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(dump_config(longer))  # as the other DDP ranks find it once rank 0 has begun
    assert _finished(run, load_run_config(run), longer) is None
    (run / "config.yaml").write_text(config)
    metrics = train(longer, resume=True)
    assert metrics["epochs_run"] == 3
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_epochs"] == 3 and saved["train"]["devices"] == 1
    assert (run / "model" / RUN_CONFIG).read_text() == (run / "config.yaml").read_text()


def test_a_run_that_stopped_early_stays_stopped(tmp_path, mosi):
    # a learning rate of about 0: the validation accuracy (a count) stays, so patience 1 stops after the 2nd epoch
    still = {"patience": 1, "lr": 1e-12, "monitor": "valid/Has0_acc_2", "monitor_mode": "max"}
    cfg = validate_config(_raw(tmp_path, mosi, max_epochs=6, **still), "test")
    metrics = train(cfg)
    run = run_dir_for(cfg)
    assert metrics["epochs_run"] == 2 and metrics["stopped_early"]  # the premise: it stopped early
    before = _files(run)
    more = validate_config(_raw(tmp_path, mosi, max_epochs=8, **still), "test")
    assert train(more, resume=True) == metrics and _files(run) == before  # more epochs do not restart it
    # killed after the stop, before its end was written: the resume tests it and trains no further epoch
    (run / "metrics.json").unlink()
    resumed = train(cfg, resume=True)
    assert resumed == metrics
