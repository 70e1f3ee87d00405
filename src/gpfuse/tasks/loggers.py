"""Where a training run logs besides its CSV log (``train.loggers``): TensorBoard and MLflow.

The CSV log (``logs/attempt_<n>/metrics.csv``) is always written: ``loss.png`` is drawn from it. On the main
process only (the loggers of the other processes would log nothing), :func:`add_loggers` adds

- ``tensorboard``: event files in ``RUN/tensorboard/`` (one TensorBoard run; a resumed run adds its event files
  beside the earlier ones, its steps continuing theirs);
- ``mlflow``: an MLflow run in ``train.mlflow_tracking_uri``, by default a file store in ``RUN/mlruns`` (MLflow's
  telemetry is switched off unless ``MLFLOW_DISABLE_TELEMETRY`` says otherwise; the file store is opted into
  with ``MLFLOW_ALLOW_FILE_STORE``). Its id is kept in ``RUN/logs/mlflow_run.json``, so ``--resume`` logs into
  the same MLflow run.

Both get the resolved run config as hyperparameters (flattened with ``/``: ``train/lr``) and, at the end
(:func:`log_test_metrics`), the final test metrics of ``metrics.json`` as ``test/<metric>`` (in TensorBoard also
as the metrics of its HParams view). A resumed run shows the hyperparameters of its first finished attempt in
TensorBoard's HParams view and of its first attempt in MLflow (whose parameters cannot change), its final test
metrics in both. ``tensorboard`` and ``mlflow`` are imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from argparse import Namespace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from gpfuse.config import RunConfig
from gpfuse.utils.files import atomic_write_text, read_json

__all__ = ["add_loggers", "log_test_metrics"]

log = logging.getLogger(__name__)

_MLFLOW_RUN = Path("logs") / "mlflow_run.json"


class _MLflowRunLogger(MLFlowLogger):
    """MLflow parameters cannot change once logged: a resumed run keeps its first attempt's values and warns
    about any that differ now (e.g. a larger ``train.max_epochs``), once, instead of failing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kept: set[str] = set()

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        flat = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        changed = sorted(
            k for k, v in flat.items() if k in logged and logged[k] != str(v)[:250] and k not in self._kept
        )
        if changed:
            log.warning("MLflow run %s keeps the first values of %s", self.run_id, ", ".join(changed))
            self._kept.update(changed)
        super().log_hyperparams({k: v for k, v in flat.items() if k not in logged})


def _require(module: str, package: str, name: str) -> None:
    """Stop before the long work when the package behind logger ``name`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"train.loggers: {name} needs the {package} package: install gpfuse's 'loggers' extra "
            f"(pip install -c constraints.txt -e '.[loggers]') or pip install {package}"
        )


def _mlflow_logger(config: RunConfig, run_dir: Path) -> MLFlowLogger:
    """The MLflow logger, continuing the run recorded in ``RUN/logs/mlflow_run.json`` of the same store."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is first imported
    uri = config.train.mlflow_tracking_uri or (run_dir / "mlruns").resolve().as_uri()
    if urlparse(uri).scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store for opt-ins
    record = run_dir / _MLFLOW_RUN
    saved = read_json(record) if record.is_file() else {}
    run_id = saved.get("run_id") if saved.get("tracking_uri") == uri else None
    logger = _MLflowRunLogger(
        experiment_name=config.name, run_name=run_dir.name, tracking_uri=uri, run_id=run_id, save_dir=None
    )
    atomic_write_text(record, json.dumps({"tracking_uri": uri, "run_id": logger.run_id}, indent=2))
    return logger


def add_loggers(trainer: L.Trainer, config: RunConfig, run_dir: Path) -> None:
    """Add the loggers ``train.loggers`` asks for besides CSV to ``trainer`` and log the resolved run config to
    every logger. Call on the main process only, once the run folder is checked, before ``trainer.fit``."""
    names = config.train.loggers
    extra: list[Logger] = []
    if "tensorboard" in names:
        _require("tensorboard", "tensorboard", "tensorboard")
        extra.append(TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False))
    if "mlflow" in names:
        _require("mlflow", "mlflow-skinny", "mlflow")
        extra.append(_mlflow_logger(config, run_dir))
    trainer.loggers = [*trainer.loggers, *extra]
    params = config.model_dump(mode="json")
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def log_test_metrics(trainer: L.Trainer, config: RunConfig, test: dict[str, float]) -> None:
    """Log the final test metrics (``metrics.json``'s ``test``) as ``test/<metric>`` to the TensorBoard and MLflow
    loggers (TensorBoard: with the run config, for its HParams view), then close them. Main process only."""
    metrics = {f"test/{k}": v for k, v in test.items()}
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(config.model_dump(mode="json"), metrics=metrics, step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.log_metrics(metrics, step=step)
        else:
            continue  # the CSV log has the test rows of trainer.test
        logger.finalize("success")
