"""GRF vs PGF-Net on CPU: training and inference samples/s, peak memory, trainable and total parameters.

Random CMU-MOSI-shaped batches: 50 text steps (GRF: 384-d MiniLM token states computed beforehand, as its
data module caches them; PGF-Net: token ids through its own MiniLM + LoRA), one 73-d audio step. Training
is forward + L1 + backward + AdamW step; inference is an eval-mode forward under ``torch.no_grad``. Peak
memory is the process's peak resident set size after each model (it only grows; the growth is printed).

    python benchmarks/sentiment_speed.py [--batch 32] [--steps 5]

Prints one table; nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_utils import peak_rss_mib, print_environment
from gpfuse.models import create_model

MODELS = {"GRF (text -> audio)": ("grf", {"order": ["text", "audio"]}), "PGF-Net (MiniLM + LoRA 32)": ("pgf_net", {})}


def batch_for(name: str, size: int, length: int = 50) -> dict[str, torch.Tensor]:
    batch = {
        "audio": torch.randn(size, 1, 73),
        "audio_mask": torch.ones(size, 1, dtype=torch.bool),
        "label": torch.empty(size).uniform_(-3, 3),
    }
    mask = torch.ones(size, length, dtype=torch.bool)
    mask[:, length // 2 :] = torch.rand(size, 1) < 0.5  # half of the utterances use half the steps
    if name == "pgf_net":
        return {**batch, "text_ids": torch.randint(1000, 20000, (size, length)), "text_mask": mask}
    return {**batch, "text": torch.randn(size, length, 384), "text_mask": mask}


def measure(name: str, options: dict, size: int, steps: int) -> tuple[int, int, float, float]:
    torch.manual_seed(0)
    net = create_model(name, input_dims={"text": 384, "audio": 73} if name == "grf" else {"audio": 73}, **options)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    batch = batch_for(name, size)

    def train_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.l1_loss(net(batch).score, batch["label"]).backward()
        optimizer.step()

    net.train()
    train_step()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    train_rate = steps * size / (time.perf_counter() - start)
    net.eval()
    with torch.no_grad():
        net(batch)
        start = time.perf_counter()
        for _ in range(steps):
            net(batch)
    infer_rate = steps * size / (time.perf_counter() - start)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in net.parameters()), train_rate, infer_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print_environment()
    print(
        f"batch {args.batch} x 50 text steps + 1 audio step, {args.steps} timed steps, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'model':<28} | {'trainable':>10} | {'total':>11} | {'train samples/s':>15} | {'infer samples/s':>15} | "
        f"{'peak RSS MiB':>12} | {'growth MiB':>10}"
    )
    before = peak_rss_mib()
    for label, (name, options) in MODELS.items():
        trainable, total, train_rate, infer_rate = measure(name, options, args.batch, args.steps)
        peak = peak_rss_mib()
        print(
            f"{label:<28} | {trainable:>10,} | {total:>11,} | {train_rate:>15.1f} | {infer_rate:>15.1f} | "
            f"{peak:>12.0f} | {peak - before:>10.0f}",
            flush=True,
        )
        before = peak


if __name__ == "__main__":
    main()
