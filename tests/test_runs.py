"""Config validation, the sentiment DataModule and whole runs: train, resume, eval, predict, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

import gpfuse
from conftest import assert_predicted_scores_match_eval, mosi_data, run_gpfuse, tiny_grf
from gpfuse.config import ConfigError, load_config, validate_config
from gpfuse.data.synthetic import write_synthetic_mosi
from gpfuse.data.synthetic_pickles import write_mmsa_pickle, write_mult_pickle
from gpfuse.models.io import CheckpointMismatchError
from gpfuse.tasks.plots import read_epoch_series
from gpfuse.tasks.runner import _trainer, evaluate, predict, run_dir_for, train
from gpfuse.tasks.sentiment_data import SentimentDataModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mosi_synth(tmp_path_factory) -> Path:
    return write_synthetic_mosi(tmp_path_factory.mktemp("data") / "mosi", n_videos=10, segments_per_video=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _config(tmp_path, root, cache, **train):
    raw = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "data": mosi_data(root, cache, text_len=24),
        "model": tiny_grf(),
        "train": {"max_epochs": 2, "warmup_epochs": 1, "accelerator": "cpu", **train},
    }
    return validate_config(raw, "test")


# ---- configs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    assert load_config(path).name


def test_an_error_naming_brackets_is_printed_as_text(tmp_path):
    code, out = run_gpfuse("train", tmp_path / "run[/x].yaml")  # rich would read "[/x]" as a closing tag
    assert code == 2 and "config file not found" in out and "run[/x].yaml" in out


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "x", "data": {"source": "mosi"}, "model": {"name": "grf"}, "train": {"lr": 1e-3, "epochz": 3}}
        )
    )
    with pytest.raises(ConfigError, match=r"c.yaml.*\n  train.epochz: Extra inputs"):
        load_config(path)
    path.write_text(
        yaml.safe_dump({"name": "x", "data": {"source": "mosi"}, "model": {"name": "grf", "d_model": "big"}})
    )
    with pytest.raises(ConfigError, match=r"model.d_model: Input should be a valid integer"):
        load_config(path)
    with pytest.raises(ConfigError, match="model.name must be one of"):
        validate_config({"name": "x", "data": {"source": "mosi"}, "model": {"name": "nope"}})
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


# ---- data module ------------------------------------------------------------------------------------


def test_datamodule_encodes_text_once_and_standardises(tmp_path, mosi_synth, cache):
    cfg = _config(tmp_path, mosi_synth, cache)
    dm = SentimentDataModule(cfg.data)
    dm.setup()
    assert dm.input_dims == {"text": 384, "audio": 73}
    train = dm.splits["train"]
    assert train.features["text"].shape[1] <= 24 and train.masks["text"][:, 0].all()
    np.testing.assert_allclose(train.features["audio"][:, 0].mean(0), 0, atol=1e-4)
    assert len(list(Path(cache).glob("text_*.npz"))) == 3  # one cache file per split's text set
    batch = next(iter(dm.train_dataloader()))
    assert batch["text"].shape[0] == 8 and batch["text_mask"].dtype == torch.bool


def test_datamodule_rejects_too_long_sequences_and_empty_splits(tmp_path, mosi_synth, cache):
    cfg = _config(tmp_path, mosi_synth, cache)
    too_short = cfg.data.model_copy(update={"max_len": {"text": 50, "audio": 1}})
    pickle_path = write_mmsa_pickle(tmp_path / "aligned.pkl", n_per_split=(6, 3, 3))
    data = too_short.model_copy(
        update={
            "source": "pickle",
            "root": str(pickle_path),
            "modalities": ["text", "audio", "vision"],
            "max_len": {"audio": 2},
        }
    )
    with pytest.raises(ValueError, match=r"audio of .* has \d+ steps, more than data.max_len.audio=2"):
        SentimentDataModule(data).setup()
    empty = tmp_path / "empty"
    write_synthetic_mosi(empty, n_videos=2, segments_per_video=2)  # 2 videos: no test split
    with pytest.raises(ValueError, match="split '(valid|test)' is empty"):
        SentimentDataModule(cfg.data.model_copy(update={"root": str(empty)})).setup()


@pytest.mark.slow
def test_mmsa_pickle_trains_through_the_same_module(tmp_path, cache):
    path = write_mmsa_pickle(tmp_path / "unaligned.pkl", n_per_split=(8, 4, 4))
    cfg = _config(tmp_path, path, cache, max_epochs=1)
    cfg.data.source, cfg.data.modalities, cfg.data.max_len = "pickle", ["text", "audio", "vision"], {}
    cfg.model = {**cfg.model, "order": ["text", "audio", "vision"]}
    metrics = train(cfg)
    assert set(metrics["test"]) >= {"MAE", "Corr", "Has0_acc_2", "Mult_acc_7"}
    assert_predicted_scores_match_eval(run_dir_for(cfg), path, tmp_path / "scores.csv")


@pytest.mark.slow
def test_mult_pickle_left_padding_predicts_what_eval_scored(tmp_path, cache):
    """MulT pickles pad on the left and GRF adds positions by absolute index: predict keeps the padding where
    it is stored (as evaluation does) instead of packing the real steps to the front."""
    path = write_mult_pickle(tmp_path / "mosi_data.pkl", n_per_split=(8, 4, 6))
    cfg = _config(tmp_path, path, cache, max_epochs=1)
    cfg.data.source, cfg.data.modalities, cfg.data.max_len = "pickle", ["text", "audio", "vision"], {}
    cfg.model = {**cfg.model, "order": ["text", "audio", "vision"]}
    train(cfg)
    assert_predicted_scores_match_eval(run_dir_for(cfg), path, tmp_path / "scores.csv")


# ---- runs -------------------------------------------------------------------------------------------


class _Crash(Callback):
    """Kills the run at the start of epoch 2, as a crash or a lost machine would."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_train_writes_a_complete_run_folder_and_evaluates_the_same(tmp_path, mosi_synth, cache):
    cfg = _config(tmp_path, mosi_synth, cache, max_epochs=3)
    metrics = train(cfg, command="gpfuse train tiny")
    run = run_dir_for(cfg)
    for name in (
        "config.yaml",
        "command.txt",
        "splits/train.txt",
        "splits/test.txt",
        "data_stats.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.json",
        "loss.png",
        "gates.png",
        "model/model.safetensors",
        "model/config.json",
        "model/gpfuse_run.yaml",
        "model/data_stats.json",
        "logs/attempt_0/metrics.csv",
    ):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["test"] == metrics["test"]
    assert json.loads((run / "metrics.json").read_text())["synthetic_data"] == [str(mosi_synth)]
    assert len((run / "splits/test.txt").read_text().split()) == 8
    again = evaluate(run)
    for key in ("MAE", "Corr", "Has0_F1_score"):
        assert again["test"][key] == pytest.approx(metrics["test"][key], abs=1e-5)
    out = predict(run, mosi_synth, tmp_path / "pred.csv")
    rows = out.read_text().splitlines()
    assert rows[0] == "id,split,score,label" and len(rows) == 41
    assert_predicted_scores_match_eval(run, mosi_synth, tmp_path / "again.csv")
    bare = Path(shutil.copytree(run / "model", tmp_path / "model_without_stats"))
    (bare / "data_stats.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model_without_stats: no training statistics for \['audio'\]"):
        gpfuse.load(bare)  # standardised in training: never predicted unstandardised
    out.write_text("an earlier file")
    with pytest.raises(FileExistsError, match=r"pred.csv exists.*--overwrite"):
        predict(run, mosi_synth, out)
    assert out.read_text() == "an earlier file"
    assert predict(run, mosi_synth, out, overwrite=True).read_text().splitlines() == rows
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg)


@pytest.mark.slow
def test_interrupted_run_resumes_from_last_checkpoint(tmp_path, mosi_synth, cache):
    cfg = _config(tmp_path, mosi_synth, cache, max_epochs=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=[_Crash()])
    last = run_dir_for(cfg) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # epochs 0 and 1 finished
    metrics = train(cfg, resume=True)
    assert metrics["epochs_run"] == 4 and torch.load(last, weights_only=True)["epoch"] == 3
    series = read_epoch_series(run_dir_for(cfg) / "logs")
    assert [e for e, _ in series["train/loss"]] == [0, 1, 2, 3]  # nothing of the first attempt was lost


@pytest.mark.slow
def test_resume_with_another_model_config_is_refused(tmp_path, mosi_synth, cache):
    cfg = _config(tmp_path, mosi_synth, cache, max_epochs=1)
    train(cfg)
    changed = cfg.model_copy(update={"model": {**cfg.model, "d_model": 32}})
    with pytest.raises(CheckpointMismatchError, match=r"model.d_model: 16 -> 32"):
        train(changed, resume=True)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(cfg.model_copy(update={"name": "fresh"}), resume=True)


@pytest.mark.slow
def test_eval_refuses_a_model_of_another_run(tmp_path, mosi_synth, cache):
    cfg = _config(tmp_path, mosi_synth, cache, max_epochs=1)
    train(cfg)
    run = run_dir_for(cfg)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["name"] = "unimodal"
    config["model"] = {"name": "unimodal", "modality": "audio"}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointMismatchError, match="holds a 'grf' model, expected 'unimodal'"):
        evaluate(run)


# ---- CLI --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_seeds_eval_info_profile(tmp_path, mosi_synth, cache):
    cfg = tmp_path / "tiny.yaml"
    raw = _config(tmp_path, mosi_synth, cache, max_epochs=1).model_dump(mode="json")
    cfg.write_text(yaml.safe_dump(raw))
    code, output = run_gpfuse("train", cfg, "--seeds", "1,2", "--set", "train.lr=0.002")
    assert code == 0, output
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and len(summary["test"]["MAE"]) == 2
    per_seed = [
        json.loads((tmp_path / "runs" / "tiny" / f"seed_{s}" / "metrics.json").read_text())["test"]["MAE"]
        for s in (1, 2)
    ]
    assert summary["test"]["MAE"][0] == pytest.approx(np.mean(per_seed))
    assert "±" in output
    code, output = run_gpfuse("summary", tmp_path / "runs" / "tiny")
    assert code == 0 and "over 2 runs" in output
    assert json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())["test"]["MAE"] == pytest.approx(
        summary["test"]["MAE"]
    )
    assert run_gpfuse("summary", tmp_path / "nothing")[0] == 2
    code, output = run_gpfuse("eval", tmp_path / "runs" / "tiny" / "seed_1")
    assert code == 0 and "Has0_F1_score" in output
    code, output = run_gpfuse("train", cfg, "--set", "train.nope=1")
    assert code == 2 and "train.nope" in output
    code, output = run_gpfuse("info")
    assert code == 0 and "grf" in output and "recursive" in output
    code, output = run_gpfuse("profile", "grf", "--input-dims", "text=384,audio=73", "--batch-size", "2")
    assert code == 0 and "gflops" in output and "parameters" in output


def test_cli_converts_a_pickle_once_and_the_npz_feeds_the_data_module(tmp_path):
    from gpfuse.data.synthetic_pickles import write_mult_pickle

    src = write_mult_pickle(tmp_path / "mosi_data.pkl", n_per_split=(6, 3, 3))
    code, output = run_gpfuse("convert", src, tmp_path / "mosi.npz")
    assert code == 0, output
    data = validate_config(
        {
            "name": "x",
            "data": {
                "source": "npz",
                "root": str(tmp_path / "mosi.npz"),
                "modalities": ["text", "audio", "vision"],
                "max_len": {},
            },
            "model": {"name": "grf"},
        }
    ).data
    dm = SentimentDataModule(data)
    dm.setup()
    assert dm.input_dims == {"text": 300, "audio": 74, "vision": 35} and len(dm.splits["test"]) == 3
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    code, output = run_gpfuse("convert", bad, tmp_path / "evil.npz")
    assert code == 2 and "os.system" in output and not (tmp_path / "evil.npz").exists()


# ---- trainer settings for GPUs and clusters ---------------------------------------------------------


class _NonDeterministicOp(L.LightningModule):
    """One training step through ``Tensor.put_``, which has no deterministic implementation on CPU (as bilinear
    and trilinear upsampling backward have none on CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def training_step(self, batch, batch_idx):
        x = torch.zeros(3).put_(torch.tensor([0, 0]), self.w[:2].detach(), accumulate=False)
        return (self.w * (x + batch[0])).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 3)), batch_size=1)


@pytest.fixture
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_strict_determinism_is_opt_in(tmp_path, mosi_synth, cache, _restore_determinism):
    default = _config(tmp_path, mosi_synth, cache, max_epochs=1)
    with pytest.warns(UserWarning, match="put_ does not have a deterministic implementation"):
        _trainer(default).fit(_NonDeterministicOp())  # seeds and deterministic kernels where they exist
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    strict = _config(tmp_path, mosi_synth, cache, max_epochs=1, deterministic=True)
    with pytest.raises(RuntimeError, match="put_ does not have a deterministic implementation"):
        _trainer(strict).fit(_NonDeterministicOp())


def test_scale_out_keys_reach_the_trainer(tmp_path, mosi_synth, cache):
    from lightning.pytorch.strategies import DDPStrategy

    cfg = _config(
        tmp_path,
        mosi_synth,
        cache,
        devices=2,
        strategy="ddp",
        num_nodes=1,
        sync_batchnorm=True,
        accumulate_grad_batches=4,
        precision="bf16-mixed",
        deterministic=False,
    )
    trainer = _trainer(cfg)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    assert trainer.accumulate_grad_batches == 4 and trainer.precision == "bf16-mixed"
    assert trainer.strategy._layer_sync is not None  # SyncBatchNorm conversion
    single = _trainer(cfg, single_device=True)  # prediction: one process writes every output once
    assert single.num_devices == 1 and not isinstance(single.strategy, DDPStrategy)
    with pytest.raises(ConfigError, match="train.precision"):
        _config(tmp_path, mosi_synth, cache, precision="half")
