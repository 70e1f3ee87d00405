"""The task kinds a run can be: how each builds its data module, feeds the model its data-dependent sizes,
and wraps the model in its LightningModule. The runner knows nothing else of a task."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import lightning as L
from torch import nn

from gpfuse.config import (
    DataConfig,
    ReIDDataConfig,
    RunConfig,
    SegDataConfig,
    SentimentDataConfig,
    VolumeDataConfig,
)
from gpfuse.utils.files import atomic_path
from gpfuse.utils.progress import counter

if TYPE_CHECKING:
    from gpfuse.tasks.reid_data import ReIDDataModule
    from gpfuse.tasks.seg_data import SegDataModule
    from gpfuse.tasks.sentiment_data import SentimentDataModule
    from gpfuse.tasks.volume_data import VolumeDataModule

__all__ = ["TASK_KINDS", "TaskData", "TaskKind", "at_data"]


class TaskData(Protocol):
    """What the runner calls on every task kind's data module beside the LightningDataModule interface."""

    def setup(self, stage: str | None = None) -> None: ...

    def save_split_lists(self, folder: Path) -> None: ...

    def save_stats(self, path: Path) -> None: ...


class _ImageEncoderClass(Protocol):
    """An image encoder class of ``IMAGE_ENCODERS``: its input normalisation on [0, 1] pixels."""

    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]


@dataclass(frozen=True)
class TaskKind:
    data: Callable[[RunConfig, Any, str | None], L.LightningDataModule]  # (config, saved stats, other data root)
    model_inputs: Callable[[L.LightningDataModule], dict[str, Any]]
    task: Callable[[RunConfig, nn.Module, L.LightningDataModule], L.LightningModule]
    figures: Callable[[nn.Module, L.LightningDataModule, Path], list[Path]]
    predict: Callable[[Any, RunConfig, Path, Path, bool], Path]  # (predictor, config, data, out, probabilities)
    folder_outputs: tuple[str, ...] = ()  # what predict writes into the folder --out (globs); () : one CSV file

    @property
    def predicts_into_folder(self) -> bool:
        return bool(self.folder_outputs)


def at_data(config: RunConfig, root: str | None, name: str = "other") -> RunConfig:
    """The config reading the data at ``root`` instead (another labelled set of the run's layout, or data to
    predict on): its ``data.root``, or for image/mask folders the one test set ``name``."""
    if root is None:
        return config
    data: DataConfig
    if isinstance(config.data, SegDataConfig):
        data = config.data.model_copy(update={"test": {name: root}, "split": "given", "val": [], "subset": None})
    else:
        data = config.data.model_copy(update={"root": root})
    return config.model_copy(update={"data": data})


def _write_csv(out: Path, rows: Iterable[list[Any]]) -> Path:
    with atomic_path(out) as tmp, tmp.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return out


def _sentiment_data(config: RunConfig, stats: Any, other_root: str | None) -> SentimentDataModule:
    from gpfuse.data.features import SPLITS
    from gpfuse.models import MODELS
    from gpfuse.tasks.sentiment_data import SentimentDataModule

    config = at_data(config, other_root)
    reads_tokens = getattr(MODELS[config.model["name"]], "text_input", "states") == "tokens"
    return SentimentDataModule(
        config.data_as(SentimentDataConfig),
        stats=stats,
        required_splits=("test",) if other_root else SPLITS,
        tokenizer=config.model.get("backbone", "minilm") if reads_tokens else None,
        seed=config.train.seed,
    )


def _regression_task(config: RunConfig, model: nn.Module, data: L.LightningDataModule) -> L.LightningModule:
    from gpfuse.tasks.regression import RegressionTask

    t = config.train
    return RegressionTask(
        model,
        loss=t.loss,
        aux_weight=t.aux_weight,
        lr=t.lr,
        weight_decay=t.weight_decay,
        warmup_epochs=t.warmup_epochs,
        max_epochs=t.max_epochs,
        min_lr=t.min_lr,
    )


def _encoder_class(name: str) -> _ImageEncoderClass:
    from gpfuse.encoders.image import IMAGE_ENCODERS

    return cast(_ImageEncoderClass, IMAGE_ENCODERS[name][0])


def _reid_data(config: RunConfig, stats: Any, other_root: str | None) -> ReIDDataModule:
    from gpfuse.tasks.reid_data import ReIDDataModule

    config = at_data(config, other_root)
    encoder = _encoder_class(config.model.get("image_encoder", "resnet50"))
    return ReIDDataModule(
        config.data_as(ReIDDataConfig),
        text_model=config.model.get("text_model"),
        max_text_len=config.model.get("max_text_len", 64),
        seed=config.train.seed,
        mean=encoder.input_mean,
        std=encoder.input_std,
    )


def _retrieval_task(config: RunConfig, model: nn.Module, data: L.LightningDataModule) -> L.LightningModule:
    from gpfuse.tasks.retrieval import RetrievalTask

    t, d = config.train, config.data_as(ReIDDataConfig)
    return RetrievalTask(
        model,
        lr=t.lr,
        lr_backbone=t.lr_backbone,
        weight_decay=t.weight_decay,
        max_epochs=t.max_epochs,
        warmup_epochs=t.warmup_epochs,
        min_lr=t.min_lr,
        margin=t.margin,
        label_smoothing=t.label_smoothing,
        id_weight=t.id_weight,
        triplet_weight=t.triplet_weight,
        metric=d.metric,
        protocols=tuple(d.protocols),
        select_protocol=d.select_protocol,
        ap=d.ap,
        rerank=d.rerank,
    )


def _no_figures(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    return []


def _predict_scores(predictor: Any, config: RunConfig, root: Path, out: Path, probabilities: bool) -> Path:
    """``id,split,score,label`` for every utterance of the data at ``root`` (the run's layout)."""
    from gpfuse.tasks.sentiment_data import read_sentiment_source

    rows: list[list[Any]] = [["id", "split", "score", "label"]]
    modalities = config.data_as(SentimentDataConfig).modalities
    for split, f in read_sentiment_source(at_data(config, str(root)).data_as(SentimentDataConfig)).items():
        if not len(f):
            continue
        # as stored, padding in place (positions count from the first stored step, as in evaluation)
        raw = {m: x for m, x in f.features.items() if m in modalities}
        if predictor.reads_tokens:
            raw.pop("text", None)  # a token model retokenises the raw text, as its data module does
        text = raw.pop("text", None)
        scores = predictor.predict(None if text is not None else f.texts, text_features=text, masks=f.masks, **raw)
        rows += [
            [i, split, f"{score:.6f}", f"{label:.4f}"]
            for i, score, label in zip(f.ids, scores.tolist(), f.labels.tolist())
        ]
    return _write_csv(out, rows)


def _predict_ranks(predictor: Any, config: RunConfig, root: Path, out: Path, probabilities: bool) -> Path:
    """``query,rank,gallery,distance,same_id`` for the top 10 of every test query of the data at ``root``
    (same-identity same-camera gallery entries left out, as in evaluation), under the protocol the run reports
    (``data.select_protocol``)."""
    data = _reid_data(config, None, str(root))
    data.setup()
    query, gallery = data.datasets["query"], data.datasets["gallery"]
    reports = (lambda ds: ds.reports) if predictor.text_model else (lambda ds: None)
    order, dist = predictor.rank(
        [it.path for it in query.items],
        [it.path for it in gallery.items],
        top_k=len(gallery),
        query_reports=reports(query),
        gallery_reports=reports(gallery),
    )
    rows: list[list[Any]] = [["query", "rank", "gallery", "distance", "same_id"]]
    for qi, q in enumerate(query.items):
        kept = [
            (j, d)
            for j, d in zip(order[qi], dist[qi])
            if not (gallery.items[j].pid == q.pid and gallery.items[j].camid == q.camid)
        ][:10]
        rows += [
            [q.path, rank, gallery.items[j].path, f"{d:.6f}", int(gallery.items[j].pid == q.pid)]
            for rank, (j, d) in enumerate(kept, 1)
        ]
    return _write_csv(out, rows)


def _rank_list(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    from gpfuse.tasks.ranklist import save_rank_list

    return [save_rank_list(model, data, run_dir / "rank_list.png")]


def _seg_data(config: RunConfig, stats: Any, other_root: str | None) -> SegDataModule:
    from gpfuse.tasks.seg_data import SegDataModule

    encoder = _encoder_class(config.model.get("encoder", "efficientnet_lite0"))
    return SegDataModule(
        config.data_as(SegDataConfig),
        seed=config.train.seed,
        mean=encoder.input_mean,
        std=encoder.input_std,
        test_only=other_root is not None,
    )


def _segmentation_task(config: RunConfig, model: nn.Module, data: L.LightningDataModule) -> L.LightningModule:
    from gpfuse.tasks.segmentation import SegmentationTask

    t = config.train
    return SegmentationTask(
        model,
        optimizer=t.optimizer,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        schedule=t.schedule,
        poly_power=t.poly_power,
        warmup_epochs=t.warmup_epochs,
        max_epochs=t.max_epochs,
        min_lr=t.min_lr,
        threshold=t.threshold,
        test_names=config_test_names(config),
    )


def config_test_names(config: RunConfig) -> tuple[str, ...]:
    """The test sets a segmentation run reports, in loader order: the given folders, then ``held_out``."""
    d = config.data_as(SegDataConfig)
    return (*d.test, *(("held_out",) if d.split != "given" else ()))


def _prediction_grid(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    from gpfuse.tasks.overlays import save_prediction_grid

    seg = cast("SegDataModule", data)
    return [
        save_prediction_grid(model, seg._dataset(f"test_{name}"), run_dir / f"predictions_{name}.png")
        for name in seg.test_names
    ]


def _predict_masks(predictor: Any, config: RunConfig, root: Path, out: Path, probabilities: bool) -> Path:
    """Masks, overlays, with ``probabilities`` 8-bit probability maps, and ``predictions.csv`` (Dice where a mask
    is found) in the folder ``out``, for the images of ``root``: a data folder (``images/`` + ``masks/``), its
    ``images/`` folder, or a folder of images."""
    from gpfuse.data.polyp import IMAGE_DIRS, list_folder
    from gpfuse.tasks.overlays import write_predictions

    if root.name in IMAGE_DIRS and root.parent.is_dir():
        root = root.parent  # the masks beside the images folder are found too
    items = list_folder(root, masks=False)
    maps: list = []
    with counter(f"predicting {root.name}: images", len(items)) as advance:
        for start in range(0, len(items), predictor.batch_size):
            maps += predictor.probabilities([it.image for it in items[start : start + predictor.batch_size]])
            advance(len(maps) - start)
    return write_predictions(maps, items, out, predictor.threshold, save_probabilities=probabilities)


def _volume_data(config: RunConfig, stats: Any, other_root: str | None) -> VolumeDataModule:
    from gpfuse.tasks.volume_data import VolumeDataModule

    return VolumeDataModule(
        at_data(config, other_root).data_as(VolumeDataConfig), seed=config.train.seed, test_only=other_root is not None
    )


def _volume_task(config: RunConfig, model: nn.Module, data: L.LightningDataModule) -> L.LightningModule:
    from gpfuse.tasks.segmentation3d import Segmentation3DTask

    t, d = config.train, config.data_as(VolumeDataConfig)
    labels = cast("VolumeDataModule", data).labels
    names = tuple(labels[i] for i in range(len(labels)))
    return Segmentation3DTask(
        model,
        names,
        roi_size=d.roi_size,
        sw_batch_size=d.sw_batch_size,
        overlap_val=d.overlap_val,
        overlap_test=d.overlap_test,
        lr=t.lr,
        weight_decay=t.weight_decay,
        warmup_epochs=t.warmup_epochs,
        max_epochs=t.max_epochs,
        min_lr=t.min_lr,
        temperature=t.temperature,
        hard_negatives=t.hard_negatives,
        global_alignment=t.global_alignment,
        local_alignment=t.local_alignment,
    )


def _volume_figure(model: nn.Module, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    """Mid slices of the first test volume on its file's grid: prediction and label."""
    from monai.data import list_data_collate

    from gpfuse.tasks.segmentation3d import original_grid_labels
    from gpfuse.tasks.volume_outputs import original_image, save_mid_slices

    volumes = cast("VolumeDataModule", data)
    d = volumes.config
    dataset = volumes._dataset("test")
    batch = list_data_collate([dataset[0]])
    batch["image"] = batch["image"].to(next(model.parameters()).device)
    model.eval()
    pred = original_grid_labels(model, batch, dataset.transform, d.roi_size, d.sw_batch_size, d.overlap_test)
    case = volumes.cases["test"][0]
    return [
        save_mid_slices(
            original_image(case.image),
            pred.cpu().numpy(),
            run_dir / "prediction_slices.png",
            label=batch["label"][0, 0].numpy(),
            title=case.name,
        )
    ]


def _predict_volumes(predictor: Any, config: RunConfig, root: Path, out: Path, probabilities: bool) -> Path:
    """``<name>_seg.nii.gz`` and a slices PNG in the folder ``out`` for a NIfTI file or each one in a folder."""
    from gpfuse.tasks.volume_outputs import write_volume_predictions

    files = sorted(root.glob("*.nii*")) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"no NIfTI volume (*.nii, *.nii.gz) in {root}")
    return write_volume_predictions(predictor, files, out)


def _sentiment_inputs(data: L.LightningDataModule) -> dict[str, Any]:
    return {"input_dims": cast("SentimentDataModule", data).input_dims}


def _reid_inputs(data: L.LightningDataModule) -> dict[str, Any]:
    return {"num_classes": cast("ReIDDataModule", data).num_classes}


def _volume_inputs(data: L.LightningDataModule) -> dict[str, Any]:
    volumes = cast("VolumeDataModule", data)
    return {"num_classes": volumes.num_classes, "class_texts": volumes.class_texts}


TASK_KINDS: dict[str, TaskKind] = {
    "regression": TaskKind(_sentiment_data, _sentiment_inputs, _regression_task, _no_figures, _predict_scores),
    "retrieval": TaskKind(_reid_data, _reid_inputs, _retrieval_task, _rank_list, _predict_ranks),
    "segmentation": TaskKind(
        _seg_data,
        lambda dm: {},
        _segmentation_task,
        _prediction_grid,
        _predict_masks,
        ("masks", "overlays", "probabilities", "predictions.csv"),
    ),
    "segmentation3d": TaskKind(
        _volume_data,
        _volume_inputs,
        _volume_task,
        _volume_figure,
        _predict_volumes,
        ("*_seg.nii.gz", "*_slices.png"),
    ),
}
