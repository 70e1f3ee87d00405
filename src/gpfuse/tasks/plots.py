"""Run plots from Lightning's CSV logs: loss curves and gate values per fusion step."""

from __future__ import annotations

import csv
from pathlib import Path

from gpfuse.utils.files import atomic_path

__all__ = ["plot_run", "read_epoch_series"]


def read_epoch_series(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``metric -> [(epoch, value), ...]`` from every ``attempt_*/metrics.csv`` under ``log_dir``; where a
    resumed attempt logged an epoch again, the later attempt wins."""
    by_epoch: dict[str, dict[int, float]] = {}
    attempts = sorted(log_dir.glob("attempt_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for metrics_csv in attempts:
        with metrics_csv.open(newline="") as f:
            for row in csv.DictReader(f):
                epoch = row.get("epoch")
                for key, value in row.items():
                    if key not in ("epoch", "step") and value not in ("", None) and epoch not in ("", None):
                        by_epoch.setdefault(key, {})[int(float(epoch))] = float(value)
    return {k: sorted(v.items()) for k, v in by_epoch.items()}


def plot_run(log_dir: Path, folder: Path) -> list[Path]:
    """Write ``loss.png`` and, when gates were logged, ``gates.png`` into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_epoch_series(log_dir)
    written = []
    panels: dict[str, list[str]] = {
        "loss.png": [k for k in ("train/loss", "valid/loss") if k in series],
        "gates.png": sorted(k for k in series if k.startswith("gate/") and k.endswith("_mean")),
    }
    for name, keys in panels.items():
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            epochs, values = zip(*series[key])
            ax.plot(epochs, values, label=key)
            std = series.get(key.replace("_mean", "_std")) if name == "gates.png" else None
            if std and len(std) == len(values):
                s = [v for _, v in std]
                ax.fill_between(
                    epochs, [v - d for v, d in zip(values, s)], [v + d for v, d in zip(values, s)], alpha=0.2
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel("gate value (mean ± std over valid)" if name == "gates.png" else "loss")
        ax.legend()
        fig.tight_layout()
        with atomic_path(folder / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(folder / name)
    return written
