"""Train, evaluate and predict from a run folder; several seeds summarised as mean ± std.

A run folder (``<output_dir>/<name>/seed_<seed>/``) holds: ``config.yaml`` (resolved), ``command.txt``,
``splits/{train,valid,test}.txt``, ``data_stats.json``, ``environment.json`` (the machine, the precision
resolved; :mod:`gpfuse.utils.environment`), ``checkpoints/{best,last}.ckpt``,
``logs/attempt_<n>/metrics.csv`` (one per start or resume), ``metrics.json``, ``samples/`` (per-sample test
results, :mod:`gpfuse.tasks.samples`), ``loss.png``, ``gates.png``,
``tensorboard/`` and ``mlruns/`` when ``train.loggers`` asks for them (:mod:`gpfuse.tasks.loggers`)
and the final weights in ``model/`` (``config.json`` + ``model.safetensors``, with the run's config and data
statistics beside them, so that the folder alone predicts). Lightning writes checkpoints atomically; gpfuse
writes everything else through a temporary file and a rename.

Several processes (Lightning DDP: ``train.devices`` > 1, ``torchrun``, SLURM) all run this code: only the
global rank 0 checks for an existing run and writes into the run folder; every rank computes the same
seeded split and statistics, trains and evaluates its shard, and the tasks gather what the metrics need.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from gpfuse.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    dump_config,
    validate_config,
    validate_saved_config,
)
from gpfuse.data.synthetic_marker import generated_roots
from gpfuse.inference.onnx_model import GraphInputsOnly, OnnxModel
from gpfuse.inference.saved_run import ENGINES, RUN_CONFIG, RUN_STATS, Engine, SavedRun
from gpfuse.models import MODELS, create_model, load_pretrained, save_pretrained
from gpfuse.models.io import CheckpointMismatchError
from gpfuse.tasks.finite_loss import FiniteLoss
from gpfuse.tasks.kinds import TASK_KINDS, TaskData, at_data
from gpfuse.tasks.loggers import add_loggers, log_test_metrics
from gpfuse.tasks.plots import plot_run
from gpfuse.tasks.progress import progress_callback
from gpfuse.tasks.resume import RandomStateCheckpoint, ResumableEarlyStopping, ValidationHistory, check_checkpoint
from gpfuse.tasks.samples import write_samples
from gpfuse.utils import environment
from gpfuse.utils.files import atomic_path, atomic_write_text, read_json
from gpfuse.utils.precision import AUTO, resolve_precision, warn_if_emulated

__all__ = [
    "EVAL_OVERRIDES",
    "evaluate",
    "experiment_name",
    "fold_name",
    "is_main_process",
    "load_run_config",
    "predict",
    "run_dir_for",
    "summarise",
    "summarise_folder",
    "train",
    "train_seeds",
]

#: what ``gpfuse eval --set`` may change in a saved run's config: where and how it runs, never what it computes
EVAL_OVERRIDES = ("train.accelerator", "train.devices", "train.strategy", "train.num_nodes", "data.num_workers")
#: what ``--resume`` may set otherwise than the run it continues: where it runs, its loggers, and more epochs (the
#: schedule then stretches to the new length from where it stopped). Anything else would leave files that
#: describe another run than the one trained, and is refused by its key.
RESUME_MAY_CHANGE = (*EVAL_OVERRIDES, "train.loggers", "train.max_epochs")


class _RankZeroOnly(Protocol):
    rank: int  # set on the function by Lightning (at import, from the launcher's environment; then a Trainer)


def is_main_process() -> bool:
    """True on the global rank 0 (or the only process): the one that writes files and prints results. Read
    from Lightning's rank, which a Trainer sets, and before any Trainer from the launcher's environment."""
    return cast(_RankZeroOnly, rank_zero_only).rank == 0


log = logging.getLogger(__name__)


class _NoAdverts(logging.Filter):
    """Drops Lightning's promotional tip (a logger product) from every command's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


_FOLD_SUFFIX = re.compile(r"/fold_\d+$")


def fold_name(name: str, fold: int) -> str:
    """The run name of one fold (or random split) of experiment ``name`` under ``--folds``: ``<name>/fold_<f>``."""
    return f"{name}/fold_{fold}"


def experiment_name(run_name: str) -> str:
    """The experiment a run name belongs to: ``<name>/fold_<f>`` -> ``<name>``; other names unchanged."""
    return _FOLD_SUFFIX.sub("", run_name)


def run_dir_for(config: RunConfig, seed: int | None = None) -> Path:
    return Path(config.output_dir) / config.name / f"seed_{config.train.seed if seed is None else seed}"


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a gpfuse run folder (no config.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable run config ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a run config (the top level is a {type(raw).__name__})")
    return validate_saved_config(raw, str(path))


def _check_same_settings(run_dir: Path, saved: RunConfig, config: RunConfig) -> None:
    """Refuse a resume whose settings differ from the run's beyond :data:`RESUME_MAY_CHANGE`, or with fewer
    epochs than the run was set to, naming each dotted key."""
    old, new = saved.model_dump(mode="json"), config.model_dump(mode="json")  # a tuple and its saved list are equal
    diff = [
        f"{section}.{k}: {old[section].get(k)!r} -> {new[section].get(k)!r}"
        for section in ("data", "model", "train")
        for k in sorted(set(old[section]) | set(new[section]))
        if old[section].get(k) != new[section].get(k) and f"{section}.{k}" not in RESUME_MAY_CHANGE
    ]
    if config.train.max_epochs < saved.train.max_epochs:
        diff.append(f"train.max_epochs: {saved.train.max_epochs} -> {config.train.max_epochs} (fewer)")
    if diff:
        raise CheckpointMismatchError(
            f"{run_dir} was made with other settings than --resume asks for: {', '.join(diff)}. A resumed run may "
            f"change only {', '.join(RESUME_MAY_CHANGE)} (more epochs); start a new run (another name) instead"
        )


def _finished(run_dir: Path, saved: RunConfig, config: RunConfig) -> dict[str, Any] | None:
    """The metrics of a finished run (``metrics.json``, written last) that ``--resume`` leaves as it is, or None
    when it goes on: more epochs than it ran were asked for, and it did not stop early."""
    if not (run_dir / "metrics.json").is_file():
        return None
    metrics = read_json(run_dir / "metrics.json")
    ran = metrics["epochs_run"]
    # from metrics.json, not config.yaml: under DDP, rank 0 rewrites config.yaml with the new max_epochs before
    # Lightning starts the other ranks, which must still see a run to go on with
    stopped_early = metrics.get("stopped_early", ran < saved.train.max_epochs)  # older runs: from the config
    if config.train.max_epochs > ran and not stopped_early and (run_dir / "checkpoints" / "last.ckpt").is_file():
        return None
    why = f"it stopped early after {ran} epochs" if stopped_early else "nothing to add"
    log.warning("%s is finished (metrics.json; %s): left as it is", run_dir, why)
    return metrics


def _check_resumable(run_dir: Path, config: RunConfig, resume: bool, main: bool = True) -> Path | None:
    """The checkpoint to resume from, or None to start at epoch 0. A new run must not exist yet (checked on the
    main process only: under DDP it has made the run folder before the other processes look); ``resume``
    needs a run that exists (its settings are checked by :func:`train` first), and starts it again from epoch 0
    when it stopped before its first checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    started = (run_dir / "config.yaml").exists()
    if not resume:
        if main and started:
            hint = (
                "pass --resume to continue it"
                if last.is_file()
                else "it stopped before its first checkpoint: pass --resume to start it again from epoch 0"
            )
            raise FileExistsError(
                f"{run_dir} already holds a run: {hint}, or change name/output_dir (nothing was overwritten)"
            )
        return None
    if not started:
        raise FileNotFoundError(
            f"cannot resume: {run_dir} holds no run (no config.yaml); leave out --resume to start it"
        )
    if not last.is_file():
        log.warning("%s stopped before its first checkpoint: starting it again from epoch 0", run_dir)
        return None
    return last


def _with_precision(config: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """``config`` with ``train.precision`` resolved (:mod:`gpfuse.utils.precision`): ``auto`` becomes what this
    machine computes natively, except that a resumed run keeps the precision it started with (resumed equals
    uninterrupted, on whatever machine it resumes)."""
    t = config.train
    saved = run_dir / "config.yaml"
    if t.precision == AUTO and resume and saved.is_file():
        precision = load_run_config(run_dir).train.precision
    else:
        precision = resolve_precision(t.precision, config.model["name"], t.accelerator)
    rank_zero_info(
        f"precision: {precision}" + (f" (train.precision {t.precision})" if precision != t.precision else "")
    )
    return config.model_copy(update={"train": t.model_copy(update={"precision": precision})})


def _write_environment(run_dir: Path, config: RunConfig, requested: str) -> None:
    """``run_dir/environment.json``: where the run started (:func:`gpfuse.utils.environment.describe`); each
    resume on adds where it went on, under ``resumed_on``."""
    env = environment.describe(config.train.precision, requested)
    path = run_dir / "environment.json"
    if path.is_file():
        first = read_json(path)
        env = {**first, "resumed_on": [*first.get("resumed_on", []), env]}
    atomic_write_text(path, json.dumps(env, indent=2))


def _save_model_folder(model: torch.nn.Module, config: RunConfig, run_dir: Path) -> Path:
    """``run_dir/model``: the weights and ``config.json``, and what prediction needs beside them (the resolved
    run config and the data statistics), so the folder predicts on its own (``gpfuse.load``)."""
    folder = save_pretrained(model, run_dir / "model")
    atomic_write_text(folder / RUN_CONFIG, dump_config(config))
    stats = run_dir / RUN_STATS
    if stats.is_file():
        atomic_write_text(folder / RUN_STATS, stats.read_text())
    return folder


def _synthetic_note(config: RunConfig) -> dict[str, list[str]]:
    """``{"synthetic_data": [...]}`` naming the generated dataset folders a run read (none: empty)."""
    generated = generated_roots(config.data_paths())
    if generated:
        log.warning("SYNTHETIC data (generated by gpfuse, not a result): %s", ", ".join(generated))
    return {"synthetic_data": generated} if generated else {}


def _writable_folder(path: Path) -> None:
    """Make ``path`` (and its parents) or say plainly why it cannot be written, before any long work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / ".write_check"):
            pass
        (path / ".write_check").unlink()
    except OSError as err:
        raise ValueError(
            f"output folder {path} cannot be written: {err.strerror or err} ({err.filename or path})"
        ) from None


def _logger(run_dir: Path) -> CSVLogger:
    """One CSV log per attempt (``logs/attempt_<n>/metrics.csv``): Lightning's CSVLogger deletes an existing
    file, so a resumed run logs beside the earlier attempts instead of over them."""
    attempt = len(list((run_dir / "logs").glob("attempt_*")))
    return CSVLogger(run_dir / "logs", name="", version=f"attempt_{attempt}")


def _trainer(
    config: RunConfig, run_dir: Path | None = None, callbacks: list | None = None, single_device: bool = False
) -> L.Trainer:
    """The Lightning trainer of ``config.train``; ``single_device`` runs on one device of the accelerator
    (prediction: one process writes every output once)."""
    t = config.train
    precision = resolve_precision(t.precision, config.model["name"], t.accelerator)
    warn_if_emulated(precision, t.accelerator)
    return L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=1 if single_device else t.devices,
        strategy="auto" if single_device else t.strategy,
        num_nodes=1 if single_device else t.num_nodes,
        sync_batchnorm=t.sync_batchnorm and not single_device,
        precision=precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic,
        gradient_clip_val=t.grad_clip,
        callbacks=[progress_callback(), *(callbacks or [])],
        logger=_logger(run_dir) if run_dir else False,
        default_root_dir=run_dir,
        enable_checkpointing=bool(run_dir),
        enable_model_summary=False,
        log_every_n_steps=10,
    )


def _task(config: RunConfig, model: torch.nn.Module, data: L.LightningDataModule) -> L.LightningModule:
    """The task's LightningModule, its weights in channels_last layout when ``train.channels_last`` (3D
    convolutions: channels_last_3d)."""
    task = TASK_KINDS[config.task].task(config, model, data)
    if config.train.channels_last:
        volumetric = any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        task = task.to(memory_format=torch.channels_last_3d if volumetric else torch.channels_last)
    return task


def _merge(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Lightning returns one dict per eval dataloader (query and gallery for retrieval): merge them."""
    merged: dict[str, Any] = {}
    for result in results:
        merged.update({k.split("/dataloader_idx_")[0]: v for k, v in result.items()})
    return merged


def _strip(metrics: dict[str, Any], stage: str) -> dict[str, float]:
    return {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith(f"{stage}/")}


def _count(model: torch.nn.Module) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def train(config: RunConfig, resume: bool = False, command: str = "", callbacks: list | None = None) -> dict[str, Any]:
    """Train one seed (``config.train.seed``), select on validation, test once with the best checkpoint. The
    validation figures reported are the best epoch's as the fit computed them
    (:class:`~gpfuse.tasks.resume.ValidationHistory`), not a second pass over the validation set.
    Checkpoints hold the random states (:class:`~gpfuse.tasks.resume.RandomStateCheckpoint`), so a run
    resumed from ``last.ckpt`` ends as the uninterrupted run would have."""
    run_dir = run_dir_for(config)
    requested = config.train.precision
    config = _with_precision(config, run_dir, resume)
    if resume and (run_dir / "config.yaml").is_file():
        saved = load_run_config(run_dir)
        _check_same_settings(run_dir, saved, config)
        if (finished := _finished(run_dir, saved, config)) is not None:
            return finished
    t = config.train
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=t.monitor,
        mode=t.monitor_mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    # every epoch's end, improved or not (Lightning 2.6's save_last=True skips the epochs that did not improve)
    latest = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    stopper = ResumableEarlyStopping(monitor=t.monitor, mode=t.monitor_mode, patience=t.patience)
    history = ValidationHistory()
    trainer = _trainer(
        config,
        run_dir,
        [checkpoint, latest, stopper, history, RandomStateCheckpoint(), FiniteLoss(), *(callbacks or [])],
    )
    main = trainer.is_global_zero
    last = _check_resumable(run_dir, config, resume, main)
    if main:
        _writable_folder(run_dir)
        add_loggers(trainer, config, run_dir)
    L.seed_everything(t.seed, workers=True)
    kind = TASK_KINDS[config.task]
    data = kind.data(config, None, None)
    run_data = cast(TaskData, data)  # every kind's data module has these methods
    run_data.setup()
    model = create_model(config.model["name"], **kind.model_inputs(data), **config.model_options())
    task = _task(config, model, data)
    if last is not None:
        check_checkpoint(last, task)
    if main:  # a resume's config differs at most in RESUME_MAY_CHANGE: the folder keeps the one it ends with
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
    if last is None and main:
        run_data.save_split_lists(run_dir / "splits")
        run_data.save_stats(run_dir / "data_stats.json")
    if main:
        _write_environment(run_dir, config, requested)
    if main and command:
        previous = (run_dir / "command.txt").read_text() if (run_dir / "command.txt").is_file() else ""
        atomic_write_text(run_dir / "command.txt", previous + command + "\n")
    with warnings.catch_warnings():
        # frozen parts (a frozen language model, frozen batch norms) are in eval mode on purpose: Lightning's
        # warning about them at the start of training tells a user nothing
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        # every training figure is logged per epoch (on_step=False): Lightning's step logging interval, and its
        # warning that an epoch has fewer batches than it, concern nothing gpfuse writes
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
        trainer.fit(task, datamodule=data, ckpt_path=str(last) if last else None, weights_only=True)
    stopped_early = stopper.wait_count >= stopper.patience  # read before validate/test run the callbacks again
    best = checkpoint.best_model_path or str(run_dir / "checkpoints" / "best.ckpt")
    best_epoch = int(torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    seen = history.figures(best_epoch)  # None: the best epoch ran before a resume from a checkpoint without it
    logged = (
        [seen]
        if seen is not None
        else trainer.validate(task, datamodule=data, ckpt_path=best, verbose=False, weights_only=True)
    )
    valid = _strip(_merge(logged), "valid")
    test = _strip(_merge(trainer.test(task, datamodule=data, ckpt_path=best, verbose=False, weights_only=True)), "test")
    metrics = {
        "valid": valid,
        "test": test,
        "best_epoch": best_epoch,
        "epochs_run": trainer.current_epoch,
        "stopped_early": stopped_early,
        "parameters": _count(model),
        "seed": t.seed,
        **_synthetic_note(config),
    }
    if main:
        _save_model_folder(model, config, run_dir)
        kind.figures(model, data, run_dir)
        write_samples(config.task, task, data, run_dir)
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        plot_run(run_dir / "logs", run_dir)
        log_test_metrics(trainer, config, test)
    return metrics


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{stage: {metric: [mean, std]}}`` over seeds (std with ddof=0 for one seed, else ddof=1)."""
    summary: dict[str, dict[str, list[float]]] = {}
    for stage in ("valid", "test"):
        keys = results[0][stage].keys()
        summary[stage] = {}
        for k in keys:
            values = np.array([r[stage][k] for r in results], dtype=float)
            summary[stage][k] = [float(values.mean()), float(values.std(ddof=1 if len(values) > 1 else 0))]
    return summary


def train_seeds(
    config: RunConfig, seeds: list[int], resume: bool = False, command: str = "", folds: list[int] | None = None
) -> dict[str, Any]:
    """Train one run per seed (and per ``data.fold`` when ``folds`` is given: cross-validation folds or
    random splits, run folders ``<name>/fold_<f>/seed_<s>``); writes ``<output_dir>/<name>/summary.json``
    with the mean ± std of every metric over all runs, and returns it."""
    variants = [(None, seed) for seed in seeds] if folds is None else [(f, seed) for f in folds for seed in seeds]
    results = []
    for fold, seed in variants:
        update: dict[str, Any] = {"train": config.train.model_copy(update={"seed": seed})}
        if fold is not None:
            update.update(name=fold_name(config.name, fold), data=config.data.model_copy(update={"fold": fold}))
        variant = config.model_copy(update=update)
        run_dir = run_dir_for(variant)
        resume_this = resume and (run_dir / "config.yaml").is_file()  # a finished one is left as it is (train)
        results.append(train(variant, resume=resume_this, command=command))
    summary = {
        "seeds": seeds,
        **({"folds": folds} if folds is not None else {}),
        "parameters": results[0]["parameters"],
        **summarise(results),
    }
    if is_main_process():
        atomic_write_text(Path(config.output_dir) / config.name / "summary.json", json.dumps(summary, indent=2))
    return summary


def summarise_folder(root: str | Path) -> dict[str, Any]:
    """Summarise every finished run (``*/metrics.json``) under ``root`` (runs made by separate commands,
    e.g. folds trained in parallel) and write ``root/summary.json``."""
    root = Path(root)
    paths = sorted(root.rglob("metrics.json"))
    if not paths:
        raise FileNotFoundError(f"no finished run (metrics.json) under {root}")
    results = [read_json(p) for p in paths]
    summary = {
        "runs": [str(p.parent.relative_to(root)) for p in paths],
        "parameters": results[0]["parameters"],
        **summarise(results),
    }
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2))
    return summary


def _saved_options(model: torch.nn.Module) -> dict[str, Any]:
    """Every option the model was built with: those ``create_model`` kept on it (its ``gpfuse_config``), and for
    an option its saved config lacks (a model saved before the option existed) the constructor's default, which
    built it."""
    config = cast("dict[str, Any]", model.gpfuse_config)
    parameters = inspect.signature(MODELS[config["name"]]).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **config["options"]}


def _load(
    run_dir: Path, data_root: str | None = None, overrides: list[str] | None = None, name: str = "other"
) -> tuple[RunConfig, L.LightningDataModule, torch.nn.Module]:
    config = load_run_config(run_dir)
    if overrides:
        config = _with_overrides(config, overrides, run_dir)
    config = at_data(config, data_root, name)
    stats_path = run_dir / "data_stats.json"
    stats = read_json(stats_path) if stats_path.is_file() else None
    kind = TASK_KINDS[config.task]
    data = kind.data(config, stats or None, data_root)
    model = load_pretrained(run_dir / "model", expected_name=config.model["name"])
    saved = _saved_options(model)
    differ = sorted(k for k, v in config.model_options().items() if saved.get(k) != v)
    if differ:
        raise CheckpointMismatchError(
            f"{run_dir / 'model'} was saved with another model config than "
            f"{run_dir / 'config.yaml'}: "
            + ", ".join(f"model.{k}: {saved.get(k)!r} vs {config.model_options()[k]!r}" for k in differ)
        )
    cast(TaskData, data).setup()
    for key, value in kind.model_inputs(data).items():
        expected = _saved_options(model).get(key)
        if value != expected:
            raise CheckpointMismatchError(f"{run_dir / 'model'} was made for {key}={expected}, the data gives {value}")
    return config, data, model


def _with_overrides(config: RunConfig, overrides: list[str], run_dir: Path) -> RunConfig:
    """The saved config with ``key.path=value`` overrides of the :data:`EVAL_OVERRIDES` keys only."""
    refused = [item.partition("=")[0] for item in overrides if item.partition("=")[0] not in EVAL_OVERRIDES]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)}: a saved run is evaluated as it was trained; --set may change only "
            f"{', '.join(EVAL_OVERRIDES)}"
        )
    raw = apply_overrides(config.model_dump(mode="json"), overrides)
    return validate_config(raw, f"{run_dir / 'config.yaml'} with --set {' '.join(overrides)}")


def evaluate(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    data_root: str | Path | None = None,
    name: str | None = None,
    engine: Engine = "torch",
    onnx_file: str | Path | None = None,
) -> dict[str, Any]:
    """Re-evaluate a finished run's saved model on its valid and test splits; update ``metrics.json`` with
    the figures and write the task's pictures (the rank list for re-identification). ``overrides`` (keys of
    :data:`EVAL_OVERRIDES`) choose where it runs, e.g. ``["train.devices=2", "train.strategy=ddp"]``: every
    process evaluates its shard, the figures are those of the whole split, rank 0 writes the files.

    With ``data_root``: score the model on another labelled set in the run's layout instead (sentiment: its
    test split; re-identification: its query and gallery; image/mask folders: every image; Decathlon: every
    labelled case), written to ``metrics_<name>.json`` (``name``: the folder's name by default), never over
    metrics.json.

    ``engine="onnxruntime"`` (2D segmentation runs): score the deployed file instead of the torch model, the run's
    ONNX file (``onnx_file``, default ``run_dir/model.onnx`` of ``gpfuse export``) run by ONNX Runtime, so that the
    figures are those of what runs; written to ``metrics_onnxruntime.json`` (with ``data_root``:
    ``metrics_<name>_onnxruntime.json``; with ``onnx_file``, its stem added: ``metrics_onnxruntime_model.int8.json``),
    without figures or ``samples/``, which stay the torch model's."""
    run_dir = Path(run_dir)
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "torch" and onnx_file is not None:
        raise ValueError(f"--onnx {onnx_file}: read by --engine onnxruntime only")
    if data_root is not None:
        name = name or Path(data_root).name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' or '.' (it names metrics_<name>.json)")
        if not Path(data_root).exists():
            raise FileNotFoundError(f"nothing to evaluate on: {data_root} does not exist")
    deployed = "" if engine == "torch" else f"_{engine}" + ("" if onnx_file is None else f"_{Path(onnx_file).stem}")
    stem = "metrics" + ("" if data_root is None else f"_{name}") + deployed
    path = run_dir / f"{stem}.json"
    saved = read_json(path) if path.is_file() else {}  # what will be written to is checked before the long work
    config, data, model = _load(run_dir, None if data_root is None else str(data_root), overrides, name or "other")
    if engine != "torch":
        if config.task != "segmentation":
            raise ValueError(
                f"{run_dir}: --engine {engine} scores 2D segmentation runs (the deployed EA-DK file); "
                f"this run is {config.task!r}: evaluate it with the torch engine"
            )
        model = GraphInputsOnly(cast(OnnxModel, SavedRun.read(run_dir, "cpu", engine, onnx_file).model))
    trainer = _trainer(config)
    kind = TASK_KINDS[config.task]
    task = _task(config, model, data)
    result: dict[str, Any] = {}
    if data_root is None:
        result["valid"] = _strip(
            _merge(trainer.validate(task, dataloaders=data.val_dataloader(), verbose=False)), "valid"
        )
    result["test"] = _strip(_merge(trainer.test(task, dataloaders=data.test_dataloader(), verbose=False)), "test")
    saved.pop("synthetic_data", None)
    result.update(_synthetic_note(config))
    if data_root is not None:
        result["data"] = str(data_root)
    if not trainer.is_global_zero:
        return {**result, "figures": []}
    if engine != "torch":
        result["engine"] = engine
        result["onnx_file"] = str(onnx_file or run_dir / "model.onnx")
    torch_model_outputs = data_root is None and engine == "torch"
    result["figures"] = [str(p) for p in kind.figures(model, data, run_dir)] if torch_model_outputs else []
    if torch_model_outputs:
        write_samples(config.task, task, data, run_dir)
    atomic_write_text(path, json.dumps({**saved, **result}, indent=2))
    return result


def predict(
    run_dir: str | Path,
    data_root: str | Path,
    out: str | Path,
    save_probabilities: bool = False,
    engine: Engine = "torch",
    onnx_file: str | Path | None = None,
    overwrite: bool = False,
) -> Path | None:
    """Apply a run's saved model to the data under ``data_root`` and write ``out``, through the predictors of
    :mod:`gpfuse.inference` (what ``gpfuse.load`` gives): sentiment runs score every utterance (CSV
    ``id,split,score,label``) and re-identification runs rank the gallery for every test query (CSV
    ``query,rank,gallery,distance,same_id``, top 10), both on data in the run's layout; segmentation runs write
    masks, overlays (8-bit probability maps with ``save_probabilities``) and ``predictions.csv`` for a folder of
    images, 3D runs a label volume and slices for each NIfTI file, into the folder ``out``; a 2D segmentation
    run given a video file writes the overlay video ``out`` and a per-frame CSV beside it
    (:func:`gpfuse.inference.video.segment_video`).

    ``engine="onnxruntime"``: the run's model is its ONNX file (``onnx_file``, default ``run_dir/model.onnx``
    of ``gpfuse export``) run by ONNX Runtime on the CPU; the outputs are the same.

    An ``out`` file that exists, or an ``out`` folder that is not empty, is refused (stale predictions would be
    read with the new ones) unless ``overwrite``, which first removes what this prediction writes there (the
    masks, overlays, probability maps and ``predictions.csv`` of a 2D run; the label volumes and slices of a 3D
    run; the CSV, or the video and its CSV); other files in the folder are kept.

    Prediction runs in one process on one device, so that every sample is written exactly once; started
    by a multi-process launcher (torchrun, srun), the processes other than rank 0 do nothing and return None.
    """
    from gpfuse.inference import SegmentationPredictor, load
    from gpfuse.inference.video import check_video_request, segment_video

    if not is_main_process():
        return None
    run_dir, out, data_root = Path(run_dir), Path(out), Path(data_root)
    if not data_root.exists():
        raise FileNotFoundError(f"nothing to predict on: {data_root} does not exist")
    config = load_run_config(run_dir)
    kind = TASK_KINDS[config.task]
    video = check_video_request(config.task, data_root, out)
    folder = kind.predicts_into_folder and not video
    written = kind.folder_outputs if folder else (out.name, out.with_suffix(".csv").name) if video else (out.name,)
    _check_output(out, folder, written, overwrite)  # before the long work
    gpu = engine == "torch" and torch.cuda.is_available() and config.train.accelerator in ("auto", "gpu", "cuda")
    predictor = load(run_dir, "cuda" if gpu else "cpu", engine, onnx_file)
    if video:  # a 2D segmentation run on a video file: an overlay video + per-frame CSV
        return segment_video(cast(SegmentationPredictor, predictor), data_root, out).video
    return kind.predict(predictor, config, data_root, out, save_probabilities)


def _check_output(out: Path, folder: bool, written: Sequence[str], overwrite: bool) -> None:
    """``out`` can take a prediction folder (``folder``) or file: it is not the other kind, holds nothing yet
    (unless ``overwrite``: then what ``written`` names, globs in the folder or file names beside ``out``, is
    removed first), and can be written."""
    if folder and out.is_file():
        raise ValueError(f"--out {out} is a file; this run writes a folder of predictions there")
    if not folder and out.is_dir():
        raise ValueError(f"--out {out} is a folder; this run writes one CSV file: give its path")
    if folder:
        ours = sorted({p for pattern in written for p in out.glob(pattern)}) if out.is_dir() else []
    else:
        ours = [path for path in (out.parent / name for name in written) if path.exists()]
    if not overwrite:
        if folder and out.is_dir() and any(out.iterdir()):
            what = (
                "an earlier prediction (" + ", ".join(p.name for p in ours[:4]) + ")"
                if ours
                else f"other files ({', '.join(sorted(p.name for p in out.iterdir())[:4])})"
            )
            raise FileExistsError(
                f"--out {out} holds {what}: the new predictions would be mixed with them. Pass --overwrite to "
                "replace this run's kind of outputs there, or give an empty or new folder"
            )
        if ours:
            raise FileExistsError(
                f"--out {out}: {', '.join(map(str, ours))} exists; pass --overwrite to replace it, or give another path"
            )
    for path in ours:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    _writable_folder(out if folder else out.parent)
