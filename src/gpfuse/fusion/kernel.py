"""Gated update of a dynamic segmentation kernel by a region descriptor (EA-DK's decoder, after LDNet).

LDNet's ``HeadUpdator`` (Zhang et al., MICCAI 2022; itself K-Net's ``KernelUpdator``), for a 1x1 kernel:
the region descriptor ``d`` (stage features pooled under the previous prediction) and the kernel ``k`` are
each mapped by a linear layer to an ``in`` and an ``out`` half; their ``in`` halves multiply into the gate
features; two gates ``g_d = sigmoid(LN(W_d (d_in * k_in)))`` and ``g_k = sigmoid(LN(W_k (d_in * k_in)))``
weight the two ``out`` paths; the sum goes through ``Linear, LN, ReLU`` to give the new kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GatedKernelUpdate"]


class GatedKernelUpdate(nn.Module):
    """``k' = ReLU(LN(W_o (g_d * LN(d_out) + g_k * LN(k_out))))``.

    Args:
        dim: kernel and descriptor size C (the decoder's unified channels).
        feat_dim: gate width F (LDNet: equal to ``dim``).

    Shapes: ``kernel`` (B, *, C), ``descriptor`` (B, *, C) -> new kernel (B, *, C); with ``return_gate``
    also the gates stacked as (B, *, 2, F): index 0 the kernel path ``g_k`` (how much of the old kernel is
    kept), index 1 the descriptor path ``g_d`` (how much is taken from the region).
    """

    def __init__(self, dim: int, feat_dim: int | None = None) -> None:
        super().__init__()
        f = feat_dim or dim
        self.feat_dim = f
        self.descriptor_proj = nn.Linear(dim, 2 * f)
        self.kernel_proj = nn.Linear(dim, 2 * f)
        self.descriptor_gate = nn.Linear(f, f)
        self.kernel_gate = nn.Linear(f, f)
        self.descriptor_gate_norm = nn.LayerNorm(f)
        self.kernel_gate_norm = nn.LayerNorm(f)
        self.descriptor_norm = nn.LayerNorm(f)
        self.kernel_norm = nn.LayerNorm(f)
        self.out = nn.Sequential(nn.Linear(f, dim), nn.LayerNorm(dim), nn.ReLU())

    def forward(self, kernel: Tensor, descriptor: Tensor, return_gate: bool = False):
        f = self.feat_dim
        d_in, d_out = self.descriptor_proj(descriptor).split(f, dim=-1)
        k_in, k_out = self.kernel_proj(kernel).split(f, dim=-1)
        gate_features = d_in * k_in
        g_d = torch.sigmoid(self.descriptor_gate_norm(self.descriptor_gate(gate_features)))
        g_k = torch.sigmoid(self.kernel_gate_norm(self.kernel_gate(gate_features)))
        new = self.out(g_d * self.descriptor_norm(d_out) + g_k * self.kernel_norm(k_out))
        return (new, torch.stack([g_k, g_d], dim=-2)) if return_gate else new
