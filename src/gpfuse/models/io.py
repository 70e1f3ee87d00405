"""Saving and loading gpfuse models in the Hugging Face folder convention: ``config.json`` (the model's name
and constructor options) beside ``model.safetensors``. Folders written before (``model.json``) still load, and
so do weights saved under a module's earlier name (each model class lists its ``renamed_modules``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import _remove_duplicate_names, load_file, save_model
from torch import nn

from gpfuse.utils.files import atomic_path, atomic_write_text

__all__ = ["CheckpointMismatchError", "PretrainedMixin", "from_pretrained", "load_pretrained", "save_pretrained"]

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, LEGACY_CONFIG = "model.safetensors", "config.json", "model.json"

M = TypeVar("M", bound="PretrainedMixin")


class CheckpointMismatchError(ValueError):
    """A checkpoint was made for another model or another configuration."""


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (``{"library": "gpfuse", "name", "options"}``) into
    ``folder``, atomically."""
    config = getattr(model, "gpfuse_config", None)
    if config is None:
        raise ValueError("only models built with gpfuse.models.create_model can be saved (no gpfuse_config)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:  # save_model stores weights shared across layers once
        save_model(model, str(tmp), metadata={"gpfuse_model": config["name"]}, force_contiguous=True)  # channels_last
    # key order kept: the order of e.g. GRF's input_dims is its default fusion order
    atomic_write_text(folder / CONFIG, json.dumps({"library": "gpfuse", **config}, indent=2))
    return folder


def _read_config(folder: Path) -> tuple[Path, str, dict[str, Any]]:
    config_path = folder / CONFIG if (folder / CONFIG).is_file() else folder / LEGACY_CONFIG
    for path in (config_path, folder / WEIGHTS):
        if not path.is_file():
            raise FileNotFoundError(f"no {path.name} in {folder}: not a saved gpfuse model")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        return config_path, config["name"], config["options"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{config_path}: not a gpfuse model config ({type(err).__name__}: {err})") from None


def _renamed(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Weights saved under a module's earlier name get its current one (``model.renamed_modules``: old -> new);
    weights of a module this configuration no longer builds (``model.retired_modules``) are dropped, logged."""
    renames = getattr(model, "renamed_modules", {})
    retired = tuple(f"{prefix}." for prefix in getattr(model, "retired_modules", ()))
    out = {}
    for key, value in state.items():
        old = next((o for o in renames if key.startswith(o + ".")), None)
        out[renames[old] + key[len(old) :] if old else key] = value
    dropped = sorted(k for k in out if retired and k.startswith(retired))
    if dropped:
        log.warning(
            "%s: %d saved tensors of modules it no longer builds are ignored: %s",
            type(model).__name__,
            len(dropped),
            dropped[:5],
        )
    return {k: v for k, v in out.items() if k not in dropped}


def load_pretrained(folder: str | Path, expected_name: str | None = None) -> nn.Module:
    """Rebuild the model described by ``folder/config.json`` (or an earlier ``model.json``) and load its weights.

    Raises :class:`CheckpointMismatchError` naming the file when the model is not ``expected_name`` or the
    weights do not fit the configuration (missing, unexpected or differently shaped tensors).
    """
    from gpfuse.models import create_model

    folder = Path(folder)
    config_path, name, options = _read_config(folder)
    if expected_name is not None and name != expected_name:
        raise CheckpointMismatchError(f"{config_path} holds a {name!r} model, expected {expected_name!r}")
    model = create_model(name, **options)
    weights_path = folder / WEIGHTS
    try:
        state = _renamed(load_file(str(weights_path)), model)
    except Exception as err:  # safetensors' own errors: truncated, not a safetensors file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointMismatchError(
            f"{weights_path} does not fit the {name!r} model of {config_path}: {err}"
        ) from None
    # weights shared by several modules are saved once (save_model): their other names are not missing
    shared = {
        alias
        for group in _remove_duplicate_names(model.state_dict(), preferred_names=list(state)).values()
        for alias in group
    }
    missing = sorted(set(missing) - shared)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{weights_path} does not fit the {name!r} model of {config_path}: "
            f"missing {missing[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model


from_pretrained = load_pretrained


class PretrainedMixin:
    """``model.save_pretrained(folder)`` and ``Model.from_pretrained(folder)``, as in Hugging Face libraries (a
    local folder: nothing is downloaded)."""

    gpfuse_config: dict[str, Any]  # {"name", "options"}: set by create_model, read by save_pretrained

    def save_pretrained(self, folder: str | Path) -> Path:
        return save_pretrained(self, folder)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls: type[M], folder: str | Path) -> M:
        model = load_pretrained(folder)
        if not isinstance(model, cls):
            raise CheckpointMismatchError(f"{folder} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
