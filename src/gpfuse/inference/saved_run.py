"""What a predictor needs from a finished run: its resolved config, its data statistics, its saved model.

A run's ``model/`` folder is self-contained: beside ``config.json`` + ``model.safetensors`` it holds
``gpfuse_run.yaml`` (the run's resolved config) and ``data_stats.json`` (standardisation, class names and
prompts, split sizes), so a model folder copied anywhere predicts with the run's own preprocessing. Folders of
earlier runs (without those two files) are read from the run folder around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from gpfuse.config import ConfigError, RunConfig, validate_config
from gpfuse.models import load_pretrained
from gpfuse.utils.files import read_json

__all__ = ["RUN_CONFIG", "RUN_STATS", "SavedRun"]

RUN_CONFIG, RUN_STATS = "gpfuse_run.yaml", "data_stats.json"


def _model_folder(path: Path) -> Path:
    if (path / "model").is_dir():
        return path / "model"
    if any((path / name).is_file() for name in ("config.json", "model.json")):
        return path
    raise FileNotFoundError(
        f"{path} is neither a gpfuse run folder (no model/) nor a saved model folder "
        "(no config.json + model.safetensors)"
    )


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


@dataclass
class SavedRun:
    """A run's config, data statistics and model (in eval mode, on ``device``)."""

    folder: Path
    config: RunConfig
    stats: dict[str, Any]
    model: nn.Module

    @classmethod
    def read(cls, path: str | Path, device: str | torch.device = "cpu") -> SavedRun:
        folder = _model_folder(Path(path))
        config_path = _first(folder / RUN_CONFIG, folder.parent / "config.yaml")
        if config_path is None:
            raise FileNotFoundError(
                f"{folder}: no {RUN_CONFIG} (nor a run's config.yaml beside it): the model's preprocessing is unknown"
            )
        try:
            raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{config_path}: not a readable run config ({type(err).__name__}: {err})") from None
        config = validate_config(raw, str(config_path))
        stats_path = _first(folder / RUN_STATS, folder.parent / RUN_STATS)
        stats = read_json(stats_path) if stats_path else {}
        model = load_pretrained(folder, expected_name=config.model["name"]).to(device).eval()
        return cls(folder, config, stats or {}, model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
