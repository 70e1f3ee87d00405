"""What ``inference_speed.py`` runs for each system: a saved run's torch model, its gpfuse ONNX export, real
evaluation inputs with their metric, and real calibration inputs for static int8 quantisation.

Inputs are kept as the deployment receives them: images as resized (N, H, W, 3) uint8 RGB (the uint8 -> float
normalisation is part of every timed setting: in torch, or inside the ONNX graph), sentiment and volume inputs
as the model's batch arrays. Data are read through gpfuse's own data code.
"""

from __future__ import annotations

import csv
import inspect
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gpfuse.config import ReIDDataConfig, SegDataConfig, VolumeDataConfig, dump_config, load_config
from gpfuse.data.images import read_image
from gpfuse.encoders.image import IMAGE_ENCODERS
from gpfuse.export import export_onnx, exportable_tasks
from gpfuse.inference.saved_run import RUN_CONFIG, SavedRun
from gpfuse.utils.files import atomic_write_text

__all__ = ["SYSTEMS", "Workload"]

Arrays = dict[str, np.ndarray]


@dataclass
class Workload:
    """One system to measure.

    inputs: N real evaluation items (model inputs; ``image`` as (N, H, W, 3) uint8 where ``image_norm`` is set).
    to_model: a slice of ``inputs`` -> the torch model's batch (does the image normalisation).
    score: the output field ``output`` of all N items, stacked -> the metric.
    calibration: batches of real inputs (same form as ``inputs``) for static quantisation.
    image_norm: (mean, std) of the ``image`` input, put into the ONNX graph; None: inputs go in as they are.
    batches: the batch sizes to time where the system has its own (else ``--batches``).
    onnx: the fp32 export, or None where gpfuse has no exporter for the task yet (torch settings only).
    """

    system: str
    unit: str
    run: SavedRun
    onnx: Path | None
    inputs: Arrays
    to_model: Callable[[Arrays], dict[str, Tensor]]
    output: str
    metric: str
    scale: float  # metric display factor (100: a fraction shown in points)
    score: Callable[[np.ndarray], float]
    calibration: list[Arrays]
    image_norm: tuple[list[float], list[float]] | None = None
    channels_last: bool = False
    batches: list[int] | None = None  # batch sizes to time instead of --batches
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- helpers
def _newest(pattern: str) -> Path | None:
    found = sorted(p for p in Path(".").glob(pattern) if (p / "model").is_dir())
    return found[-1] if found else None


def _run_dir(given: str | None, pattern: str, what: str) -> Path:
    path = Path(given) if given else _newest(pattern)
    if path is None:
        raise FileNotFoundError(f"{what}: no run given and none matches {pattern} from {Path.cwd()}")
    return path


def _export(
    args: Any,
    task: str,
    folder: Path,
    out: Path,
    verify_with: list[Path] | None,
    notes: list[str],
    image_only: bool = False,
) -> Path | None:
    """gpfuse's ONNX export of the saved model at ``folder`` (``image_only``: the image input alone, where
    ``export_onnx`` offers it), or None where no ORT setting is asked for or (with a note) the task has no
    exporter."""
    if not any(s.startswith("ort") for s in args.settings):
        return None
    if task not in exportable_tasks():
        notes.append(
            f"ONNX Runtime settings skipped: gpfuse has no {task!r} ONNX exporter yet "
            f"(gpfuse.export.exportable_tasks() = {', '.join(exportable_tasks())})"
        )
        return None
    if image_only and "image_only" in inspect.signature(export_onnx).parameters:
        return export_onnx(folder, out, verify_with=verify_with, image_only=True)
    return export_onnx(folder, out, verify_with=verify_with)


def _uint8_images(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB, each resized bilinearly to ``size`` (H, W) as the run's transform does."""
    h, w = size
    out = []
    for p in paths:
        image = read_image(p)
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BILINEAR)
        out.append(np.asarray(image, dtype=np.uint8))
    return np.stack(out)


def _image_to_model(mean: list[float], std: list[float], channels_last: bool) -> Callable[[Arrays], dict[str, Tensor]]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def convert(raw: Arrays) -> dict[str, Tensor]:
        x = torch.from_numpy(raw["image"]).permute(0, 3, 1, 2).float().div_(255.0)
        return {"image": ((x - m) / s).contiguous(memory_format=layout)}

    return convert


def _as_tensors(raw: Arrays) -> dict[str, Tensor]:
    return {k: torch.from_numpy(v) for k, v in raw.items()}


def _batches(arrays: Arrays, size: int) -> list[Arrays]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------------- EA-DK
def ea_dk(args: Any, tmp: Path) -> Workload:
    """EA-DK at ``args.size``: Dice on the Kvasir-SEG val split, calibration on Kvasir train frames."""
    from gpfuse.metrics.seg2d import PolypEvaluator

    run_dir = _run_dir(args.ea_dk_run, "runs/demo_ea_dk_*/seed_*", "EA-DK")
    run = SavedRun.read(run_dir)
    if run.config.task != "segmentation":
        raise ValueError(f"{run_dir}: an EA-DK run must be a segmentation run, not {run.config.task!r}")
    kvasir, size = Path(args.kvasir), args.size
    val = sorted((kvasir / "val" / "images").glob("*.jpg"))[: args.limit]
    if not val:
        raise FileNotFoundError(f"{kvasir / 'val' / 'images'}: no Kvasir-SEG val images")
    masks = np.stack(
        [
            np.asarray(Image.open(kvasir / "val" / "masks" / f"{p.stem}.png").convert("L").resize((size, size), 0))
            > 127
            for p in val
        ]
    )
    notes = []
    trained = run.config.data_as(SegDataConfig).image_size
    # the saved model with the run's config at the benchmark's size: the graph is exported at that size
    folder = tmp / "ea_dk_model"
    folder.mkdir()
    for f in run.folder.iterdir():
        if f.is_file() and f.name != RUN_CONFIG:
            shutil.copy2(f, folder / f.name)
    data = run.config.data.model_copy(update={"image_size": size})
    atomic_write_text(folder / RUN_CONFIG, dump_config(run.config.model_copy(update={"data": data})))
    if trained != size:
        notes.append(
            f"weights of {run_dir} (trained at {trained}x{trained}); the fully convolutional model is exported "
            f"and run at {size}x{size}"
        )
    onnx = _export(args, "segmentation", folder, tmp / "ea_dk.onnx", val[:4], notes)
    encoder = IMAGE_ENCODERS[run.config.model.get("encoder", "efficientnet_lite0")][0]
    mean, std = list(encoder.input_mean), list(encoder.input_std)
    train = sorted((kvasir / "train" / "images").glob("*.jpg"))
    calibration = random.Random(0).sample(train, min(args.calibration, len(train)))
    threshold = run.config.train.threshold

    def dice(logits: np.ndarray) -> float:
        evaluator = PolypEvaluator(threshold)
        evaluator.update_batch(torch.sigmoid(torch.from_numpy(logits).double()).numpy(), masks[: len(logits)])
        return evaluator.compute()["Dice"]

    return Workload(
        system=f"EA-DK ({run.config.model.get('encoder')}, {size}x{size}, Kvasir-SEG val)",
        unit="images",
        run=run,
        onnx=onnx,
        inputs={"image": _uint8_images(val, (size, size))},
        to_model=_image_to_model(mean, std, channels_last=True),
        output="logits",
        metric=f"Dice@{threshold:g}",
        scale=100.0,
        score=dice,
        calibration=_batches({"image": _uint8_images(calibration, (size, size))}, 1),
        image_norm=(mean, std),
        channels_last=True,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------- GPF-Net
def _imagenet_gpf_net(config_path: str, num_classes: int, tmp: Path) -> Path:
    """A saved image-only GPF-Net of ``config_path`` (ImageNet encoder, untrained fusion) as a model folder."""
    from gpfuse.models import create_model, save_pretrained

    config = load_config(config_path)
    torch.manual_seed(0)
    model = create_model(config.model["name"], num_classes=num_classes, **config.model_options())
    folder = save_pretrained(model, tmp / "gpf_net_model")
    atomic_write_text(folder / RUN_CONFIG, dump_config(config))
    return folder


def gpf_net(args: Any, tmp: Path) -> Workload:
    """GPF-Net image embeddings: mAP on one CUHK01 split (camera A query / camera B gallery)."""
    from gpfuse.data.cuhk01 import load_cuhk01
    from gpfuse.metrics.reid import evaluate_features

    notes = []
    if args.gpf_run:
        folder = Path(args.gpf_run)
        config = SavedRun.read(folder).config
        notes.append(f"trained run {folder}")
    else:
        config = load_config(args.gpf_config)
    if not isinstance(config.data, ReIDDataConfig) or config.data.source != "cuhk01":
        raise ValueError(f"GPF-Net: a CUHK01 run is needed, not one of {getattr(config.data, 'source', None)!r}")
    d = config.data
    split = load_cuhk01(args.cuhk01, d.fold, val_ids=d.val_ids, seed=config.train.seed)
    if not args.gpf_run:
        folder = _imagenet_gpf_net(args.gpf_config, len({it.pid for it in split.train}), tmp)
        notes.append(
            f"no --gpf-run: image-only GPF-Net of {args.gpf_config} with ImageNet EfficientNet-Lite0 weights and "
            "untrained fusion layers (mAP is not a trained model's; the change each setting makes is still measured)"
        )
    run = SavedRun.read(folder)
    pids = sorted({it.pid for it in split.query})[: max(2, (args.limit or 10**9) // 4)]
    query = [it for it in split.query if it.pid in pids]
    gallery = [it for it in split.gallery if it.pid in pids]
    notes.append(f"CUHK01 split {d.fold}: {len(query)} queries (camera A), {len(gallery)} gallery images (camera B)")
    size = tuple(d.image_size)
    encoder = IMAGE_ENCODERS[run.config.model.get("image_encoder", "resnet50")][0]
    mean, std = list(encoder.input_mean), list(encoder.input_std)
    paths = [Path(it.path) for it in query + gallery]
    onnx = _export(args, "retrieval", folder, tmp / "gpf_net.onnx", paths[:4], notes, image_only=True)
    train = [Path(it.path) for it in split.train]
    calibration = random.Random(0).sample(train, min(args.calibration, len(train)))
    nq = len(query)

    def mean_ap(embedding: np.ndarray) -> float:
        return evaluate_features(
            embedding[:nq],
            embedding[nq:],
            [it.pid for it in query],
            [it.pid for it in gallery],
            [it.camid for it in query],
            [it.camid for it in gallery],
            metric=d.metric,
        )[1]

    return Workload(
        system=f"GPF-Net image-only ({run.config.model.get('image_encoder')}, {size[0]}x{size[1]}, CUHK01)",
        unit="images",
        run=run,
        onnx=onnx,
        inputs={"image": _uint8_images(paths, size)},
        to_model=_image_to_model(mean, std, channels_last=True),
        output="embedding",
        metric="mAP",
        scale=100.0,
        score=mean_ap,
        calibration=_batches({"image": _uint8_images(calibration, size)}, 8),
        image_norm=(mean, std),
        channels_last=True,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------- sentiment
def _sentiment(given: str | None, pattern: str, name: str, args: Any, tmp: Path) -> Workload:
    from torch.utils.data import default_collate

    from gpfuse.metrics.sentiment import mosi_regression_metrics
    from gpfuse.tasks.kinds import TASK_KINDS
    from gpfuse.tasks.sentiment_data import FeatureDataset

    run_dir = _run_dir(given, pattern, name)
    run = SavedRun.read(run_dir)
    if run.config.task != "regression":
        raise ValueError(f"{run_dir}: a {name} run must be a regression run, not {run.config.task!r}")
    data = TASK_KINDS["regression"].data(run.config, run.stats, None)
    data.setup()  # gpfuse's own reading, tokenising / text encoding and standardisation

    def arrays(split: str, limit: int | None) -> tuple[Arrays, np.ndarray]:
        dataset = FeatureDataset(data.splits[split], data.config.modalities)
        items = default_collate([dataset[i] for i in range(min(len(dataset), limit or len(dataset)))])
        labels = items.pop("label").numpy()
        items.pop("index")
        return {k: v.numpy() for k, v in items.items()}, labels

    inputs, labels = arrays("test", args.limit)
    calibration, _ = arrays("train", args.calibration * 8)
    notes = [f"run {run_dir}; CMU-MOSI test split, {len(labels)} samples"]
    if "text" in inputs:
        notes.append("text input = frozen MiniLM token states, computed beforehand by the data code (not timed)")
    onnx = _export(args, "regression", run_dir, tmp / f"{run.config.model['name']}.onnx", None, notes)

    def mae(score: np.ndarray) -> float:
        return mosi_regression_metrics(score, labels[: len(score)])["MAE"]

    return Workload(
        system=f"{name} (CMU-MOSI test)",
        unit="samples",
        run=run,
        onnx=onnx,
        inputs=inputs,
        to_model=_as_tensors,
        output="score",
        metric="MAE",
        scale=1.0,
        score=mae,
        calibration=_batches(calibration, 8),
        notes=notes,
    )


def pgf_net(args: Any, tmp: Path) -> Workload:
    return _sentiment(args.pgf_run, "runs/demo_pgf_net_mosi_*/seed_*", "PGF-Net", args, tmp)


def grf(args: Any, tmp: Path) -> Workload:
    return _sentiment(args.grf_run, "runs/demo_grf_mosi_*/seed_*", "GRF", args, tmp)


# ----------------------------------------------------------------------------------------------- BiPVL-Seg
def _split_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def bipvl(args: Any, tmp: Path) -> Workload:
    """BiPVL-Seg roi patches: one centre patch (padded / cropped to the roi) per volume the run did not train
    or select on (its test cases first), mean foreground Dice of the patches."""
    from monai.transforms import ResizeWithPadOrCropd

    from gpfuse.data.volume_transforms import volume_transforms
    from gpfuse.metrics.seg3d import volume_metrics

    run_dir = _run_dir(args.bipvl_run, "runs/demo_bipvl_seg_*/seed_*", "BiPVL-Seg")
    run = SavedRun.read(run_dir)
    if run.config.task != "segmentation3d":
        raise ValueError(f"{run_dir}: a BiPVL-Seg run must be a segmentation3d run, not {run.config.task!r}")
    d = run.config.data_as(VolumeDataConfig)
    splits = {name: _split_rows(run_dir / "splits" / f"{name}.txt") for name in ("train", "valid", "test")}
    seen = {r["image"] for r in splits["train"] + splits["valid"]}
    cases = [(Path(r["image"]), Path(r["label"])) for r in splits["test"]]
    if cases:  # then the other volumes of the same folder the run never read
        folder = cases[0][0].parent
        cases += [
            (p, folder.parent / "labelsTr" / p.name)
            for p in sorted(folder.glob("*.nii*"))
            if str(p) not in seen and (p, folder.parent / "labelsTr" / p.name) not in cases
        ]
    cases = [c for c in cases if c[0].is_file() and c[1].is_file()][: args.limit or args.bipvl_cases]
    if not cases:
        raise FileNotFoundError(f"{run_dir / 'splits' / 'test.txt'}: none of the run's test volumes exists from here")
    roi = tuple(d.roi_size)
    transform = volume_transforms(
        roi,
        train=False,
        label="transformed",
        pixdim=d.pixdim,
        intensity=d.intensity,
        ct_window=d.ct_window,
        crop_foreground=d.crop_foreground,
    )
    crop = ResizeWithPadOrCropd(["image", "label"], spatial_size=roi)

    def patches(pairs: list[tuple[Path, Path]]) -> tuple[np.ndarray, np.ndarray]:
        items = [crop(transform({"image": str(i), "label": str(lab)})) for i, lab in pairs]
        return (
            np.stack([np.asarray(it["image"], dtype=np.float32) for it in items]),
            np.stack([np.asarray(it["label"])[0].astype(np.int64) for it in items]),
        )

    images, labels = patches(cases)
    train = [(Path(r["image"]), Path(r["label"])) for r in splits["train"]][: args.calibration]
    calibration, _ = patches([c for c in train if c[0].is_file() and c[1].is_file()] or cases[:1])
    num_classes = len(run.stats.get("labels", {})) or int(labels.max()) + 1
    notes = [f"run {run_dir}; {len(cases)} centre patches {roi} of volumes the run did not train or select on"]
    onnx = _export(args, "segmentation3d", run_dir, tmp / "bipvl_seg.onnx", [c[0] for c in cases[:2]], notes)

    def patch_dice(logits: np.ndarray) -> float:
        pred = logits.argmax(1)
        return float(np.mean([volume_metrics(p, g, num_classes)["mean_dice"] for p, g in zip(pred, labels)]))

    return Workload(
        system=f"BiPVL-Seg (roi {'x'.join(map(str, roi))})",
        unit="patches",
        run=run,
        onnx=onnx,
        inputs={"image": images},
        to_model=_as_tensors,
        output="logits",
        metric="patch Dice",
        scale=100.0,
        score=patch_dice,
        calibration=_batches({"image": calibration}, 1),
        batches=[1, d.sw_batch_size],  # what sliding-window inference feeds; batch 8 of 3D patches is minutes
        notes=notes,
    )


SYSTEMS: dict[str, Callable[[Any, Path], Workload]] = {
    "ea_dk": ea_dk,
    "gpf_net": gpf_net,
    "pgf_net": pgf_net,
    "grf": grf,
    "bipvl": bipvl,
}
