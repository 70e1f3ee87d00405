"""What a predictor needs from a finished run: its resolved config, its data statistics, its saved model.

A run's ``model/`` folder is self-contained: beside ``config.json`` + ``model.safetensors`` it holds
``gpfuse_run.yaml`` (the run's resolved config) and ``data_stats.json`` (standardisation, class names and
prompts, split sizes), so a model folder copied anywhere predicts with the run's own preprocessing. Folders of
earlier runs (without those two files) are read from the run folder around them.

With ``engine="onnxruntime"`` the model is the run's ONNX file (``gpfuse export``, default ``RUN_DIR/model.onnx``)
run by ONNX Runtime (:class:`~gpfuse.inference.onnx_model.OnnxModel`), checked to hold the run's own model.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import yaml
from torch import nn

from gpfuse.config import ConfigError, RunConfig, validate_saved_config
from gpfuse.inference.onnx_model import OnnxModel
from gpfuse.models import load_pretrained
from gpfuse.utils.files import read_json
from gpfuse.utils.precision import autocast_dtype, warn_if_emulated

if TYPE_CHECKING:
    from gpfuse.models.io import PretrainedMixin

__all__ = ["ENGINES", "RUN_CONFIG", "RUN_STATS", "Engine", "SavedRun"]

Engine = Literal["torch", "onnxruntime"]
ENGINES: tuple[Engine, ...] = ("torch", "onnxruntime")

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


def _onnx_model(run_path: Path, folder: Path, onnx_file: str | Path | None, device: str | torch.device) -> OnnxModel:
    """The run's ONNX file as a model, after checking that it holds the model saved in ``folder``."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"device {str(device)!r}: the onnxruntime engine runs on the CPU (device='cpu')")
    path = Path(onnx_file) if onnx_file is not None else run_path / "model.onnx"
    if onnx_file is None and not path.is_file():
        raise FileNotFoundError(f"{path}: no ONNX file; run `gpfuse export {run_path}` first to write it")
    model = OnnxModel(path)
    config_path = _first(folder / "config.json", folder / "model.json")  # _model_folder: one of them is there
    saved = read_json(config_path) if config_path else None
    if not isinstance(saved, dict) or model.gpfuse_config != {k: saved.get(k) for k in ("name", "options")}:
        raise ValueError(
            f"{path} holds another model than the run's ({config_path}): a file of another run or of an earlier "
            f"model; export this run again (gpfuse export {run_path})"
        )
    return model.eval()


@dataclass
class SavedRun:
    """A run's config, data statistics and model (in eval mode, on ``device``)."""

    folder: Path
    config: RunConfig
    stats: dict[str, Any]
    model: nn.Module  # the torch model, or an OnnxModel

    @classmethod
    def read(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        engine: Engine = "torch",
        onnx_file: str | Path | None = None,
    ) -> SavedRun:
        """The run (or saved model folder) at ``path``; its model run by ``engine``: torch on ``device``, or
        ONNX Runtime on the CPU with ``onnx_file`` (default ``path/model.onnx``)."""
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
        if engine == "torch" and onnx_file is not None:
            raise ValueError(f"onnx_file {str(onnx_file)!r} is read by the onnxruntime engine only")
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
        config = validate_saved_config(raw, str(config_path))
        stats_path = _first(folder / RUN_STATS, folder.parent / RUN_STATS)
        stats = read_json(stats_path) if stats_path else {}
        if engine == "onnxruntime":
            model: nn.Module = _onnx_model(Path(path), folder, onnx_file, device)
        else:
            model = load_pretrained(folder, expected_name=config.model["name"]).to(device).eval()
            if autocast_dtype(config.train.precision) is not None:
                warn_if_emulated(config.train.precision, torch.device(device).type)
        return cls(folder, config, stats or {}, model)

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go (the CPU for ONNX Runtime)."""
        if isinstance(self.model, OnnxModel):
            return self.model.device
        return next(self.model.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast of the precision the run was trained and is evaluated with (``bf16-mixed``,
        ``16-mixed``), so that its predictions are those of ``gpfuse eval``; none for full precision and ONNX."""
        dtype = autocast_dtype(self.config.train.precision)
        if dtype is None or isinstance(self.model, OnnxModel):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @property
    def model_config(self) -> dict[str, Any]:
        """The model's ``{"name", "options"}`` as saved (a torch model of ``create_model``, or an ONNX file's)."""
        return cast("PretrainedMixin", self.model).gpfuse_config

    def model_option(self, key: str) -> Any:
        """Option ``key`` the model was built with (its saved config), else its constructor's default: the same
        for the torch model and an ONNX file."""
        from gpfuse.models import MODELS

        config = self.model_config
        if key in config["options"]:
            return config["options"][key]
        return inspect.signature(MODELS[config["name"]]).parameters[key].default
