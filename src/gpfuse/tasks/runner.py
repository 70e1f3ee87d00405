"""Train, evaluate and predict from a run folder; several seeds summarised as mean ± std.

A run folder (``<output_dir>/<name>/seed_<seed>/``) holds: ``config.yaml`` (resolved), ``command.txt``,
``splits/{train,valid,test}.txt``, ``data_stats.json``, ``checkpoints/{best,last}.ckpt``,
``logs/attempt_<n>/metrics.csv`` (one per start or resume), ``metrics.json``, ``loss.png``, ``gates.png`` and the final weights in ``model/``
(safetensors + JSON). Lightning writes checkpoints atomically; gpfuse writes everything else through
a temporary file and a rename.
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

from gpfuse.config import RunConfig, dump_config, validate_config
from gpfuse.models import create_model, load_pretrained, save_pretrained
from gpfuse.models.io import CheckpointMismatchError
from gpfuse.tasks.kinds import TASK_KINDS
from gpfuse.tasks.plots import plot_run
from gpfuse.utils.files import atomic_write_text

__all__ = ["run_dir_for", "train", "train_seeds", "evaluate", "predict", "summarise", "summarise_folder",
           "load_run_config"]

log = logging.getLogger(__name__)


def run_dir_for(config: RunConfig, seed: int | None = None) -> Path:
    return Path(config.output_dir) / config.name / f"seed_{config.train.seed if seed is None else seed}"


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a gpfuse run folder (no config.yaml)")
    return validate_config(yaml.safe_load(path.read_text()), str(path))


def _check_resumable(run_dir: Path, config: RunConfig, resume: bool) -> Path | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if not resume:
        if (run_dir / "config.yaml").exists():
            raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, or change "
                                  "name/output_dir (nothing was overwritten)")
        return None
    if not last.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {last}")
    saved = load_run_config(run_dir)
    for section in ("data", "model"):
        old, new = getattr(saved, section), getattr(config, section)
        old = old.model_dump() if hasattr(old, "model_dump") else old
        new = new.model_dump() if hasattr(new, "model_dump") else new
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


def _trainer(config: RunConfig, run_dir: Path | None = None, callbacks: list | None = None) -> L.Trainer:
    t = config.train
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, precision=t.precision,
        deterministic=t.deterministic, gradient_clip_val=t.grad_clip, callbacks=callbacks or [],
        logger=_logger(run_dir) if run_dir else False,
        default_root_dir=run_dir, enable_checkpointing=bool(run_dir), enable_model_summary=False,
        log_every_n_steps=10)


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
    last = _check_resumable(run_dir, config, resume)
    L.seed_everything(config.train.seed, workers=True)
    kind = TASK_KINDS[config.task]
    data = kind.data(config, None, None)
    data.setup()
    model = create_model(config.model["name"], **kind.model_inputs(data), **config.model_options())
    task = kind.task(config, model)
    if not resume:
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
        data.save_split_lists(run_dir / "splits")
        data.save_stats(run_dir / "data_stats.json")
    if command:
        previous = (run_dir / "command.txt").read_text() if (run_dir / "command.txt").is_file() else ""
        atomic_write_text(run_dir / "command.txt", previous + command + "\n")
    t = config.train
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=t.monitor,
                                 mode=t.monitor_mode, save_last=True, save_top_k=1)
    stopper = EarlyStopping(monitor=t.monitor, mode=t.monitor_mode, patience=t.patience)
    trainer = _trainer(config, run_dir, [checkpoint, stopper, *(callbacks or [])])
    trainer.fit(task, datamodule=data, ckpt_path=str(last) if last else None)
    best = checkpoint.best_model_path or str(run_dir / "checkpoints" / "best.ckpt")
    valid = _strip(_merge(trainer.validate(task, datamodule=data, ckpt_path=best, verbose=False)), "valid")
    test = _strip(_merge(trainer.test(task, datamodule=data, ckpt_path=best, verbose=False)), "test")
    save_pretrained(model, run_dir / "model")
    kind.figures(model, data, run_dir)
    best_epoch = int(torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    metrics = {"valid": valid, "test": test, "best_epoch": best_epoch, "epochs_run": trainer.current_epoch,
               "parameters": _count(model), "seed": config.train.seed}
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


def _load(run_dir: Path, data_root: str | None = None) -> tuple[RunConfig, L.LightningDataModule, torch.nn.Module]:
    config = load_run_config(run_dir)
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


def evaluate(run_dir: str | Path) -> dict[str, Any]:
    """Re-evaluate a finished run's saved model on its valid and test splits; update ``metrics.json`` with
    the figures and write the task's pictures (the rank list for re-identification)."""
    run_dir = Path(run_dir)
    config, data, model = _load(run_dir)
    trainer = _trainer(config)
    kind = TASK_KINDS[config.task]
    task = kind.task(config, model)
    result = {"valid": _strip(_merge(trainer.validate(task, dataloaders=data.val_dataloader(), verbose=False)), "valid"),
              "test": _strip(_merge(trainer.test(task, dataloaders=data.test_dataloader(), verbose=False)), "test")}
    result["figures"] = [str(p) for p in kind.figures(model, data, run_dir)]
    path = run_dir / "metrics.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_text(path, json.dumps({**saved, **result}, indent=2))
    return result


def predict(run_dir: str | Path, data_root: str | Path, out: str | Path) -> Path:
    """Apply a run's saved model to the data under ``data_root`` and write ``out``: sentiment runs score every
    utterance (CSV ``id,split,score,label``), re-identification runs rank the gallery for every test query
    (CSV ``query,rank,gallery,distance,same_id``, top 10), both on data in the run's layout; segmentation
    runs write masks, overlays and ``predictions.csv`` for a folder of images into the folder ``out``."""
    run_dir = Path(run_dir)
    config, data, model = _load(run_dir, str(data_root))
    kind = TASK_KINDS[config.task]
    return kind.predict(_trainer(config), kind.task(config, model), data, Path(out))
