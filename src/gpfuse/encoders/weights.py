"""Reading weight files (safetensors or torch, ``weights_only=True``) into image encoders strictly, by name, and
adapting a pretrained 3-channel stem to other input channels (smp's rule)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from gpfuse.encoders.efficientnet_lite import SameConv2d

__all__ = ["WEIGHT_SUFFIXES", "adapt_first_conv", "load_image_weights", "read_state_dict"]

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weights file: ``.safetensors`` or a torch file read with ``weights_only=True``.

    A checkpoint that wraps the weights under ``"state_dict"`` or ``"model"`` is unwrapped, and a
    ``"module."`` prefix (DataParallel/DDP) is stripped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path}: suffix must be one of {list(WEIGHT_SUFFIXES)}, got {path.suffix!r}")
    state: object  # a torch file may hold anything: checked below
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"weights file {path}: not loadable with weights_only=True (a pickled model or "
                f"custom objects?); save its state_dict() instead"
            ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"weights file {path}: expected a state dict of tensors (optionally under "
            f"'state_dict' or 'model'), got {type(state).__name__}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """smp's rule for a pretrained 3-channel stem: sum for 1 channel, else cycle RGB and scale by 3/in."""
    weight = conv.weight.detach()
    if in_channels == 1:
        new_weight = weight.sum(1, keepdim=True)
    else:
        new_weight = weight[:, [i % weight.shape[1] for i in range(in_channels)]] * (weight.shape[1] / in_channels)
    # a Conv2d's kernel_size and stride are pairs, its padding a pair or a string ("same", "valid")
    kernel_size, stride = cast(tuple[int, int], conv.kernel_size), cast(tuple[int, int], conv.stride)
    padding = cast("str | tuple[int, int]", conv.padding)
    new = (
        type(conv)(in_channels, conv.out_channels, kernel_size[0], stride=stride[0], bias=False)
        if isinstance(conv, SameConv2d)
        else nn.Conv2d(in_channels, conv.out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    )
    with torch.no_grad():
        new.weight.copy_(new_weight)
    return new


def load_image_weights(model: ModuleT, path: str | Path, state: dict[str, Tensor] | None = None) -> ModuleT:
    """Load a weights file into ``model`` strictly, by name; errors name the file and the first bad keys.

    Missing ``num_batches_tracked`` buffers are filled with 0, and a model whose head was dropped
    (``drop_head``) ignores the file's head keys.
    """
    state = read_state_dict(path) if state is None else dict(state)
    expected = model.state_dict()
    head = tuple(getattr(model, "head_prefixes", ()))
    if head and not any(k.startswith(head) for k in expected):
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{name} ({len(keys)}): {keys[:5]}"
            for name, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong))
            if keys
        ]
        raise RuntimeError(f"weights file {path} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model
