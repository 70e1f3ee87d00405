"""Input conversion shared by the metric modules."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_numeric_array"]


def as_numeric_array(x: Any, name: str) -> np.ndarray:
    """numpy array, torch tensor (any device; floats as float64) or nested sequence -> a numeric numpy array;
    ValueError naming ``name`` otherwise."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        t = x.detach().cpu()
        x = (t.double() if t.is_floating_point() else t).numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__} ({err})") from err
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr
