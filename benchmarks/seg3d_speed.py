"""BiPVL-Seg speed: forward and forward+backward time and peak memory for one 3D patch, vision-only
(plain Swin UNETR) vs the full model (MiniLM text, four BiFusion blocks, alignment outputs), on CPU or GPU.

Peak memory: the process's peak resident set size on CPU (``resource``; it only grows, so the vision-only
model, the smaller, runs first and the growth is printed too), ``torch.cuda.max_memory_allocated`` on GPU.

    python benchmarks/seg3d_speed.py [--size 96] [--feature-size 48] [--repeats 1] [--device cpu|cuda]

Prints one table; nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.losses import DiceCELoss

from bench_utils import peak_rss_mib, print_environment
from gpfuse.models import create_model

PROMPTS = [
    [f"A medical image of the {n}."] + [f"Concept {k} of the {n}: a description sentence." for k in range(5)]
    for n in ("background", "first organ", "second organ")
]
VARIANTS = {"vision-only (Swin UNETR)": {"text": False, "alignment": False}, "full BiPVL-Seg": {}}


def peak_mib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mib()


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--feature-size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print_environment()
    device = args.device
    print(
        f"BiPVL-Seg, 1 patch {args.size}^3, feature size {args.feature_size}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'variant':<26} | {'parameters':>11} | {'forward s':>9} | {'fwd+bwd s':>9} | ", end="")
    print(f"{'peak MiB':>9} | {'growth MiB':>10}")
    before = peak_mib(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    for name, switches in VARIANTS.items():
        torch.manual_seed(0)
        net = create_model(
            "bipvl_seg", num_classes=3, class_texts=PROMPTS, feature_size=args.feature_size, **switches
        ).to(device)
        image = torch.randn(1, 1, args.size, args.size, args.size, device=device)
        label = torch.randint(0, 3, (1, 1, args.size, args.size, args.size), device=device)

        def forward(net: torch.nn.Module = net, image: torch.Tensor = image) -> None:
            with torch.no_grad():
                net({"image": image})

        def step(net: torch.nn.Module = net, image: torch.Tensor = image, label: torch.Tensor = label) -> None:
            net.zero_grad()
            loss_fn(net({"image": image}).logits, label).backward()

        net.eval()
        t_forward = timed(forward, device, args.repeats)
        net.train()
        t_step = timed(step, device, args.repeats)
        peak = peak_mib(device)
        print(
            f"{name:<26} | {sum(p.numel() for p in net.parameters()):>11,} | {t_forward:>9.2f} | {t_step:>9.2f} | "
            f"{peak:>9.0f} | {peak - before:>10.0f}",
            flush=True,
        )
        before = peak


if __name__ == "__main__":
    main()
