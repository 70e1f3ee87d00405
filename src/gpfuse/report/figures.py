"""Report figures rendered with matplotlib to PNG in memory, embedded as ``data:image/png;base64`` URIs:
training curves of several runs overlaid and the fusion gates per step over epochs."""

from __future__ import annotations

import base64
import io
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from gpfuse.report.collect import Group

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["curve_figures", "figure", "gate_figure", "png_uri"]


def figure(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def png_uri(fig: Figure, dpi: int = 90) -> str:
    """The figure as a base64 PNG data URI; closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _unit(metric: str) -> str:
    name = metric.rsplit("/", 1)[-1].lower()
    if "hd95" in name:
        return " (mm)"
    if name == "mae" or name == "loss":
        return ""
    return " (0-1)"


def _line_label(group: Group, run_name: str, groups: list[Group]) -> str:
    return run_name if len(groups) == 1 else f"{group.label}/{run_name}"


def curve_figures(groups: list[Group]) -> list[tuple[str, str]]:
    """``[(title, uri)]``: train and valid loss per epoch, and the monitored metric per epoch, every run
    overlaid (one colour per root, one line style per run)."""
    import matplotlib
    import matplotlib.ticker

    colours = [matplotlib.colormaps["tab10"](i) for i in range(10)]
    styles = ("-", "--", ":", "-.")
    out = []
    monitors = list(
        dict.fromkeys(r.config.get("train", {}).get("monitor", "valid/loss") for g in groups for r in g.runs)
    )
    panels: list[tuple[str, list[str], str]] = [("loss per epoch", ["train/loss", "valid/loss"], "loss")]
    panels += [(f"monitored metric {m} per epoch", [m], m.rsplit("/", 1)[-1] + _unit(m)) for m in monitors]
    for title, keys, ylabel in panels:
        fig, ax = figure(figsize=(6.4, 3.6))
        drawn = 0
        for gi, group in enumerate(groups):
            for ri, run in enumerate(group.runs):
                for key in keys:
                    if key not in run.series:
                        continue
                    epochs, values = zip(*run.series[key])
                    ax.plot(
                        epochs,
                        values,
                        marker="o" if len(epochs) < 3 else None,
                        color=colours[gi % len(colours)],
                        linestyle=styles[(ri + 2 * keys.index(key)) % len(styles)],
                        label=f"{_line_label(group, run.name, groups)} {key}",
                    )
                    drawn += 1
        if not drawn:
            matplotlib.pyplot.close(fig)
            continue
        ax.set_title(title)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out.append((title, png_uri(fig)))
    return out


_GATE = re.compile(r"gate/step(\d+)_(mean|kernel|region)$")


def gate_figure(group: Group) -> str | None:
    """Gate values per fusion step over epochs for a root's runs: the mean over runs of each step's logged
    validation mean, the band its logged std over samples (``_std``) or, where none is logged (2D
    segmentation's kernel/region gates), the spread over runs; None when the runs logged no gate."""
    keys = sorted({k for r in group.runs for k in r.series if _GATE.match(k)}, key=lambda k: (len(k), k))
    if not keys:
        return None
    fig, ax = figure(figsize=(6.4, 3.6))
    for key in keys:
        step, what = _GATE.match(key).groups()  # type: ignore[union-attr]  # keys match
        by_epoch: dict[int, list[float]] = {}
        spread: dict[int, list[float]] = {}
        for run in group.runs:
            for e, v in run.series.get(key, []):
                by_epoch.setdefault(e, []).append(v)
            for e, v in run.series.get(key.replace("_mean", "_std"), []) if what == "mean" else []:
                spread.setdefault(e, []).append(v)
        epochs = sorted(by_epoch)
        mean = np.array([np.mean(by_epoch[e]) for e in epochs])
        if what == "mean":
            band = np.array([np.mean(spread.get(e, [0.0])) for e in epochs])
        else:
            band = np.array([np.std(by_epoch[e]) for e in epochs])
        label = f"step {step}" + ("" if what == "mean" else f" {what}")
        line = ax.plot(epochs, mean, marker="o" if len(epochs) < 3 else None, label=label)[0]
        ax.fill_between(epochs, mean - band, mean + band, color=line.get_color(), alpha=0.2)
    runs = len(group.runs)
    ax.set_title(f"{group.label}: fusion gates per step ({runs} run{'s' if runs > 1 else ''})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("gate value (0-1), validation mean ± spread")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_uri(fig)
