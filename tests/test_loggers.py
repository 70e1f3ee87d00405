"""`train.loggers`: a tiny GRF run on synthetic MOSI logs to TensorBoard (scalars, the final test metrics, HParams)
and to an MLflow file store (the run config as params, the test metrics of metrics.json); `--resume` keeps
logging into the same TensorBoard folder and MLflow run; an unknown logger name is a ConfigError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_gpfuse, tiny_grf_run
from gpfuse.config import ConfigError, validate_config
from gpfuse.data.synthetic import write_synthetic_mosi

pytestmark = pytest.mark.slow


def _raw(tmp: Path, root: Path, **train) -> dict:
    return tiny_grf_run(tmp, root, seed=3, **train)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A 1-epoch run logging to csv, tensorboard and mlflow, resumed for a 2nd epoch: its folder, and the MLflow
    record and metrics.json of the first attempt."""
    tmp = tmp_path_factory.mktemp("loggers")
    root = write_synthetic_mosi(tmp / "mosi", n_videos=10, segments_per_video=4)
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(_raw(tmp, root, loggers=["csv", "tensorboard", "mlflow"])))
    code, out = run_gpfuse("train", str(config))
    assert code == 0, out
    run_dir = tmp / "runs" / "tiny" / "seed_3"
    first = {"mlflow": _mlflow_record(run_dir), "metrics": _metrics(run_dir)}
    code, out = run_gpfuse("train", str(config), "--resume", "--set", "train.max_epochs=2")
    assert code == 0, out
    return {"dir": run_dir, "first": first}


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _mlflow_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "logs" / "mlflow_run.json").read_text())


def _tensorboard(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_has_the_scalars_the_test_metrics_and_the_hparams(run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = _tensorboard(run["dir"])
    test = _metrics(run["dir"])["test"]
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "valid/MAE", "valid/loss", "epoch"} <= set(scalars)
    steps = [e.step for e in events.Scalars("train/loss")]
    assert len(steps) == 2 and steps[0] < steps[1]  # an epoch per attempt, in one folder, the steps continued
    for key, value in test.items():
        assert events.Scalars(f"test/{key}")[-1].value == pytest.approx(value, rel=1e-6), key
    content = events.PluginTagToContent("hparams")
    data = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
    experiment = next(d.experiment for d in data if d.HasField("experiment"))
    assert {m.name.tag for m in experiment.metric_infos} == {f"test/{k}" for k in test}
    start = next(d.session_start_info for d in data if d.HasField("session_start_info"))
    assert start.hparams["model/d_model"].number_value == 16
    assert start.hparams["train/max_epochs"].number_value == 1  # the first finished attempt's
    assert start.hparams["data/source"].string_value == "mosi"


def test_mlflow_has_the_config_as_params_and_the_test_metrics_of_metrics_json(run):
    from mlflow.tracking import MlflowClient

    record, first = _mlflow_record(run["dir"]), run["first"]
    assert record == first["mlflow"]  # the resumed attempt logged into the same MLflow run
    assert record["tracking_uri"] == (run["dir"] / "mlruns").resolve().as_uri()
    client = MlflowClient(record["tracking_uri"])
    found = client.get_run(record["run_id"])
    assert found.info.status == "FINISHED" and found.info.run_name == "seed_3"
    params = found.data.params
    assert params["model/d_model"] == "16" and params["train/seed"] == "3" and params["data/source"] == "mosi"
    assert params["train/max_epochs"] == "1"  # MLflow keeps the first attempt's params
    test = _metrics(run["dir"])["test"]
    assert test != first["metrics"]["test"]  # the second epoch changed the model: the final metrics are new
    assert {k: found.data.metrics[f"test/{k}"] for k in test} == test
    valid = client.get_metric_history(record["run_id"], "valid/MAE")
    assert sorted(m.step for m in valid) == sorted({m.step for m in valid}) and len(valid) >= 2


def test_an_unknown_logger_is_a_config_error(tmp_path):
    raw = _raw(tmp_path, tmp_path / "mosi", loggers=["csv", "wandb"])
    with pytest.raises(ConfigError, match=r"(?s)train\.loggers\.1: .*'mlflow'.*\(got 'wandb'\)"):
        validate_config(raw, "tiny.yaml")
    assert validate_config(_raw(tmp_path, tmp_path / "mosi")).train.loggers == ["csv"]


def test_a_logger_whose_package_is_missing_is_named(tmp_path, monkeypatch):
    import importlib.util

    import lightning as L

    from gpfuse.tasks.loggers import add_loggers

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    config = validate_config(_raw(tmp_path, tmp_path / "mosi", loggers=["mlflow"]))
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_checkpointing=False)
    with pytest.raises(ModuleNotFoundError, match=r"train\.loggers: mlflow needs the mlflow-skinny package"):
        add_loggers(trainer, config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
