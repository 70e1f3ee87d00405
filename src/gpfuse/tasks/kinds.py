"""The task kinds a run can be: how each builds its data module, feeds the model its data-dependent sizes,
and wraps the model in its LightningModule. The runner knows nothing else of a task."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import lightning as L
import torch
from torch import nn

from gpfuse.config import RunConfig
from gpfuse.utils.files import atomic_path

__all__ = ["TaskKind", "TASK_KINDS"]


@dataclass(frozen=True)
class TaskKind:
    data: Callable[[RunConfig, Any, str | None], L.LightningDataModule]  # (config, saved stats, predict root)
    model_inputs: Callable[[L.LightningDataModule], dict[str, Any]]
    task: Callable[[RunConfig, nn.Module], L.LightningModule]
    figures: Callable[[nn.Module, L.LightningDataModule, Path], list[Path]]
    predict: Callable[[L.Trainer, L.LightningModule, L.LightningDataModule, Path], Path]  # writes to the path
    predicts_into_folder: bool = False  # predict writes a folder of files (else one CSV file)


def _at_root(config: RunConfig, root: str | None) -> RunConfig:
    """The config with ``data.root`` moved to ``root`` (prediction on other data in the same layout)."""
    return config if root is None else config.model_copy(update={"data": config.data.model_copy(update={"root": root})})


def _write_csv(out: Path, rows: Iterable[list[Any]]) -> Path:
    with atomic_path(out) as tmp, tmp.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return out


def _sentiment_data(config: RunConfig, stats: Any, predict_root: str | None) -> L.LightningDataModule:
    from gpfuse.data.features import SPLITS
    from gpfuse.tasks.sentiment_data import SentimentDataModule

    from gpfuse.models import MODELS

    config = _at_root(config, predict_root)
    reads_tokens = getattr(MODELS[config.model["name"]], "text_input", "states") == "tokens"
    return SentimentDataModule(config.data, stats=stats, required_splits=() if predict_root else SPLITS,
                               tokenizer=config.model.get("backbone", "minilm") if reads_tokens else None,
                               seed=config.train.seed)


def _regression_task(config: RunConfig, model: nn.Module) -> L.LightningModule:
    from gpfuse.tasks.regression import RegressionTask

    t = config.train
    return RegressionTask(model, loss=t.loss, aux_weight=t.aux_weight, lr=t.lr, weight_decay=t.weight_decay,
                          warmup_epochs=t.warmup_epochs, max_epochs=t.max_epochs, min_lr=t.min_lr)


def _encoder_class(name: str) -> type:
    from gpfuse.encoders.image import IMAGE_ENCODERS

    return IMAGE_ENCODERS[name][0]


def _reid_data(config: RunConfig, stats: Any, predict_root: str | None) -> L.LightningDataModule:
    from gpfuse.tasks.reid_data import ReIDDataModule

    config = _at_root(config, predict_root)
    encoder = _encoder_class(config.model.get("image_encoder", "resnet50"))
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


def _predict_scores(trainer: L.Trainer, task: L.LightningModule, data: L.LightningDataModule, out: Path) -> Path:
    """``id,split,score,label`` for every utterance."""
    rows: list[list[Any]] = [["id", "split", "score", "label"]]
    for split, features in data.splits.items():
        if len(features):
            scores = torch.cat(trainer.predict(task, dataloaders=data.loader(split)))
            rows += [[i, split, f"{score:.6f}", f"{label:.4f}"]
                     for i, score, label in zip(features.ids, scores.tolist(), features.labels.tolist())]
    return _write_csv(out, rows)


def _predict_ranks(trainer: L.Trainer, task: L.LightningModule, data: L.LightningDataModule, out: Path) -> Path:
    """``query,rank,gallery,distance,same_id`` for the top 10 of every test query."""
    from gpfuse.tasks.ranklist import ranked_gallery

    rows = [[q, rank, g, f"{d:.6f}", int(same)] for q, rank, g, d, same in ranked_gallery(task.model, data, top=10)]
    return _write_csv(out, [["query", "rank", "gallery", "distance", "same_id"], *rows])


def _rank_list(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    from gpfuse.tasks.ranklist import save_rank_list

    return [save_rank_list(model, data, run_dir / "rank_list.png")]


def _seg_data(config: RunConfig, stats: Any, predict_root: str | None) -> L.LightningDataModule:
    from gpfuse.tasks.seg_data import SegDataModule

    encoder = _encoder_class(config.model.get("encoder", "efficientnet_lite0"))
    return SegDataModule(config.data, seed=config.train.seed, mean=encoder.input_mean, std=encoder.input_std,
                         predict_root=predict_root)


def _segmentation_task(config: RunConfig, model: nn.Module) -> L.LightningModule:
    from gpfuse.tasks.segmentation import SegmentationTask

    t = config.train
    return SegmentationTask(model, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                            schedule=t.schedule, poly_power=t.poly_power, warmup_epochs=t.warmup_epochs,
                            max_epochs=t.max_epochs, min_lr=t.min_lr, threshold=t.threshold,
                            test_names=config_test_names(config))


def config_test_names(config: RunConfig) -> tuple[str, ...]:
    """The test sets a segmentation run reports, in loader order: the given folders, then ``held_out``."""
    d = config.data
    return (*d.test, *(("held_out",) if d.split != "given" else ()))


def _prediction_grid(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    from gpfuse.tasks.overlays import save_prediction_grid

    return [save_prediction_grid(model, data._dataset(f"test_{name}"), run_dir / f"predictions_{name}.png")
            for name in data.test_names]


def _predict_masks(trainer: L.Trainer, task: L.LightningModule, data: L.LightningDataModule, out: Path) -> Path:
    """Masks, overlays and ``predictions.csv`` in the folder ``out``."""
    from gpfuse.tasks.overlays import write_predictions

    probabilities = [p for batch in trainer.predict(task, datamodule=data) for p in batch]
    return write_predictions(probabilities, data.items["predict"], out, task.hparams.threshold)


def _volume_data(config: RunConfig, stats: Any, predict_root: str | None) -> L.LightningDataModule:
    from gpfuse.tasks.volume_data import VolumeDataModule

    return VolumeDataModule(config.data, seed=config.train.seed, predict_root=predict_root)


def _volume_task(config: RunConfig, model: nn.Module) -> L.LightningModule:
    from gpfuse.tasks.segmentation3d import Segmentation3DTask

    t, d = config.train, config.data
    names = tuple(_class_names(config))
    return Segmentation3DTask(model, names, roi_size=d.roi_size, sw_batch_size=d.sw_batch_size,
                              overlap_val=d.overlap_val, overlap_test=d.overlap_test, lr=t.lr,
                              weight_decay=t.weight_decay, warmup_epochs=t.warmup_epochs, max_epochs=t.max_epochs,
                              min_lr=t.min_lr, temperature=t.temperature, hard_negatives=t.hard_negatives)


def _class_names(config: RunConfig) -> list[str]:
    from gpfuse.data.decathlon import read_decathlon

    labels = read_decathlon(config.data.root)[1]
    return [labels[i] for i in range(len(labels))]


def _volume_figure(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    """Mid slices of the first test volume on its file's grid: prediction and label."""
    from monai.data import list_data_collate

    from gpfuse.tasks.segmentation3d import original_grid_labels
    from gpfuse.tasks.volume_outputs import original_image, save_mid_slices

    d = data.config
    dataset = data._dataset("test")
    batch = list_data_collate([dataset[0]])
    batch["image"] = batch["image"].to(next(model.parameters()).device)
    model.eval()
    pred = original_grid_labels(model, batch, dataset.transform, d.roi_size, d.sw_batch_size, d.overlap_test)
    case = data.cases["test"][0]
    return [save_mid_slices(original_image(case.image), pred.cpu().numpy(), run_dir / "prediction_slices.png",
                            label=batch["label"][0, 0].numpy(), title=case.name)]


def _predict_volumes(trainer: L.Trainer, task: L.LightningModule, data: L.LightningDataModule, out: Path) -> Path:
    from gpfuse.tasks.volume_outputs import write_volume_predictions

    data.setup()
    return write_volume_predictions(task, data, out)


TASK_KINDS: dict[str, TaskKind] = {
    "regression": TaskKind(_sentiment_data, lambda dm: {"input_dims": dm.input_dims}, _regression_task,
                           _no_figures, _predict_scores),
    "retrieval": TaskKind(_reid_data, lambda dm: {"num_classes": dm.num_classes}, _retrieval_task, _rank_list,
                          _predict_ranks),
    "segmentation": TaskKind(_seg_data, lambda dm: {}, _segmentation_task, _prediction_grid, _predict_masks, True),
    "segmentation3d": TaskKind(_volume_data, lambda dm: {"num_classes": dm.num_classes, "class_texts": dm.class_texts},
                               _volume_task, _volume_figure, _predict_volumes, True),
}
