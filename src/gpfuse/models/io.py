"""Saving and loading gpfuse models: weights as safetensors, the recipe as JSON beside them."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from gpfuse.utils.files import atomic_path, atomic_write_text

__all__ = ["save_pretrained", "load_pretrained", "CheckpointMismatchError"]

WEIGHTS, CONFIG = "model.safetensors", "model.json"


class CheckpointMismatchError(ValueError):
    """A checkpoint was made for another model or another configuration."""


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (name + options) into ``folder``, atomically."""
    config = getattr(model, "gpfuse_config", None)
    if config is None:
        raise ValueError("only models built with gpfuse.models.create_model can be saved (no gpfuse_config)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:  # save_model stores weights shared across layers once
        save_model(model, str(tmp), metadata={"gpfuse_model": config["name"]}, force_contiguous=True)  # channels_last
    atomic_write_text(folder / CONFIG, json.dumps(config, indent=2, sort_keys=True))
    return folder


def load_pretrained(folder: str | Path, expected_name: str | None = None) -> nn.Module:
    """Rebuild the model described by ``folder/model.json`` and load its weights.

    Raises :class:`CheckpointMismatchError` naming the file when the model is not ``expected_name`` or the
    weights do not fit the configuration (missing, unexpected or differently shaped tensors).
    """
    from gpfuse.models import create_model

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"no {path.name} in {folder}: not a saved gpfuse model")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        name, options = config["name"], config["options"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{config_path}: not a gpfuse model config ({type(err).__name__}: {err})") from None
    if expected_name is not None and name != expected_name:
        raise CheckpointMismatchError(f"{config_path} holds a {name!r} model, expected {expected_name!r}")
    model = create_model(name, **options)
    try:
        missing, unexpected = load_model(model, str(weights_path), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointMismatchError(f"{weights_path} does not fit the {name!r} model of {config_path}: {err}") from None
    except Exception as err:  # safetensors' own errors: truncated, not a safetensors file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    if missing or unexpected:
        raise CheckpointMismatchError(f"{weights_path} does not fit the {name!r} model of {config_path}: "
                                      f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model
