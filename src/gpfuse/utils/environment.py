"""Where a run or a benchmark ran: the CPU and the flags that decide its speed, threads, GPU, versions.

Speed figures mean nothing without the machine that made them (the CPU of the machines gpfuse runs on
changes from one week to the next: an Intel with AVX512-BF16 one week, an AMD with AVX2 only the next).
Every run folder keeps :func:`describe` as ``environment.json`` and every benchmark prints it first.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from functools import cache
from pathlib import Path
from typing import Any

import torch

__all__ = ["SPEED_FLAGS", "cpu_flags", "cpu_model", "cpu_native_bf16", "describe", "summary_line"]

#: /proc/cpuinfo flags that decide how fast the CPU kernels run (vector width, native bf16, AMX tiles, int8 dot
#: products)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")
_VERSIONS = ("torch", "lightning", "onnxruntime", "transformers", "monai")


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what the platform says)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> dict[str, bool]:
    """Each of :data:`SPEED_FLAGS`: does the CPU have it (all False where /proc/cpuinfo is absent)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return {flag: flag in flags for flag in SPEED_FLAGS}


def cpu_native_bf16() -> bool:
    """Does the CPU compute bf16 natively (AVX512-BF16 or AMX)? Without it, bf16 autocast is emulated with
    fp32 arithmetic and conversions: about 40x slower than fp32 for PGF-Net on an AVX2-only AMD EPYC.
    Asked of torch (what its kernels dispatch on), with /proc/cpuinfo as the fallback."""
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(p) for p in probes):
        return any(bool(p()) for p in probes if callable(p))
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def _version(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def describe(precision: str | None = None, requested: str | None = None) -> dict[str, Any]:
    """The machine as JSON-ready values: CPU model and speed flags, native bf16, cores (on the machine and
    usable by this process), torch's intra-op threads, the GPU (None without CUDA), package versions, and the
    training precision (``requested`` as configured, ``precision`` as resolved) where given."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_native_bf16": cpu_native_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatches to
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "gpu_count": torch.cuda.device_count() if gpu else 0,
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _VERSIONS},
    }
    if precision is not None:
        out["precision"] = precision
        out["precision_requested"] = requested or precision
    return out


def summary_line(env: dict[str, Any]) -> str:
    """One line of :func:`describe`'s output, e.g. ``AMD EPYC [avx2], 2 cores, 2 threads, no GPU, torch 2.13.0``
    (and ``precision 32-true (auto)`` when it holds one)."""
    flags = [k for k, v in env.get("cpu_flags", {}).items() if v] or ["no avx2"]
    gpu = f"GPU {env['gpu']}" if env.get("gpu") else "no GPU"
    torch_version = env.get("versions", {}).get("torch")
    parts = [
        f"{env.get('cpu', '?')} [{' '.join(flags)}]",
        f"{env.get('cores', '?')} cores",
        f"{env.get('threads', '?')} threads",
        gpu,
        f"torch {torch_version}",
    ]
    if "precision" in env:
        requested = env.get("precision_requested")
        parts.append(f"precision {env['precision']}" + (f" ({requested})" if requested != env["precision"] else ""))
    return ", ".join(parts)
