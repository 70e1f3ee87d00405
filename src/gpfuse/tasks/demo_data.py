"""The demo configs' data: the shared copies where present, else generated data in the same layouts, named
SYNTHETIC in the log, the run name and (through the folder's marker) its metrics (``gpfuse demo`` and
``benchmarks/gpu_smoke.py``: the only commands that generate data in place of a missing dataset)."""

from __future__ import annotations

import logging
from pathlib import Path

from gpfuse.config import ReIDDataConfig, RunConfig, SegDataConfig, SentimentDataConfig, VolumeDataConfig
from gpfuse.data.synthetic_marker import generated_roots

__all__ = ["with_demo_data"]

log = logging.getLogger(__name__)


def with_demo_data(cfg: RunConfig, folder: Path) -> RunConfig:
    """``cfg`` with generated data under ``folder`` in place of each absent shared dataset, and then the run
    named ``<name>_SYNTHETIC``; the config as is where the data is there."""
    source = cfg.data.source
    if source == "polyp_folders":
        generated = _polyps(cfg, folder / "polyp")
    elif source == "decathlon":
        generated = _volumes(cfg, folder / "decathlon")
    elif source == "mosi":
        generated = _mosi(cfg, folder / "mosi")
    elif source == "colo_pair":
        generated = _colo_pair(cfg)
    else:
        generated = cfg
    if not generated_roots(generated.data_paths()):
        return generated
    return generated.model_copy(update={"name": f"{cfg.name}_SYNTHETIC"})


def _mosi(cfg: RunConfig, folder: Path) -> RunConfig:
    d = cfg.data_as(SentimentDataConfig)
    if (Path(d.root) / "labels.csv").is_file():
        return cfg
    from gpfuse.data.synthetic import write_synthetic_mosi

    log.warning("CMU-MOSI not found at %s: the demo uses SYNTHETIC data in %s", d.root, folder)
    return cfg.model_copy(update={"data": d.model_copy(update={"root": str(write_synthetic_mosi(folder))})})


def _colo_pair(cfg: RunConfig) -> RunConfig:
    root = Path(cfg.data_as(ReIDDataConfig).root)
    if root.is_dir():
        return cfg
    from gpfuse.data.synthetic_reid import write_synthetic_colo_pair

    log.warning("writing a SYNTHETIC Colo-Pair folder to %s (the real one is on request)", root)
    write_synthetic_colo_pair(root, n_videos=16, frames_per_view=3, size=96)
    return cfg


def _volumes(cfg: RunConfig, folder: Path) -> RunConfig:
    d = cfg.data_as(VolumeDataConfig)
    if (Path(d.root) / "dataset.json").is_file():
        return cfg
    from gpfuse.data.synthetic_volumes import write_synthetic_decathlon

    log.warning("MSD Hippocampus not found at %s: the demo uses SYNTHETIC volumes in %s", d.root, folder)
    root = write_synthetic_decathlon(folder, n_cases=10, shape=(32, 64, 32), num_classes=3)
    data = d.model_copy(update={"root": str(root), "descriptions": str(root / "descriptions.csv")})
    return cfg.model_copy(update={"data": data})


def _polyps(cfg: RunConfig, folder: Path) -> RunConfig:
    d = cfg.data_as(SegDataConfig)
    if all(Path(f).is_dir() for f in [*d.train, *d.test.values()]):
        return cfg
    from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder

    log.warning("Kvasir-SEG / CVC-ClinicDB not found: the demo uses SYNTHETIC polyps in %s", folder)
    train = write_synthetic_polyp_folder(folder / "train", n_images=48, size=96, seed=0)
    test = write_synthetic_polyp_folder(folder / "test", n_images=16, size=96, seed=1)
    data = d.model_copy(update={"train": [str(train)], "val": [], "test": {"synthetic": str(test)}})
    return cfg.model_copy(update={"data": data})
