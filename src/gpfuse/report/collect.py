"""Reading run folders for the report: a finished run (``metrics.json`` beside ``config.yaml``) or a root
holding several (seeds, folds), each root one group of an ablation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from gpfuse.tasks.plots import read_epoch_series
from gpfuse.utils.files import read_json

__all__ = ["Group", "Run", "collect", "metric_sets"]


@dataclass
class Run:
    """One finished run folder."""

    path: Path
    name: str  # relative to its group's root ("seed_42", "fold_0/seed_1"), or the folder's name
    config: dict[str, Any]
    config_text: str
    command: str
    metrics: dict[str, Any]
    splits: dict[str, int]  # split list -> number of entries
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # training epochs only
    environment: dict[str, Any] = field(default_factory=dict)  # environment.json: where it ran (older runs: {})

    @cached_property
    def task(self) -> str:
        """The task kind (``regression``, ``retrieval``, ``segmentation``, ``segmentation3d``), read once."""
        from gpfuse.tasks.runner import load_run_config

        return load_run_config(self.path).task

    @property
    def samples(self) -> Path:
        return self.path / "samples"


@dataclass
class Group:
    """The runs of one experiment (one config name; its seeds and folds): one row of a comparison."""

    label: str
    root: Path
    runs: list[Run]

    @property
    def task(self) -> str:
        """The task kind of its runs (one experiment has one)."""
        return self.runs[0].task


def _split_sizes(folder: Path) -> dict[str, int]:
    sizes = {}
    for path in sorted(folder.glob("*.txt")):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines and lines[0].startswith("image\t"):  # image/mask lists start with a header
            lines = lines[1:]
        sizes[path.stem] = len(lines)
    return sizes


def read_run(path: Path, name: str) -> Run:
    """The run in ``path``; a clear error when it is not a finished gpfuse run."""
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is not a gpfuse run folder (no config.yaml)")
    if not (path / "metrics.json").is_file():
        raise FileNotFoundError(f"{path} is not a finished run (no metrics.json: still training, or it failed)")
    metrics = read_json(path / "metrics.json")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test"), dict):
        raise ValueError(f"{path / 'metrics.json'}: not a run's metrics (no 'test' section)")
    config_text = (path / "config.yaml").read_text(encoding="utf-8")
    command = path / "command.txt"
    series = read_epoch_series(path / "logs") if (path / "logs").is_dir() else {}
    epochs = int(metrics.get("epochs_run", 0)) or 1 + max((e for v in series.values() for e, _ in v), default=0)
    # the rows after training (the best checkpoint validated and tested) carry the epoch count: left out
    series = {k: [(e, v) for e, v in s if e < epochs] for k, s in series.items() if not k.startswith("test/")}
    env = read_json(path / "environment.json") if (path / "environment.json").is_file() else {}
    return Run(
        path=path,
        name=name,
        config=yaml.safe_load(config_text),
        config_text=config_text,
        command=command.read_text(encoding="utf-8").strip() if command.is_file() else "",
        metrics=metrics,
        splits=_split_sizes(path / "splits"),
        series={k: v for k, v in series.items() if v},
        environment=env if isinstance(env, dict) else {},
    )


def _groups(path: Path) -> list[Group]:
    """A run folder: one group of one run. A root: one group of its runs (seeds, and folds or splits), or, when
    they come from several configs (``gpfuse report runs/``), one group per config name, so that seeds of
    different experiments are never averaged together."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder")
    if (path / "config.yaml").is_file():
        return [Group(label=path.name, root=path, runs=[read_run(path, path.name)])]
    found = sorted(p.parent for p in path.rglob("config.yaml") if p.parent.name != "model")
    if not found:
        raise FileNotFoundError(f"{path} is not a gpfuse run folder nor a folder of runs (no config.yaml under it)")
    from gpfuse.tasks.runner import experiment_name

    runs = [read_run(p, str(p.relative_to(path))) for p in found]
    by_name: dict[str, list[Run]] = {}
    for run in runs:  # the folds of one experiment form one group
        by_name.setdefault(experiment_name(str(run.config.get("name", ""))), []).append(run)
    if len(by_name) == 1:
        return [Group(label=path.name, root=path, runs=runs)]
    return [Group(label=name, root=path, runs=named) for name, named in by_name.items()]


def collect(paths: Sequence[str | Path]) -> list[Group]:
    """The groups of the paths (run folders, or roots of runs), in order; labels made unique."""
    if not paths:
        raise ValueError("no run folder given")
    groups = [g for p in paths for g in _groups(Path(p))]
    seen: dict[str, int] = {}
    for g in groups:
        seen[g.label] = seen.get(g.label, 0) + 1
        if seen[g.label] > 1:
            g.label = f"{g.label} ({seen[g.label]})"
    return groups


def metric_sets(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"valid": {...}, "test": {...}}``, a segmentation run's named test sets as ``"test/<name>"``: the
    test keys ``<name>/<metric>`` whose metric is a validation key."""
    valid = {k: float(v) for k, v in metrics.get("valid", {}).items()}
    sets: dict[str, dict[str, float]] = {"valid": valid} if valid else {}
    for key, value in metrics["test"].items():
        prefix, _, rest = key.partition("/")
        target = f"test/{prefix}" if key not in valid and rest in valid else "test"
        sets.setdefault(target, {})[rest if target != "test" else key] = float(value)
    return sets
