"""``train.precision: auto``: the training precision the hardware computes natively, resolved once per run.

- CUDA with bf16 (Ampere and later) -> ``bf16-mixed``; CUDA without -> ``16-mixed`` (loss scaling).
- A CPU with native bf16 (AVX512-BF16 or AMX) -> ``bf16-mixed`` for the systems whose bf16 training was
  measured faster there with the same curves (:data:`CPU_BF16_FASTER`), else ``32-true``.
- Any other CPU -> ``32-true``: without native bf16, autocast emulates it about 40x slower than fp32.

An explicit value is honoured as given. The resolved value is what the run's ``config.yaml`` keeps (so
``gpfuse eval`` and the predictors use it) and what ``environment.json`` records beside the requested one.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from gpfuse.utils.environment import cpu_model, cpu_native_bf16

__all__ = [
    "AUTO",
    "CPU_BF16_FASTER",
    "Precision",
    "autocast_dtype",
    "on_cuda",
    "resolve_precision",
    "warn_if_emulated",
]

AUTO = "auto"
#: Lightning's precisions that a config may name (besides ``auto``)
Precision = Literal["32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"]

#: Systems whose ``bf16-mixed`` training measured faster than fp32 on a CPU with native bf16, with the same loss
#: and validation curves (docs/results.md, "Training speed", measured on an Intel CPU with AVX512-BF16):
#: PGF-Net 2.0-2.4x. Left out: EA-DK (1.5-1.9x, but lower validation Dice in both seeds), GRF (1.05-1.2x),
#: GPF-Net (no gain over channels_last), BiPVL-Seg (1.2x, lower Dice).
CPU_BF16_FASTER = frozenset({"pgf_net"})

log = logging.getLogger(__name__)


def on_cuda(accelerator: str) -> bool:
    """Will Lightning's ``accelerator`` run on a CUDA device here (``auto`` picks CUDA when there is one)?"""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: Precision | Literal["auto"], model_name: str, accelerator: str = "auto") -> Precision:
    """The Lightning precision to train ``model_name`` with: ``precision`` itself unless it is ``auto``."""
    if precision != "auto":
        return precision
    if on_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_native_bf16() and model_name in CPU_BF16_FASTER:
        return "bf16-mixed"
    return "32-true"


def warn_if_emulated(precision: str, accelerator: str = "auto") -> None:
    """A warning when ``precision`` asks for bf16 on a CPU that only emulates it (a run trained elsewhere, or
    an explicit setting): its figures are right, but it runs about 40x slower than fp32."""
    if precision.startswith("bf16") and not on_cuda(accelerator) and not cpu_native_bf16():
        log.warning(
            "precision %s on %s, which has no native bf16 (AVX512-BF16 or AMX): emulated, about 40x slower "
            "than 32-true (train.precision: auto chooses what this machine computes natively)",
            precision,
            cpu_model(),
        )


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``*-mixed`` precision (None for full precision)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
