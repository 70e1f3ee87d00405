"""Checked inputs of the re-identification metrics: features, ids and options, with errors that name the argument."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["all_ids", "as_features", "as_ids", "as_tensor", "check_choice", "check_positive_int", "feature_pair"]


def as_tensor(x: Any, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """numpy array, torch tensor or sequence -> tensor (no copy when already a tensor on ``device``)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a numeric array, got {type(x).__name__} ({err})") from err
    return t if device is None else t.to(device)


def as_features(x: Any, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """(N, D) floating tensor; integer features are cast to float32."""
    t = as_tensor(x, name, device)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_samples, dim), got shape {tuple(t.shape)}")
    return t if t.is_floating_point() else t.float()


def as_ids(x: Any, name: str, n: int, what: str, device: torch.device | str) -> torch.Tensor:
    """(n,) int64 ids (pids or camids); ``what`` names where ``n`` comes from, for the error."""
    t = as_tensor(x, name).reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} values but {what} has {n}")
    if t.is_floating_point():
        if not bool(torch.all(t == torch.round(t))):
            raise ValueError(f"{name} must hold integer ids, got non-integral values")
    elif t.is_complex():
        raise ValueError(f"{name} must hold integer ids, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def feature_pair(q_feats, g_feats, device) -> tuple[torch.Tensor, torch.Tensor, torch.device | str]:
    """Query and gallery features as 2-D tensors on one device (the queries' by default), of one dtype and
    one feature size."""
    if device is None:
        device = q_feats.device if isinstance(q_feats, torch.Tensor) else "cpu"
    q = as_features(q_feats, "q_feats", device)
    g = as_features(g_feats, "g_feats", device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feats and g_feats must have the same feature dim, got {q.shape[1]} and {g.shape[1]}")
    dtype = torch.promote_types(q.dtype, g.dtype)
    return q.to(dtype), g.to(dtype), device


def all_ids(q_pids, g_pids, q_camids, g_camids, num_q: int, num_g: int, q_what: str, g_what: str, device):
    """Identity and camera ids of queries and gallery as tensors on ``device``, each checked for length."""
    return (
        as_ids(q_pids, "q_pids", num_q, q_what, device),
        as_ids(g_pids, "g_pids", num_g, g_what, device),
        as_ids(q_camids, "q_camids", num_q, q_what, device),
        as_ids(g_camids, "g_camids", num_g, g_what, device),
    )


def check_choice(value: str, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of: {list(allowed)}, got {value!r}")


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
