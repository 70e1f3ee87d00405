"""The task kinds a run can be: how each builds its data module, feeds the model its data-dependent sizes,
and wraps the model in its LightningModule. The runner knows nothing else of a task."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from gpfuse.config import RunConfig

__all__ = ["TaskKind", "TASK_KINDS"]


@dataclass(frozen=True)
class TaskKind:
    data: Callable[[RunConfig, Any, bool], L.LightningDataModule]  # (config, saved stats, for_predict)
    model_inputs: Callable[[L.LightningDataModule], dict[str, Any]]
    task: Callable[[RunConfig, nn.Module], L.LightningModule]
    figures: Callable[[nn.Module, L.LightningDataModule, Path], list[Path]]
    predict: Callable[[L.Trainer, L.LightningModule, L.LightningDataModule, Any], None]  # writes CSV rows


def _sentiment_data(config: RunConfig, stats: Any, for_predict: bool) -> L.LightningDataModule:
    from gpfuse.data.features import SPLITS
    from gpfuse.tasks.sentiment_data import SentimentDataModule

    return SentimentDataModule(config.data, stats=stats, required_splits=() if for_predict else SPLITS)


def _regression_task(config: RunConfig, model: nn.Module) -> L.LightningModule:
    from gpfuse.tasks.regression import RegressionTask

    t = config.train
    return RegressionTask(model, loss=t.loss, aux_weight=t.aux_weight, lr=t.lr, weight_decay=t.weight_decay,
                          warmup_epochs=t.warmup_epochs, max_epochs=t.max_epochs, min_lr=t.min_lr)


def _reid_data(config: RunConfig, stats: Any, for_predict: bool) -> L.LightningDataModule:
    from gpfuse.encoders.image import IMAGE_ENCODERS
    from gpfuse.tasks.reid_data import ReIDDataModule

    encoder = IMAGE_ENCODERS[config.model.get("image_encoder", "resnet50")][0]
    return ReIDDataModule(config.data, text_model=config.model.get("text_model"),
                          max_text_len=config.model.get("max_text_len", 64), seed=config.train.seed,
                          mean=encoder.input_mean, std=encoder.input_std)


def _retrieval_task(config: RunConfig, model: nn.Module) -> L.LightningModule:
    from gpfuse.tasks.retrieval import RetrievalTask

    t, d = config.train, config.data
    return RetrievalTask(model, lr=t.lr, lr_backbone=t.lr_backbone, weight_decay=t.weight_decay,
                         max_epochs=t.max_epochs, warmup_epochs=t.warmup_epochs, min_lr=t.min_lr, margin=t.margin,
                         label_smoothing=t.label_smoothing, id_weight=t.id_weight, triplet_weight=t.triplet_weight,
                         metric=d.metric, protocols=tuple(d.protocols), select_protocol=d.select_protocol,
                         ap=d.ap, rerank=d.rerank)


def _no_figures(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    return []


def _predict_scores(trainer: L.Trainer, task: L.LightningModule, data: L.LightningDataModule, writer: Any) -> None:
    writer.writerow(["id", "split", "score", "label"])
    for split, features in data.splits.items():
        if len(features):
            scores = torch.cat(trainer.predict(task, dataloaders=data.loader(split)))
            for i, score, label in zip(features.ids, scores.tolist(), features.labels.tolist()):
                writer.writerow([i, split, f"{score:.6f}", f"{label:.4f}"])


def _predict_ranks(trainer: L.Trainer, task: L.LightningModule, data: L.LightningDataModule, writer: Any) -> None:
    from gpfuse.tasks.ranklist import ranked_gallery

    writer.writerow(["query", "rank", "gallery", "distance", "same_id"])
    for query, rank, gallery, distance, same in ranked_gallery(task.model, data, top=10):
        writer.writerow([query, rank, gallery, f"{distance:.6f}", int(same)])


def _rank_list(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    from gpfuse.tasks.ranklist import save_rank_list

    return [save_rank_list(model, data, run_dir / "rank_list.png")]


TASK_KINDS: dict[str, TaskKind] = {
    "regression": TaskKind(_sentiment_data, lambda dm: {"input_dims": dm.input_dims}, _regression_task,
                           _no_figures, _predict_scores),
    "retrieval": TaskKind(_reid_data, lambda dm: {"num_classes": dm.num_classes}, _retrieval_task, _rank_list,
                          _predict_ranks),
}
