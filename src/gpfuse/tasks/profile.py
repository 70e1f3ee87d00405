"""Model cost figures: parameters (total, trainable), forward FLOPs and forward time on synthetic input."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["image_text_batch", "profile_model", "synthetic_batch"]


def synthetic_batch(input_dims: dict[str, int], batch_size: int = 32, seq_len: int = 50) -> dict[str, torch.Tensor]:
    """Random (B, L, D) features with all-real masks for each modality."""
    batch: dict[str, torch.Tensor] = {}
    for m, dim in input_dims.items():
        batch[m] = torch.randn(batch_size, seq_len, dim)
        batch[f"{m}_mask"] = torch.ones(batch_size, seq_len, dtype=torch.bool)
    return batch


def image_text_batch(batch_size: int = 1, image_size: int = 224, text_len: int = 64) -> dict[str, torch.Tensor]:
    """A random (B, 3, S, S) image and a full-length report of ``text_len`` token ids."""
    return {
        "image": torch.randn(batch_size, 3, image_size, image_size),
        "text_ids": torch.randint(1000, 2000, (batch_size, text_len)),
        "text_mask": torch.ones(batch_size, text_len, dtype=torch.bool),
    }


@torch.no_grad()
def profile_model(model: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int = 10) -> dict[str, Any]:
    """Parameters, FLOPs of one forward pass (torch's FlopCounterMode) and its mean wall time in ms."""
    model.eval()
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused eval kernels are invisible to the counter
    try:
        with counter:
            model(batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    elapsed = (time.perf_counter() - start) / repeats
    text = sum(p.numel() for n, p in model.named_parameters() if n.startswith("text_encoder."))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **(
            {"text_encoder": text, "without_text_encoder": sum(p.numel() for p in model.parameters()) - text}
            if text
            else {}
        ),
        "gflops": counter.get_total_flops() / 1e9,
        "forward_ms": 1000 * elapsed,
    }
