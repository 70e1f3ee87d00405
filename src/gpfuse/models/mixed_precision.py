"""Keeping the layers that reduced precision breaks in float32 under mixed precision (autocast)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ["cpu_conv3d_in_fp32", "instance_norms_in_fp32"]


def _to_fp32(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0]
    if torch.is_tensor(x) and x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
        return (x.float(), *args[1:])
    return None


def instance_norms_in_fp32(module: nn.Module) -> int:
    """Make every instance norm inside ``module`` normalise in float32 when autocast hands it a bf16 or fp16
    input (a forward pre-hook; its output stays float32 and the next convolution casts it back). Returns how
    many there are.

    Autocast runs ``instance_norm`` in its input's dtype, and a channel with few voxels (Swin UNETR's
    deepest blocks see 1 x 2 x 1 and 2 x 4 x 2 voxels of a 32 x 64 x 32 patch) loses its variance to
    bfloat16's 8-bit mantissa: outputs of 0 where -+0.96 is right (``tests/test_models_bipvl_seg.py``).
    """
    norms = [m for m in module.modules() if isinstance(m, _InstanceNorm)]
    for norm in norms:
        norm.register_forward_pre_hook(_to_fp32)
    return len(norms)


def _cpu_autocast(x: Tensor) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


class _Conv3dFp32OnCpu(nn.Conv3d):
    """``nn.Conv3d`` that leaves CPU autocast and convolves in float32 (same parameters, same state dict)."""

    def forward(self, input: Tensor) -> Tensor:
        if _cpu_autocast(input):
            with torch.autocast("cpu", enabled=False):
                return super().forward(input.float())
        return super().forward(input)


class _ConvTranspose3dFp32OnCpu(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` that leaves CPU autocast and convolves in float32."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if _cpu_autocast(input):
            with torch.autocast("cpu", enabled=False):
                return super().forward(input.float(), output_size)
        return super().forward(input, output_size)


def cpu_conv3d_in_fp32(module: nn.Module) -> int:
    """Make every 3D (transposed) convolution inside ``module`` run in float32 under CPU autocast (``bf16-mixed``
    on a CPU); on a GPU, and without autocast, nothing changes. Attention and linear layers keep bf16. Returns
    how many were changed.

    Why: in ``bf16-mixed`` BiPVL-Seg training on this project's CPU (PyTorch 2.13, oneDNN), the backward of a
    bf16 ``Conv3d`` in Swin UNETR's deepest decoder block returned NaN weight gradients from finite inputs
    (``torch.autograd.detect_anomaly``: ``ConvolutionBackward0`` returned nan in its weight output) within a
    few steps on synthetic patches and in the first epoch on MSD Hippocampus; with the 3D convolutions in
    float32 the same runs stay finite. The classes are swapped in place (``module.__class__``), so the
    parameters, their names and the saved weights stay those of ``nn.Conv3d``.
    """
    swaps = {nn.Conv3d: _Conv3dFp32OnCpu, nn.ConvTranspose3d: _ConvTranspose3dFp32OnCpu}
    changed = 0
    for m in module.modules():
        if type(m) in swaps:
            m.__class__ = swaps[type(m)]
            changed += 1
    return changed
