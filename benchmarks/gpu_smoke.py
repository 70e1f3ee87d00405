"""GPU smoke test: one short training + evaluation of each system on CUDA with the shipped defaults and
``precision: 16-mixed`` (the GPU recipes' setting), on the demo configs' data (the shared copies, or generated
data in the same layouts where they are absent). Prints one table: system, outcome, seconds, the test figure,
peak CUDA memory. On a machine without CUDA it says so and exits 0.

    python benchmarks/gpu_smoke.py [--epochs 1] [--devices 1] [--precision 16-mixed] [--out runs/gpu_smoke]

With ``--devices 2`` (or more) every system trains and evaluates under DDP. Nothing here is part of the test
suite; the output of a run on a GPU machine is recorded in docs/results.md.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import torch

from bench_utils import print_environment
from gpfuse.cli import DEMO_CONFIGS
from gpfuse.config import load_config
from gpfuse.tasks.demo_data import with_demo_data
from gpfuse.tasks.runner import is_main_process, train

FIGURE = {"regression": "MAE", "retrieval": "mAP", "segmentation": "Dice", "segmentation3d": "mean_dice"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--precision", default="16-mixed")
    parser.add_argument("--out", default="runs/gpu_smoke")
    args = parser.parse_args()
    print_environment()
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device on this machine (torch.cuda.is_available() is False): nothing to run")
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for path in DEMO_CONFIGS:
        overrides = [
            f"output_dir={args.out}",
            "train.accelerator=gpu",
            f"train.devices={args.devices}",
            f"train.precision={args.precision}",
            f"train.max_epochs={args.epochs}",
            "train.warmup_epochs=0",
        ]
        cfg = load_config(path, overrides)
        cfg = with_demo_data(cfg.model_copy(update={"name": f"{cfg.name}_{stamp}"}), Path(args.out) / "data")
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            metrics = train(cfg)
            test = metrics["test"]
            key = next(k for k in test if k.split("/")[-1] == FIGURE[cfg.task])
            outcome, figure = "ok", f"{key} {test[key]:.4f}"
        except Exception as err:  # a smoke test reports every system, whatever fails
            traceback.print_exc()
            outcome, figure = f"FAILED: {type(err).__name__}", str(err).splitlines()[0][:60] if str(err) else ""
        rows.append(
            (cfg.model["name"], outcome, time.perf_counter() - start, figure, torch.cuda.max_memory_allocated() / 2**20)
        )
    if not is_main_process():
        return
    print(
        f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{args.devices} device(s), precision {args.precision}, {args.epochs} epoch(s)"
    )
    print(f"{'system':<10} | {'outcome':<24} | {'seconds':>7} | {'test figure':<32} | {'peak MiB':>8}")
    for name, outcome, seconds, figure, peak in rows:
        print(f"{name:<10} | {outcome:<24} | {seconds:>7.1f} | {figure:<32} | {peak:>8.0f}")


if __name__ == "__main__":
    main()
