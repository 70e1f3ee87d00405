"""Train, evaluate and predict from a run folder; several seeds summarised as mean ± std.

A run folder (``<output_dir>/<name>/seed_<seed>/``) holds: ``config.yaml`` (resolved), ``command.txt``,
``splits/{train,valid,test}.txt``, ``data_stats.json``, ``checkpoints/{best,last}.ckpt``,
``logs/attempt_<n>/metrics.csv`` (one per start or resume), ``metrics.json``, ``loss.png``, ``gates.png`` and the final weights in ``model/``
(safetensors + JSON). Lightning writes checkpoints atomically; gpfuse writes everything else through
a temporary file and a rename.

Several processes (Lightning DDP: ``train.devices`` > 1, ``torchrun``, SLURM) all run this code: only the
global rank 0 checks for an existing run and writes into the run folder; every rank computes the same
seeded split and statistics, trains and evaluates its shard, and the tasks gather what the metrics need.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from gpfuse.config import ConfigError, RunConfig, dump_config, parse_overrides, validate_config
from gpfuse.models import create_model, load_pretrained, save_pretrained
from gpfuse.models.io import CheckpointMismatchError
from gpfuse.tasks.kinds import TASK_KINDS
from gpfuse.tasks.plots import plot_run
from gpfuse.utils.files import atomic_write_text

__all__ = ["run_dir_for", "train", "train_seeds", "evaluate", "predict", "summarise", "summarise_folder",
           "load_run_config", "is_main_process", "EVAL_OVERRIDES"]

#: what ``gpfuse eval --set`` may change in a saved run's config: where and how it runs, never what it computes
EVAL_OVERRIDES = ("train.accelerator", "train.devices", "train.strategy", "train.num_nodes", "data.num_workers")


def is_main_process() -> bool:
    """True on the global rank 0 (or the only process): the one that writes files and prints results. Read
    from Lightning's rank, which a Trainer sets, and before any Trainer from the launcher's environment."""
    return rank_zero_only.rank == 0

log = logging.getLogger(__name__)


def run_dir_for(config: RunConfig, seed: int | None = None) -> Path:
    return Path(config.output_dir) / config.name / f"seed_{config.train.seed if seed is None else seed}"


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a gpfuse run folder (no config.yaml)")
    return validate_config(yaml.safe_load(path.read_text()), str(path))


def _check_resumable(run_dir: Path, config: RunConfig, resume: bool, main: bool = True) -> Path | None:
    """The checkpoint to resume from (None for a new run). A new run must not exist yet: checked on the main
    process only, since under DDP it has created the run folder before the other processes look."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not resume:
        if main and (run_dir / "config.yaml").exists():
            raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, or change "
                                  "name/output_dir (nothing was overwritten)")
        return None
    if not last.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {last}")
    saved, current = load_run_config(run_dir).model_dump(mode="json"), config.model_dump(mode="json")
    for section in ("data", "model"):  # as JSON: a tuple and the list it was saved as are the same value
        old, new = saved[section], current[section]
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise CheckpointMismatchError(f"{last} was made with another {section} config: "
                                          + ", ".join(f"{section}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff))
    return last


def _logger(run_dir: Path) -> CSVLogger:
    """One CSV log per attempt (``logs/attempt_<n>/metrics.csv``): Lightning's CSVLogger deletes an existing
    file, so a resumed run logs beside the earlier attempts instead of over them."""
    attempt = len(list((run_dir / "logs").glob("attempt_*")))
    return CSVLogger(run_dir / "logs", name="", version=f"attempt_{attempt}")


def _trainer(config: RunConfig, run_dir: Path | None = None, callbacks: list | None = None,
             single_device: bool = False) -> L.Trainer:
    """The Lightning trainer of ``config.train``; ``single_device`` runs on one device of the accelerator
    (prediction: one process writes every output once)."""
    t = config.train
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=1 if single_device else t.devices,
        strategy="auto" if single_device else t.strategy, num_nodes=1 if single_device else t.num_nodes,
        sync_batchnorm=t.sync_batchnorm and not single_device, precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches, deterministic=t.deterministic,
        gradient_clip_val=t.grad_clip, callbacks=callbacks or [], logger=_logger(run_dir) if run_dir else False,
        default_root_dir=run_dir, enable_checkpointing=bool(run_dir), enable_model_summary=False,
        log_every_n_steps=10)


def _task(config: RunConfig, model: torch.nn.Module) -> L.LightningModule:
    """The task's LightningModule, its weights in channels_last layout when ``train.channels_last`` (3D
    convolutions: channels_last_3d)."""
    task = TASK_KINDS[config.task].task(config, model)
    if config.train.channels_last:
        volumetric = any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        task = task.to(memory_format=torch.channels_last_3d if volumetric else torch.channels_last)
    return task


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Lightning returns one dict per eval dataloader (query and gallery for retrieval): merge them."""
    merged: dict[str, Any] = {}
    for result in results:
        merged.update({k.split("/dataloader_idx_")[0]: v for k, v in result.items()})
    return merged


def _strip(metrics: dict[str, Any], stage: str) -> dict[str, float]:
    return {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith(f"{stage}/")}


def _count(model: torch.nn.Module) -> dict[str, int]:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def train(config: RunConfig, resume: bool = False, command: str = "", callbacks: list | None = None) -> dict[str, Any]:
    """Train one seed (``config.train.seed``), select on validation, test once with the best checkpoint."""
    run_dir = run_dir_for(config)
    t = config.train
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=t.monitor,
                                 mode=t.monitor_mode, save_last=True, save_top_k=1)
    stopper = EarlyStopping(monitor=t.monitor, mode=t.monitor_mode, patience=t.patience)
    trainer = _trainer(config, run_dir, [checkpoint, stopper, *(callbacks or [])])
    main = trainer.is_global_zero
    last = _check_resumable(run_dir, config, resume, main)
    L.seed_everything(t.seed, workers=True)
    kind = TASK_KINDS[config.task]
    data = kind.data(config, None, None)
    data.setup()
    model = create_model(config.model["name"], **kind.model_inputs(data), **config.model_options())
    task = _task(config, model)
    if main and not resume:
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
        data.save_split_lists(run_dir / "splits")
        data.save_stats(run_dir / "data_stats.json")
    if main and command:
        previous = (run_dir / "command.txt").read_text() if (run_dir / "command.txt").is_file() else ""
        atomic_write_text(run_dir / "command.txt", previous + command + "\n")
    trainer.fit(task, datamodule=data, ckpt_path=str(last) if last else None)
    best = checkpoint.best_model_path or str(run_dir / "checkpoints" / "best.ckpt")
    valid = _strip(_merge(trainer.validate(task, datamodule=data, ckpt_path=best, verbose=False)), "valid")
    test = _strip(_merge(trainer.test(task, datamodule=data, ckpt_path=best, verbose=False)), "test")
    best_epoch = int(torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    metrics = {"valid": valid, "test": test, "best_epoch": best_epoch, "epochs_run": trainer.current_epoch,
               "parameters": _count(model), "seed": t.seed}
    if main:
        save_pretrained(model, run_dir / "model")
        kind.figures(model, data, run_dir)
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        plot_run(run_dir / "logs", run_dir)
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


def train_seeds(config: RunConfig, seeds: list[int], resume: bool = False, command: str = "",
                folds: list[int] | None = None) -> dict[str, Any]:
    """Train one run per seed (and per ``data.fold`` when ``folds`` is given: cross-validation folds or
    random splits, run folders ``<name>/fold_<f>/seed_<s>``); writes ``<output_dir>/<name>/summary.json``
    with the mean ± std of every metric over all runs, and returns it."""
    variants = [(None, seed) for seed in seeds] if folds is None else [(f, seed) for f in folds for seed in seeds]
    results = []
    for fold, seed in variants:
        update: dict[str, Any] = {"train": config.train.model_copy(update={"seed": seed})}
        if fold is not None:
            update.update(name=f"{config.name}/fold_{fold}", data=config.data.model_copy(update={"fold": fold}))
        variant = config.model_copy(update=update)
        run_dir = run_dir_for(variant)
        resume_this = resume and (run_dir / "checkpoints" / "last.ckpt").is_file()
        if resume and not resume_this and (run_dir / "metrics.json").is_file():
            results.append(json.loads((run_dir / "metrics.json").read_text()))
            continue
        results.append(train(variant, resume=resume_this, command=command))
    summary = {"seeds": seeds, **({"folds": folds} if folds is not None else {}),
               "parameters": results[0]["parameters"], **summarise(results)}
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
    results = [json.loads(p.read_text()) for p in paths]
    summary = {"runs": [str(p.parent.relative_to(root)) for p in paths], "parameters": results[0]["parameters"],
               **summarise(results)}
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2))
    return summary


def _load(run_dir: Path, data_root: str | None = None, overrides: list[str] | None = None
          ) -> tuple[RunConfig, L.LightningDataModule, torch.nn.Module]:
    config = load_run_config(run_dir)
    if overrides:
        config = _with_overrides(config, overrides, run_dir)
    stats_path = run_dir / "data_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else None
    kind = TASK_KINDS[config.task]
    data = kind.data(config, stats or None, data_root)
    model = load_pretrained(run_dir / "model", expected_name=config.model["name"])
    saved = model.gpfuse_config["options"]
    differ = sorted(k for k, v in config.model_options().items() if saved.get(k) != v)
    if differ:
        raise CheckpointMismatchError(f"{run_dir / 'model'} was saved with another model config than "
                                      f"{run_dir / 'config.yaml'}: " + ", ".join(
                                          f"model.{k}: {saved.get(k)!r} vs {config.model_options()[k]!r}" for k in differ))
    data.setup()
    for key, value in kind.model_inputs(data).items():
        expected = model.gpfuse_config["options"].get(key)
        if value != expected:
            raise CheckpointMismatchError(f"{run_dir / 'model'} was made for {key}={expected}, the data gives {value}")
    return config, data, model


def _with_overrides(config: RunConfig, overrides: list[str], run_dir: Path) -> RunConfig:
    """The saved config with ``key.path=value`` overrides of the :data:`EVAL_OVERRIDES` keys only."""
    raw = config.model_dump(mode="json")
    for section, values in parse_overrides(overrides).items():
        keys = [f"{section}.{k}" for k in values] if isinstance(values, dict) else [section]
        refused = [k for k in keys if k not in EVAL_OVERRIDES]
        if refused:
            raise ConfigError(f"{', '.join(refused)}: a saved run is evaluated as it was trained; --set may change "
                              f"only {', '.join(EVAL_OVERRIDES)}")
        raw[section].update(values)
    return validate_config(raw, f"{run_dir / 'config.yaml'} with --set {' '.join(overrides)}")


def evaluate(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run's saved model on its valid and test splits; update ``metrics.json`` with
    the figures and write the task's pictures (the rank list for re-identification). ``overrides`` (keys of
    :data:`EVAL_OVERRIDES`) choose where it runs, e.g. ``["train.devices=2", "train.strategy=ddp"]``: every
    process evaluates its shard, the figures are those of the whole split, rank 0 writes the files."""
    run_dir = Path(run_dir)
    config, data, model = _load(run_dir, overrides=overrides)
    trainer = _trainer(config)
    kind = TASK_KINDS[config.task]
    task = _task(config, model)
    result = {"valid": _strip(_merge(trainer.validate(task, dataloaders=data.val_dataloader(), verbose=False)), "valid"),
              "test": _strip(_merge(trainer.test(task, dataloaders=data.test_dataloader(), verbose=False)), "test")}
    if not trainer.is_global_zero:
        return {**result, "figures": []}
    result["figures"] = [str(p) for p in kind.figures(model, data, run_dir)]
    path = run_dir / "metrics.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_text(path, json.dumps({**saved, **result}, indent=2))
    return result


def predict(run_dir: str | Path, data_root: str | Path, out: str | Path) -> Path | None:
    """Apply a run's saved model to the data under ``data_root`` and write ``out``: sentiment runs score every
    utterance (CSV ``id,split,score,label``), re-identification runs rank the gallery for every test query
    (CSV ``query,rank,gallery,distance,same_id``, top 10), both on data in the run's layout; segmentation
    runs write masks, overlays and ``predictions.csv`` for a folder of images into the folder ``out``.

    Prediction runs in one process on one device, so that every sample is written exactly once; started
    by a multi-process launcher (torchrun, srun), the processes other than rank 0 do nothing and return None.
    """
    if not is_main_process():
        return None
    run_dir = Path(run_dir)
    config, data, model = _load(run_dir, str(data_root))
    kind = TASK_KINDS[config.task]
    return kind.predict(_trainer(config, single_device=True), _task(config, model), data, Path(out))
