"""Parameters and forward time of GRF's recursive fusion vs an all-pairs (MulT-style) cross-attention
baseline for n = 2..8 modalities, at GRF's public size (d_model 64, 4 heads, 4 decoder layers, FFN 256).

    python benchmarks/fusion_scaling.py [--batch 32] [--length 50] [--repeats 5] [--max-n 8]

Prints one table; nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_utils import print_environment
from gpfuse.fusion import build_fusion

SIZE = dict(num_heads=4, num_layers=4, ffn_dim=256, dropout=0.0)


def build(kind: str, names: list[str], dim: int) -> torch.nn.Module:
    if kind == "GRF (recursive)":
        return build_fusion("recursive", order=names, block=dict(name="grf_block", dim=dim, **SIZE))
    return build_fusion("all_pairs", order=names, dim=dim, **SIZE)


@torch.no_grad()
def measure(module: torch.nn.Module, inputs: dict[str, torch.Tensor], repeats: int) -> tuple[float, float]:
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        module(inputs)
    module(inputs)
    start = time.perf_counter()
    for _ in range(repeats):
        module(inputs)
    return counter.get_total_flops() / 1e9, 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-n", type=int, default=8)
    args = parser.parse_args()
    print_environment()
    torch.manual_seed(0)
    print(
        f"batch {args.batch}, {args.length} steps per modality, d_model {args.dim}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'n':>2} | {'fusion':<22} | {'parameters':>11} | {'GFLOPs':>8} | {'forward ms':>10}")
    print("-" * 66)
    for n in range(2, args.max_n + 1):
        names = [f"m{i}" for i in range(n)]
        inputs = {m: torch.randn(args.batch, args.length, args.dim) for m in names}
        for kind in ("GRF (recursive)", "all-pairs (MulT-style)"):
            module = build(kind, names, args.dim)
            params = sum(p.numel() for p in module.parameters())
            gflops, ms = measure(module, inputs, args.repeats)
            print(f"{n:>2} | {kind:<22} | {params:>11,} | {gflops:>8.2f} | {ms:>10.1f}")


if __name__ == "__main__":
    main()
