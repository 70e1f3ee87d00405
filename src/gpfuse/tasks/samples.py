"""Per-sample test results written into a run folder at evaluation (``RUN/samples/``), what ``gpfuse report``
shows beside the means: one CSV (or JSON) row per test sample and a small ``.npz`` of the pictures of the worst
and best samples (thumbnails, masks, slices), so that the report reads nothing but the run folder.

Each task keeps its gathered per-sample figures in ``task.test_samples`` after ``trainer.test``; the writers
here add the sample names from the data module and, for the few samples pictured, run the (best) model again.
Called on the main process only; every file is written atomically.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from PIL import Image

from gpfuse.utils.files import atomic_path, atomic_write_text

__all__ = ["SAMPLES_DIR", "query_average_precision", "write_samples"]

SAMPLES_DIR = "samples"
#: how many of the worst (and of the best) samples are pictured
PICTURED = 3
_THUMB = 256


def _write_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy's stubs take the arrays as **kwds
    return path


def _thumbnail(array: np.ndarray, nearest: bool = False, size: int = _THUMB) -> np.ndarray:
    """``array`` (H, W[, 3]) uint8/bool scaled down so that its longer side is at most ``size``."""
    h, w = array.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return array
    image = Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1))
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = np.asarray(image.resize(shape, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))
    return out > 127 if array.dtype == bool else out


def _worst_and_best(scores: np.ndarray, count: int = PICTURED) -> list[tuple[str, int]]:
    """``[("worst", i), ..., ("best", j), ...]``: positions of the lowest and highest scores (NaN lowest),
    each position once."""
    order = np.argsort(np.nan_to_num(scores, nan=-np.inf), kind="stable")
    worst = [int(i) for i in order[:count]]
    best = [int(i) for i in order[::-1][:count] if int(i) not in worst]
    return [("worst", i) for i in worst] + [("best", i) for i in best]


# ---- 2D segmentation ------------------------------------------------------------------------------------
SEG_COLUMNS = ("Dice", "IoU", "Precision", "Recall", "Sm", "wFm", "MAE")


@torch.no_grad()
def _segmentation_samples(task: L.LightningModule, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    """Per test set ``samples/<name>.csv`` (``name,image`` + :data:`SEG_COLUMNS` per image) and
    ``samples/<name>.npz`` (``names``, ``which``, ``dice`` and ``image_<k>`` (H, W, 3) uint8, ``gt_<k>`` /
    ``pred_<k>`` (H, W) bool for the worst and best images by Dice, at most 256 px)."""
    from gpfuse.data.images import read_image
    from gpfuse.data.polyp import read_mask
    from gpfuse.inference.segmentation import full_size_probabilities

    model, threshold = cast(torch.nn.Module, task.model), float(task.hparams["threshold"])
    device = next(model.parameters()).device
    model.eval()
    written = []
    for name, s in cast("dict[str, dict[str, np.ndarray]]", task.test_samples).items():
        dataset = data._dataset(f"test_{name}")  # type: ignore[attr-defined]  # a SegDataModule
        items = [dataset.items[int(i)] for i in s["index"]]
        rows = [[it.name, it.image, *(f"{v:.6f}" for v in r)] for it, r in zip(items, s["record"])]
        written.append(_write_csv(run_dir / SAMPLES_DIR / f"{name}.csv", ["name", "image", *SEG_COLUMNS], rows))
        picked = _worst_and_best(s["record"][:, 0])
        arrays: dict[str, np.ndarray] = {
            "names": np.array([items[i].name for _, i in picked]),
            "which": np.array([w for w, _ in picked]),
            "dice": s["record"][[i for _, i in picked], 0],
        }
        for k, (_, i) in enumerate(picked):
            sample = dataset[int(s["index"][i])]
            logits = model({"image": sample["image"][None].to(device)}).logits
            prob = full_size_probabilities(logits, [sample["size"]])[0].float().cpu().numpy()
            arrays[f"image_{k}"] = _thumbnail(np.asarray(read_image(items[i].image)))
            arrays[f"gt_{k}"] = _thumbnail(read_mask(items[i].mask).astype(bool), nearest=True)
            arrays[f"pred_{k}"] = _thumbnail(prob >= threshold, nearest=True)
        written.append(_write_npz(run_dir / SAMPLES_DIR / f"{name}.npz", arrays))
    return written


# ---- sentiment ------------------------------------------------------------------------------------------
def _regression_samples(task: L.LightningModule, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    """``samples/test.csv``: ``id,label,prediction`` for every test utterance."""
    s = cast("dict[str, dict[str, np.ndarray]]", task.test_samples)["test"]
    ids = data.splits["test"].ids  # type: ignore[attr-defined]  # a SentimentDataModule
    rows = [[ids[int(i)], f"{y:.4f}", f"{p:.6f}"] for i, y, p in zip(s["index"], s["label"], s["score"])]
    return [_write_csv(run_dir / SAMPLES_DIR / "test.csv", ["id", "label", "prediction"], rows)]


# ---- re-identification ----------------------------------------------------------------------------------
def query_average_precision(distances: np.ndarray, same_id: np.ndarray, junk: np.ndarray) -> tuple[float, int]:
    """One query's AP and 1-based rank of its first true match over its gallery row ``distances`` (G,),
    ``same_id`` / ``junk`` (G,) bool (junk: same identity and camera, left out); (NaN, 0) without a match."""
    order = [j for j in np.argsort(distances, kind="stable") if not junk[j]]
    hits = same_id[order]
    if not hits.any():
        return float("nan"), 0
    positions = np.flatnonzero(hits)
    return float(np.mean(np.arange(1, len(positions) + 1) / (positions + 1))), int(positions[0]) + 1


def _retrieval_samples(
    task: L.LightningModule, data: L.LightningDataModule, run_dir: Path, top: int = 10
) -> list[Path]:
    """``samples/test.json``: per test query its image, identity, camera, AP (under the protocol the run reports,
    ``data.select_protocol``; standard AP), first match rank and ``top`` gallery entries (same-identity-same-camera
    ones left out); ``samples/test.npz``: thumbnails of the worst queries (``query_<k>``) and their top entries
    (``gallery_<k>_<r>``)."""
    from gpfuse.data.images import read_image

    s = cast("dict[str, dict[str, np.ndarray]]", task.test_samples)["test"]
    datasets = data.datasets  # type: ignore[attr-defined]  # a ReIDDataModule
    q_items = [datasets["query"].items[int(i)] for i in s["query_index"]]
    g_items = [datasets["gallery"].items[int(i)] for i in s["gallery_index"]]
    queries: list[dict[str, Any]] = []
    for qi, item in enumerate(q_items):
        dist = s["distances"][qi]
        same = s["gallery_pid"] == s["query_pid"][qi]
        junk = same & (s["gallery_camid"] == s["query_camid"][qi])
        ap, first = query_average_precision(dist, same, junk)
        kept = [int(j) for j in np.argsort(dist, kind="stable") if not junk[j]][:top]
        queries.append(
            {
                "query": str(item.path),
                "pid": int(s["query_pid"][qi]),
                "camid": int(s["query_camid"][qi]),
                "AP": None if np.isnan(ap) else ap,
                "first_match": first or None,
                "top": [
                    {"gallery": str(g_items[j].path), "distance": float(dist[j]), "same_id": bool(same[j])}
                    for j in kept
                ],
            }
        )
    payload = {"metric": str(task.hparams["metric"]), "protocol": str(s["protocol"]), "queries": queries}
    written = [atomic_write_text(run_dir / SAMPLES_DIR / "test.json", json.dumps(payload, indent=1))]
    aps = np.array([np.nan if q["AP"] is None else q["AP"] for q in queries])
    worst = [i for w, i in _worst_and_best(aps, 4) if w == "worst"]
    by_path = {str(it.path): it.path for it in g_items}
    arrays: dict[str, np.ndarray] = {"queries": np.array(worst, dtype=np.int64)}
    for k, qi in enumerate(worst):
        arrays[f"query_{k}"] = _thumbnail(np.asarray(read_image(q_items[qi].path)), size=128)
        for r, entry in enumerate(queries[qi]["top"]):
            arrays[f"gallery_{k}_{r}"] = _thumbnail(np.asarray(read_image(by_path[entry["gallery"]])), size=128)
    written.append(_write_npz(run_dir / SAMPLES_DIR / "test.npz", arrays))
    return written


# ---- 3D segmentation ------------------------------------------------------------------------------------
def _slice_index(label: np.ndarray, pred: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` with the most labelled voxels (the prediction's when the label is empty; the
    centre when both are)."""
    for seg in (label, pred):
        area = (seg > 0).sum(axis=tuple(a for a in range(3) if a != axis))
        if area.any():
            return int(np.argmax(area))
    return label.shape[axis] // 2


@torch.no_grad()
def _volume_samples(task: L.LightningModule, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    """``samples/test.csv``: per test case Dice / HD95 (mm) / NSD per class and their means; ``samples/test.npz``:
    for the worst and best case by mean Dice (``cases``, ``which``) the slice through the structure along each
    axis (``<k>_<axis>_{image,label,pred}``)."""
    from monai.data import list_data_collate

    from gpfuse.tasks.segmentation3d import original_grid_labels
    from gpfuse.tasks.volume_outputs import original_image

    s = cast("dict[str, dict[str, np.ndarray]]", task.test_samples)["test"]
    names = [re.sub(r"[^A-Za-z0-9]+", "_", n) for n in task.hparams["class_names"][1:]]
    volumes = cast(Any, data)  # a VolumeDataModule
    cases = [volumes.cases["test"][int(i)] for i in s["index"]]
    header = [
        "case",
        *(f"{m}/{n}" for m in ("dice", "hd95", "nsd") for n in names),
        "mean_dice",
        "mean_hd95",
        "mean_nsd",
    ]
    rows = [[c.name, *(f"{v:.6f}" for v in r)] for c, r in zip(cases, s["case"])]
    written = [_write_csv(run_dir / SAMPLES_DIR / "test.csv", header, rows)]
    picked = _worst_and_best(s["case"][:, -3], 1)
    model, d = cast(torch.nn.Module, task.model), volumes.config
    model.eval()
    dataset = volumes._dataset("test")
    arrays: dict[str, np.ndarray] = {
        "cases": np.array([cases[i].name for _, i in picked]),
        "which": np.array([w for w, _ in picked]),
    }
    for k, (_, i) in enumerate(picked):
        batch = list_data_collate([dataset[int(s["index"][i])]])
        batch["image"] = batch["image"].to(next(model.parameters()).device)
        labels = original_grid_labels(model, batch, dataset.transform, d.roi_size, d.sw_batch_size, d.overlap_test)
        pred, label = labels.cpu().numpy().astype(np.uint8), batch["label"][0, 0].numpy().astype(np.uint8)
        image = original_image(cases[i].image)
        for axis in range(3):
            at = _slice_index(label, pred, axis)
            for key, volume in (("image", image), ("label", label), ("pred", pred)):
                arrays[f"{k}_{axis}_{key}"] = np.take(volume, at, axis=axis)
    written.append(_write_npz(run_dir / SAMPLES_DIR / "test.npz", arrays))
    return written


def write_samples(kind: str, task: L.LightningModule, data: L.LightningDataModule, run_dir: Path) -> list[Path]:
    """Write ``run_dir/samples/`` for a task of ``kind`` (a key of ``TASK_KINDS``) just tested; nothing when the
    task kept no per-sample results."""
    writers = {
        "segmentation": _segmentation_samples,
        "regression": _regression_samples,
        "retrieval": _retrieval_samples,
        "segmentation3d": _volume_samples,
    }
    if kind not in writers or not getattr(task, "test_samples", None):
        return []
    return writers[kind](task, data, Path(run_dir))
