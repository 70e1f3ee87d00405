"""EA-DK training and inference speed on CPU for each image encoder, with peak memory.

Training: forward + deep-supervised BCE + Dice + backward + SGD step on random (batch, 3, size, size)
images and masks; inference: eval-mode forward under ``torch.no_grad``. Peak memory is the process's peak
resident set size after each encoder's runs (``resource.getrusage``; it only grows, so encoders are run in
the order given and the growth per encoder is printed too).

    python benchmarks/seg_speed.py [--size 352] [--batch 8] [--steps 3] [--encoders efficientnet_lite0 ...]

Prints one table; nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from bench_utils import peak_rss_mib, print_environment
from gpfuse.models import create_model

ENCODERS = ("efficientnet_lite0", "res2net50_v1b_26w_4s", "resnet50")


def measure(encoder: str, size: int, batch: int, steps: int) -> tuple[int, float, float]:
    torch.manual_seed(0)
    net = create_model("ea_dk", encoder=encoder, encoder_weights=None)
    loss_fn = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="same")
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, size, size)
    masks = (torch.rand(batch, 1, size, size) > 0.7).float()

    def train_step() -> None:
        optimizer.zero_grad()
        loss_fn(net({"image": images}).stages, masks).backward()
        optimizer.step()

    net.train()
    train_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_rate = steps * batch / (time.perf_counter() - start)
    net.eval()
    with torch.no_grad():
        net({"image": images})
        start = time.perf_counter()
        for _ in range(steps):
            net({"image": images})
    infer_rate = steps * batch / (time.perf_counter() - start)
    return sum(p.numel() for p in net.parameters()), train_rate, infer_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    args = parser.parse_args()
    print_environment()
    print(
        f"EA-DK, {args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'encoder':<22} | {'parameters':>10} | {'train img/s':>11} | {'infer img/s':>11} | "
        f"{'peak RSS MiB':>12} | {'growth MiB':>10}"
    )
    before = peak_rss_mib()
    for encoder in args.encoders:
        params, train_rate, infer_rate = measure(encoder, args.size, args.batch, args.steps)
        peak = peak_rss_mib()
        print(
            f"{encoder:<22} | {params:>10,} | {train_rate:>11.2f} | {infer_rate:>11.2f} | {peak:>12.0f} | "
            f"{peak - before:>10.0f}",
            flush=True,
        )
        before = peak


if __name__ == "__main__":
    main()
